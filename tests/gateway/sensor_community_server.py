"""A STRICT stand-in for sensor.community's push API (`POST /v1/push-sensor-data/`), for tests:
there is no server of theirs to run here. It answers as the real one (opendata-stuttgart/
feinstaub-api, see gateway/forward/sensor_community.py for the sources) where that is known, and
refuses more than the real one where the real one is lenient, so that the gateway is held to what
it should send:

- 404 for any other path, 405 for any other method (the endpoint only creates);
- 429 with `Retry-After` when a sensor posts more than `rate` requests per `per` seconds (the real
  service sits behind a rate-limiting proxy; the numbers are ours);
- 403 `{"detail": "Authentication credentials were not provided."}` without `X-Sensor`, 403
  `{"detail": "Node not found in database."}` for an X-Sensor that is not registered (as the real
  one: DRF's AuthenticationFailed without a WWW-Authenticate header);
- 415 unless `Content-Type` is application/json; 400 for a body that is not JSON;
- 400 unless the body is exactly {"software_version": str, "sensordatavalues": [...]} with at least
  one {"value_type": str, "value": str} (values as strings of finite numbers, each value_type once,
  no other key: no `timestamp`, which the real serializer would take but no client sends);
- 400 `["sensor could not be selected."]` for an X-Pin the sensor is not registered with (the real
  one lets a node with a single sensor post under any pin; this one never does);
- 400 for a value_type the pin's sensor does not have (1: P0 P1 P2; 11: temperature humidity
  pressure; 15: noise_LAeq noise_LA_min noise_LA_max);
- else 201 with the stored push, kept in `pushes` with its arrival time.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

PATH = "/v1/push-sensor-data/"
VALUE_TYPES = {1: {"P0", "P1", "P2"}, 11: {"temperature", "humidity", "pressure"},
               15: {"noise_LAeq", "noise_LA_min", "noise_LA_max"}}


@dataclass(frozen=True)
class Push:
    sensor: str
    pin: int
    software_version: str
    values: dict[str, str]  # value_type -> value, in the order sent
    at: float


class SensorCommunityServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sensors: dict[str, set[int]], rate: int = 1000, per: float = 1.0,
                 retry_after: int = 7) -> None:
        self.sensors = sensors  # X-Sensor -> the pins registered for it
        self.rate, self.per, self.retry_after = rate, per, retry_after
        self.pushes: list[Push] = []
        self.answers: list[tuple[int, str]] = []  # (status, reason) of every request, in order
        self.fail_next: list[int] = []  # statuses to answer the next requests with (an outage)
        self._recent: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{PATH}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def judge(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], Any]:
        """(status, extra headers, JSON answer) for one request; a 201 stores the push."""
        if path != PATH:
            return 404, {}, {"detail": "Not found."}
        if method != "POST":
            return 405, {"Allow": "POST, OPTIONS"}, {"detail": f'Method "{method}" not allowed.'}
        with self.lock:
            if self.fail_next:
                return self.fail_next.pop(0), {}, {"detail": "Service unavailable."}
        sensor = headers.get("X-Sensor")
        if sensor:
            now = time.monotonic()
            with self.lock:
                recent = [t for t in self._recent.get(sensor, []) if now - t < self.per]
                if len(recent) >= self.rate:
                    self._recent[sensor] = recent
                    return 429, {"Retry-After": str(self.retry_after)}, {"detail": "Request was throttled."}
                self._recent[sensor] = recent + [now]
        if not sensor:
            return 403, {}, {"detail": "Authentication credentials were not provided."}
        if sensor not in self.sensors:
            return 403, {}, {"detail": "Node not found in database."}
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            return 415, {}, {"detail": f'Unsupported media type "{ctype}" in request.'}
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return 400, {}, {"detail": f"JSON parse error - {e}"}
        problem = self._shape(doc)
        if problem:
            return 400, {}, {"detail": problem}
        pin_text = headers.get("X-Pin") or ""
        pin = int(pin_text) if pin_text.isdigit() else None
        if pin is None or pin not in self.sensors[sensor]:
            return 400, {}, ["sensor could not be selected."]
        values = {v["value_type"]: v["value"] for v in doc["sensordatavalues"]}
        wrong = [t for t in values if t not in VALUE_TYPES.get(pin, set())]
        if wrong:
            return 400, {}, {"sensordatavalues": f"value_type {', '.join(wrong)} is not one of sensor pin {pin}"}
        push = Push(sensor, pin, doc["software_version"], values, time.time())
        with self.lock:
            self.pushes.append(push)
        return 201, {}, {"sensor": pin, "software_version": push.software_version,
                         "sensordatavalues": doc["sensordatavalues"]}

    @staticmethod
    def _shape(doc: Any) -> str | None:
        if not isinstance(doc, dict) or set(doc) != {"software_version", "sensordatavalues"}:
            return "the body must be exactly {software_version, sensordatavalues}"
        if not isinstance(doc["software_version"], str) or not 0 < len(doc["software_version"]) <= 100:
            return "software_version must be a string of 1 to 100 characters"
        vals = doc["sensordatavalues"]
        if not isinstance(vals, list) or not vals:
            return "sensordatavalues was empty. Nothing to save."
        seen: set[str] = set()
        for v in vals:
            if not isinstance(v, dict) or set(v) != {"value_type", "value"}:
                return "each sensordatavalue must be exactly {value_type, value}"
            if not isinstance(v["value_type"], str) or not isinstance(v["value"], str):
                return "value_type and value must be strings"
            try:
                if not math.isfinite(float(v["value"])):
                    raise ValueError
            except ValueError:
                return f"value {v['value']!r} is not a number"
            if v["value_type"] in seen:
                return f"value_type {v['value_type']} twice"
            seen.add(v["value_type"])
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SensorCommunityServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the real one

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, answer = self.server.judge(self.command, self.path, self.headers, body)
        with self.server.lock:
            self.server.answers.append((status, json.dumps(answer)))
        data = json.dumps(answer).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET = do_PUT = _handle

    def log_message(self, *a: Any) -> None:
        pass
