"""sensor.community's push API: fresh readings of the mapped nodes, one request per sensor pin
per record.

    POST https://api.sensor.community/v1/push-sensor-data/
    Content-Type: application/json
    X-Sensor: esp32-<chip id>        the id the node is registered under at devices.sensor.community
    X-Pin: 1 | 11 | 15               which of the node's sensors the values are from

    {"software_version": "meetkit-0.2.0",
     "sensordatavalues": [{"value_type": "P1", "value": "8.90"}, {"value_type": "P2", "value": "5.20"}]}

The mapping (our quantity -> X-Pin, value_type), the record's interval averages as strings with two
decimals:

    pm10 -> 1 P1, pm25 -> 1 P2, pm1 -> 1 P0       (X-Pin 1: every PM sensor, SDS011 and PMS alike)
    temp -> 11 temperature (degC), rh -> 11 humidity (%), press -> 11 pressure (Pa: hPa * 100)
    LAeq -> 15 noise_LAeq (its avg), noise_LA_min (its min), noise_LA_max (its max)

Passed over and counted (`forward.<t>.<counter>` in the store, on /metrics): the readings of nodes
without an X-Sensor id in `sensors` (`unmapped`), and readings sensor.community has no value type
for: LA10/50/90, LZeq, cov, null values and an older store's infinities (`unsupported`); records
with an implausible time or counters (an older store's) are passed over before, by the forwarder
(core.py, `implausible`). Quality flags have no place in the API and are not sent.

The API takes no time: the server stamps each value with its arrival. So only fresh records are
sent: a record whose interval ended more than `max_age` seconds ago (default 300: the map shows the
last 5 minutes) is passed over and counted (`forward.<t>.stale`); after an outage the backlog is
skipped, not sent late. A replay is therefore harmless only for records that are no longer fresh:
within a batch that is tried again, requests that were already taken are not sent again; a restart
mid-batch may send the one record in flight twice.

Answers: 2xx taken (the real API answers 201); 403 (the X-Sensor is not registered: "Node not found
in database."), 401, 404, 408, 429 (with Retry-After) and 5xx are retried as the forwarder does;
any other 4xx (400 "sensor could not be selected." for a pin the sensor is not registered with, or
a value the API refuses) refuses that request for good: dead-lettered on its own while the rest of
the batch goes on.

Sources (read November 2026; there is no formal API document): the server, github.com/
opendata-stuttgart/feinstaub-api, feinstaub/sensors/authentication.py (the node is looked up by
`X-Sensor`, else DRF's AuthenticationFailed "Node not found in database.", a 403 as it sends no
WWW-Authenticate) and serializers.py (the sensor is chosen by `X-Pin` among the node's sensors,
else 400 "sensor could not be selected."; an empty `sensordatavalues` is a 400; `value` is stored
as text; the serializer also has an optional `timestamp`, which no client sends and we do not rely
on); the firmware, github.com/opendata-stuttgart/sensors-software, airrohr-firmware/ext_def.h
(SDS_API_PIN and PMS_API_PIN 1, BME280_API_PIN 11, DNMS_API_PIN 15; HOST_SENSORCOMMUNITY
api.sensor.community, URL_SENSORCOMMUNITY /v1/push-sensor-data/), airrohr-firmware.ino
(SENSOR_BASENAME "esp32-" + chip id as X-Sensor, X-PIN per sensor, `application/json`;
sendSensorCommunity strips the sensor's prefix: SDS_P1 -> P1, PMS_P0 (PM1) -> P0, BME280_pressure
from readPressure() in Pa, DNMS_noise_LAeq/_LA_min/_LA_max -> noise_LAeq/...).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
from typing import Callable, Sequence

from ..config import ForwardConfig
from .core import Refused, Result, Row
from .http_target import RETRYABLE_4XX, Connection

log = logging.getLogger(__name__)

# quantity -> (pin, [(value_type, which value of the reading, scale)])
MAPPING: dict[str, tuple[int, list[tuple[str, str, float]]]] = {
    "pm10": (1, [("P1", "avg", 1.0)]),
    "pm25": (1, [("P2", "avg", 1.0)]),
    "pm1": (1, [("P0", "avg", 1.0)]),
    "temp": (11, [("temperature", "avg", 1.0)]),
    "rh": (11, [("humidity", "avg", 1.0)]),
    "press": (11, [("pressure", "avg", 100.0)]),  # hPa -> Pa
    "LAeq": (15, [("noise_LAeq", "avg", 1.0), ("noise_LA_min", "min", 1.0), ("noise_LA_max", "max", 1.0)]),
}


def requests_for(rows: Sequence[Row]) -> tuple[list[tuple[int, int, str, list[dict[str, str]], int]], int]:
    """The requests for the rows of ONE record: (record_id, pin, software_version, values, readings)
    in pin order, and how many readings have no value type there."""
    by_pin: dict[int, tuple[list[dict[str, str]], list[Row]]] = {}
    unsupported = 0
    for r in rows:
        mapped = MAPPING.get(r.quantity)
        if mapped is None:
            unsupported += 1
            continue
        pin, fields = mapped
        values = []
        for value_type, which, scale in fields:
            v = getattr(r, which)
            if v is not None and math.isfinite(v * scale):  # a REAL infinity (an older store) is no value
                values.append({"value_type": value_type, "value": f"{v * scale:.2f}"})
        if not values:
            unsupported += 1  # null: nothing to send
            continue
        entry = by_pin.setdefault(pin, ([], []))
        entry[0].extend(values)
        entry[1].append(r)
    return [(rs[0].record_id, pin, f"meetkit-{rs[0].fw}", vals, len(rs))
            for pin, (vals, rs) in sorted(by_pin.items())], unsupported


class SensorCommunitySender:
    """Pushes the fresh readings of the mapped nodes; one kept-alive connection."""

    kind = "sensor.community"

    def __init__(self, cfg: ForwardConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.sensors = dict(cfg.sensors)
        self.clock = clock
        self.conn = Connection(cfg.url, cfg.timeout)
        self.path = self.conn.path or "/"  # as configured: the real one ends in "/"
        # (record_id, pin) -> None when taken, or the refusal: what a retry of the same batch skips
        self._done: dict[tuple[int, int], Refused | None] = {}

    def _post(self, sensor: str, pin: int, body: bytes) -> tuple[int, str, float | None] | str:
        """(status, text, Retry-After) or why there is no answer. Not resent on a closed
        connection: the API takes no timestamps, so a push that did arrive would count twice."""
        headers = {"Content-Type": "application/json", "X-Sensor": sensor, "X-Pin": str(pin)}
        try:
            answer = self.conn.request("POST", self.path, body, headers)
        except (OSError, http.client.HTTPException) as e:
            return f"{self.conn.host}:{self.conn.port}: {type(e).__name__}: {e}"
        return answer.status, answer.text.strip(), answer.retry_after

    def send(self, rows: Sequence[Row]) -> Result:
        passed = {"stale": 0, "unmapped": 0, "unsupported": 0}
        now = self.clock()
        records: dict[int, list[Row]] = {}
        for r in rows:
            records.setdefault(r.record_id, []).append(r)
        for record_id, rs in records.items():
            first = rs[0]
            sensor = self.sensors.get(first.node)
            if sensor is None:
                passed["unmapped"] += len(rs)
                continue
            requests, unsupported = requests_for(rs)
            passed["unsupported"] += unsupported
            for _, pin, version, values, readings in requests:
                key = (record_id, pin)
                if key in self._done:
                    continue
                if now - (first.start + first.dur) > self.cfg.max_age:
                    passed["stale"] += readings
                    continue
                body = json.dumps({"software_version": version, "sensordatavalues": values}).encode()
                answer = self._post(sensor, pin, body)
                if isinstance(answer, str):
                    return Result(False, answer)
                status, text, wait = answer
                what = f"HTTP {status}" + (f": {text[:300]}" if text else "")
                if 200 <= status < 300:
                    self._done[key] = None
                elif 400 <= status < 500 and status not in RETRYABLE_4XX:
                    self._done[key] = Refused(record_id, record_id, readings, status,
                                              f"{first.node} (X-Sensor {sensor}) X-Pin {pin}: {what}")
                else:
                    hint = " (is this X-Sensor registered at devices.sensor.community?)" if status == 403 else ""
                    return Result(False, f"{first.node} (X-Sensor {sensor}) X-Pin {pin}: {what}{hint}",
                                  status=status, retry_after=wait)
        refused = [r for r in self._done.values() if r is not None]
        self._done.clear()  # the batch is taken: the cursor moves past it
        return Result(True, passed_over={k: v for k, v in passed.items() if v}, refused=refused)

    def close(self) -> None:
        self.conn.close()
