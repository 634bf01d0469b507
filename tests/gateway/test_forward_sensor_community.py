"""Forwarding to sensor.community's push API, against a STRICT contract server written for these
tests (tests/gateway/sensor_community_server.py): sensor.community has no server one could run."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder, Forwarders
from meetkit_gateway.forward.sensor_community import SensorCommunitySender
from meetkit_gateway.http import metrics_text
from meetkit_gateway.store import Store
from tests.metrics import parse_exposition, sample

from .conftest import batch, encode, example, wait_for
from .sensor_community_server import PATH, Push, SensorCommunityServer

T0 = 1795510800  # the example record's start
SENSORS = {"esp32-1111": {1, 11, 15}, "esp32-2222": {1, 11}}


@pytest.fixture
def sc() -> Iterator[SensorCommunityServer]:
    s = SensorCommunityServer({k: set(v) for k, v in SENSORS.items()})
    try:
        yield s
    finally:
        s.stop()


def target(server: SensorCommunityServer, **kw: Any) -> ForwardConfig:
    kw.setdefault("sensors", (("ams-001", "esp32-1111"), ("ams-002", "esp32-2222")))
    return ForwardConfig(name="sc", type="sensor.community", url=server.url, timeout=5.0, **kw)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def forwarder(db: Path, server: SensorCommunityServer, now: float | Clock, **kw: Any) -> Forwarder:
    clock = now if isinstance(now, Clock) else Clock(now)
    return Forwarder("sc", db, SensorCommunitySender(target(server, **kw), clock=clock), clock=clock,
                     hold_untimed_s=0)


def add(db: Path, doc: dict[str, Any]) -> None:
    with Store(db) as s:
        s.add_batch(payload.parse_batch(encode(doc), doc["node"]))


def drain(f: Forwarder, limit: int = 50) -> None:
    for _ in range(limit):
        if f.step() > 0:
            return
    raise AssertionError("the forwarder did not idle")


def dead(db: Path) -> list[tuple]:
    with Store(db, readonly=True) as s:
        return s.db.execute("SELECT first_id, last_id, readings, status, reason FROM forward_dead_letters").fetchall()


def pushes(server: SensorCommunityServer) -> list[tuple[str, int, str, dict[str, str]]]:
    return [(p.sensor, p.pin, p.software_version, p.values) for p in server.pushes]


def test_fresh_records_arrive_one_request_per_pin_with_the_apis_names_and_units(tmp_path, sc):
    db = tmp_path / "g.db"
    add(db, example())  # seq 16 (start T0-60: pm1, temp; pm25 null) and seq 17 (everything)
    f = forwarder(db, sc, now=T0 + 60 + 30)  # 30 s after seq 17's interval ended
    drain(f)
    assert pushes(sc) == [
        ("esp32-1111", 1, "meetkit-0.2.0", {"P0": "3.00"}),
        ("esp32-1111", 11, "meetkit-0.2.0", {"temperature": "12.30"}),
        ("esp32-1111", 1, "meetkit-0.2.0", {"P0": "3.10", "P1": "8.90", "P2": "5.20"}),
        ("esp32-1111", 11, "meetkit-0.2.0", {"pressure": "101321.00", "humidity": "81.20", "temperature": "12.34"}),
        ("esp32-1111", 15, "meetkit-0.2.0", {"noise_LAeq": "55.20", "noise_LA_min": "48.30", "noise_LA_max": "67.10"}),
    ]
    assert [a[0] for a in sc.answers] == [201] * 5  # nothing the strict server refused
    st = f.status()
    # sent: pm1, temp of seq 16; pm1, pm10, pm25, press, rh, temp, LAeq of seq 17. Not for this API: the
    # null pm25 of seq 16, and LA10, LA50, LA90, LZeq, cov.
    assert (st["kind"], st["sent"], st["unsupported"], st["queue_rows"], st["up"]) == (
        "sensor.community", 9, 6, 0, True)
    assert st.get("stale", 0) == 0 and st["dead_letters"] == 0
    f.close()


def test_old_records_are_passed_over_and_counted_never_sent_late(tmp_path, sc):
    db = tmp_path / "g.db"
    add(db, batch(node="ams-002", seqs=range(10), ts0=T0))  # intervals end at T0+60 .. T0+600
    clock = Clock(T0 + 600 + 200)
    f = forwarder(db, sc, now=clock, max_age=300)  # only those that ended at T0+500 or later are fresh
    drain(f)
    assert [(p.sensor, p.pin, p.values) for p in sc.pushes] == [
        ("esp32-2222", 1, {"P2": f"{5.0 + s:.2f}"}) if pin == 1 else ("esp32-2222", 11, {"temperature": "12.50"})
        for s in (8, 9) for pin in (1, 11)]
    st = f.status()
    assert (st["stale"], st["sent"], st["queue_rows"]) == (16, 4, 0)
    with Store(db, readonly=True) as s:
        fams = parse_exposition(metrics_text(s, lambda: [f.status()]))
    assert sample(fams, "meetkit_store_counter_total", name="forward.sc.stale") == 16
    assert sample(fams, "meetkit_forward_sent_rows_total", target="sc", kind="sensor.community") == 4
    # A replay (the cursor reset) ten minutes later sends nothing again: everything is stale by now.
    clock.now += 600
    f.reset(0)
    drain(f)
    assert len(sc.pushes) == 4 and f.status()["stale"] == 36
    f.close()


def test_nodes_without_a_sensor_id_are_passed_over_and_counted(tmp_path, sc):
    db = tmp_path / "g.db"
    add(db, batch(node="ams-009", seqs=range(3), ts0=T0))
    add(db, batch(node="ams-002", seqs=range(1), ts0=T0))
    f = forwarder(db, sc, now=T0 + 60)
    drain(f)
    assert [(p.sensor, p.pin) for p in sc.pushes] == [("esp32-2222", 1), ("esp32-2222", 11)]
    st = f.status()
    assert (st["unmapped"], st["sent"]) == (6, 2)
    f.close()


def test_an_unregistered_sensor_403_is_retried_not_dead_lettered_then_delivers(tmp_path, sc):
    db = tmp_path / "g.db"
    add(db, batch(node="ams-001", seqs=range(2), ts0=T0))
    del sc.sensors["esp32-1111"]  # not (yet) registered at devices.sensor.community
    f = forwarder(db, sc, now=T0 + 120)
    f.rng = lambda: 1.0
    assert f.step() == 0.5 and f.step() == 1.0
    st = f.status()
    assert st["last_error"] == ('ams-001 (X-Sensor esp32-1111) X-Pin 1: HTTP 403: {"detail": "Node not found in '
                                'database."} (is this X-Sensor registered at devices.sensor.community?)')
    assert (st["up"], st["retries"], st["dead_letters"], st["queue_rows"], f.cursor()) == (False, 2, 0, 4, 0)
    sc.sensors["esp32-1111"] = {1, 11}  # the operator registers it
    drain(f)
    assert [(p.sensor, p.pin) for p in sc.pushes] == [("esp32-1111", 1), ("esp32-1111", 11)] * 2
    assert f.status()["sent"] == 4 and f.cursor() == 2
    f.close()


def test_429_waits_for_retry_after_and_resumes_without_sending_twice(tmp_path):
    server = SensorCommunityServer({"esp32-1111": {1, 11}}, rate=3, per=60, retry_after=42)
    try:
        db = tmp_path / "g.db"
        add(db, batch(node="ams-001", seqs=range(3), ts0=T0))  # 6 requests, one batch
        f = forwarder(db, server, now=T0 + 180)
        assert f.step() == 42.0  # the 4th request was throttled: wait as told
        assert [a[0] for a in server.answers] == [201, 201, 201, 429]
        assert f.cursor() == 0 and "HTTP 429" in f.status()["last_error"]
        server.rate = 1000
        assert f.step() == 0.0 and f.cursor() == 3
        assert [(p.pin, p.values) for p in server.pushes] == [
            (1, {"P2": "5.00"}), (11, {"temperature": "12.50"}), (1, {"P2": "6.00"}),
            (11, {"temperature": "12.50"}), (1, {"P2": "7.00"}), (11, {"temperature": "12.50"})]  # each once
        st = f.status()
        assert (st["sent"], st["retries"], st["dead_letters"]) == (6, 1, 0)
        f.close()
    finally:
        server.stop()


def test_an_outage_mid_batch_is_retried_with_backoff_and_nothing_is_sent_twice(tmp_path, sc):
    db = tmp_path / "g.db"
    add(db, batch(node="ams-002", seqs=range(2), ts0=T0))
    f = forwarder(db, sc, now=T0 + 120)
    f.rng = lambda: 1.0
    sc.fail_next = []
    original = sc.judge

    def judge(method: str, path: str, headers: Any, body: bytes):  # the 2nd request meets an outage of 2
        if len(sc.answers) == 1:
            sc.fail_next = [503, 502]
        return original(method, path, headers, body)

    sc.judge = judge  # type: ignore[method-assign]
    assert f.step() == 0.5 and f.step() == 1.0 and f.step() == 0.0
    assert [a[0] for a in sc.answers] == [201, 503, 502, 201, 201, 201]
    assert len(sc.pushes) == 4 and f.status()["sent"] == 4 and f.cursor() == 2
    f.close()


def test_a_pin_the_sensor_is_not_registered_with_is_dead_lettered_alone(tmp_path, sc):
    db = tmp_path / "g.db"
    add(db, example(node="ams-002"))  # esp32-2222 has PM and climate, no noise sensor (pin 15)
    f = forwarder(db, sc, now=T0 + 60)
    drain(f)
    assert [(p.pin, sorted(p.values)) for p in sc.pushes] == [
        (1, ["P0"]), (11, ["temperature"]), (1, ["P0", "P1", "P2"]), (11, ["humidity", "pressure", "temperature"])]
    assert dead(db) == [(2, 2, 1, 400, 'ams-002 (X-Sensor esp32-2222) X-Pin 15: HTTP 400: ["sensor could not be '
                                       'selected."]')]
    st = f.status()
    assert (st["dead_letters"], st["sent"], st["unsupported"], st["queue_rows"], st["up"]) == (1, 8, 6, 0, True)
    f.close()


def test_the_forwarding_thread_delivers_fresh_records_as_they_come(tmp_path, sc):
    """As the gateway runs it: gateway.toml, the target's thread, the real clock."""
    db = tmp_path / "g.db"
    now = int(time.time())
    add(db, batch(node="ams-001", seqs=range(2), ts0=now - 3600))  # an hour old: stale
    Store(db).close()
    (tmp_path / "g.toml").write_text(f'[store]\npath = "g.db"\n[[forward]]\nname = "sc"\ntype = "sensor.community"\n'
                                     f'url = "{sc.url}"\nsensors = {{ "ams-001" = "esp32-1111" }}\n')
    cfg = configuration.load(tmp_path / "g.toml")
    fw = Forwarders.start(cfg.store.path, cfg.forward, poll_s=0.05)
    try:
        wait_for(lambda: fw.status()[0]["queue_rows"] == 0, 5, "the stale records to be passed over")
        add(db, batch(node="ams-001", boot=4, seqs=range(1), ts0=now - 60))
        fw.wake()
        wait_for(lambda: fw.status()[0]["sent"] == 2, 5, "the fresh record")
        assert [(p.sensor, p.pin) for p in sc.pushes] == [("esp32-1111", 1), ("esp32-1111", 11)]
        st = fw.status()[0]
        assert (st["stale"], st["sent"], st["up"]) == (4, 2, True)
    finally:
        fw.stop()


def post(server: SensorCommunityServer, body: Any, path: str = PATH, method: str = "POST",
         **headers: str) -> tuple[int, Any]:
    c = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    c.request(method, path, body=data, headers={"Content-Type": "application/json", **headers})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def test_the_contract_server_refuses_what_the_real_api_would(sc):
    """The stand-in is only worth something if it is strict: every way of getting it wrong."""
    ok = {"software_version": "x", "sensordatavalues": [{"value_type": "P1", "value": "1.5"}]}
    h = {"X-Sensor": "esp32-1111", "X-Pin": "1"}
    assert post(sc, ok, **h)[0] == 201
    assert post(sc, ok, path="/v1/push-sensor-data", **h)[0] == 404
    assert post(sc, ok, method="PUT", **h)[0] == 405
    assert post(sc, ok, **{"X-Pin": "1"}) == (403, {"detail": "Authentication credentials were not provided."})
    assert post(sc, ok, **{"X-Sensor": "esp32-9", "X-Pin": "1"}) == (403, {"detail": "Node not found in database."})
    assert post(sc, ok, **{"X-Sensor": "esp32-1111"}) == (400, ["sensor could not be selected."])
    assert post(sc, ok, **{"X-Sensor": "esp32-2222", "X-Pin": "15"}) == (400, ["sensor could not be selected."])
    assert post(sc, b"{nope", **h)[0] == 400
    for bad in (
        {**ok, "timestamp": "2026-11-24T09:00:00"},
        {"sensordatavalues": ok["sensordatavalues"]},
        {**ok, "sensordatavalues": []},
        {**ok, "sensordatavalues": [{"value_type": "P1", "value": 1.5}]},
        {**ok, "sensordatavalues": [{"value_type": "P1", "value": "n/a"}]},
        {**ok, "sensordatavalues": [{"value_type": "P1", "value": "1"}, {"value_type": "P1", "value": "2"}]},
        {**ok, "sensordatavalues": [{"value_type": "temperature", "value": "1"}]},  # not a PM value
    ):
        assert post(sc, bad, **h)[0] == 400, bad
    c = http.client.HTTPConnection("127.0.0.1", sc.server_address[1], timeout=5)
    c.request("POST", PATH, body=json.dumps(ok), headers={"Content-Type": "text/plain", **h})
    assert c.getresponse().status == 415
    c.close()
    assert sc.pushes == [Push("esp32-1111", 1, "x", {"P1": "1.5"}, sc.pushes[0].at)]
