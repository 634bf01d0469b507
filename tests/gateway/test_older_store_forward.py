"""Every forwarder on a store an older gateway wrote with implausible times and counters
(tests/gateway/older_store.py), against the upstream its own tests use: a real VictoriaMetrics
(InfluxDB line protocol), a real Mosquitto upstream, the SensorThings and sensor.community contract
servers. Each passes those records over (counted in `implausible`), never stops or loops on them,
and delivers every ordinary record as from the store's clean twin."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder, InfluxSender
from meetkit_gateway.forward.sensor_community import SensorCommunitySender
from meetkit_gateway.forward.sensorthings import SensorThingsSender
from meetkit_gateway.forward.mqtt_upstream import MqttSender
from meetkit_gateway.store import Store
from meetkit_tools.dev.sensorthings_server import SensorThingsServer
from meetkit_tools.services import VictoriaMetrics

from .conftest import StorePair, batch, encode
from .older_store import IMPLAUSIBLE, UNTIMED_FUTURE
from .sensor_community_server import SensorCommunityServer
from .test_forward_mqtt import Reader, target as mqtt_target, upstream  # noqa: F401 (a fixture)

ORDINARY_READINGS = 15 + 6 + 3  # of the ordinary records: ams-001's example, ams-002, ams-004
ORDINARY_RECORDS = 2 + 3 + 1


def drain(f: Forwarder, limit: int = 100) -> None:
    """Step until the forwarder idles (a step that waits a poll): it must, within `limit` steps."""
    for _ in range(limit):
        if f.step() > 0:
            return
    raise AssertionError("the forwarder did not idle")


def settled(f: Forwarder, db: Path) -> dict[str, Any]:
    """The target's status once it idles, checked to have passed over what the older store adds."""
    st = f.status()
    with Store(db, readonly=True) as s:
        newest = s.db.execute("SELECT max(id) FROM records").fetchone()[0]
    assert f.cursor() == newest and st["queue_rows"] == 0
    return st


def recent_pair(tmp_path: Path) -> StorePair:
    """Ordinary times three hours ago (VictoriaMetrics keeps no point far from now)."""
    return StorePair(tmp_path, (int(time.time()) - 3 * 3600) // 60 * 60)


# -- InfluxDB line protocol, a real VictoriaMetrics ---------------------------------------------------------


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    v = VictoriaMetrics(tmp_path_factory.mktemp("vm")).start()
    try:
        yield v
    finally:
        v.stop()


def points(vm: VictoriaMetrics, db: str) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    out = {}
    for s in vm.export(f'{{db="{db}"}}'):
        m = s["metric"]
        out[(m["__name__"], m["node"], m["quantity"])] = sorted(
            zip([t // 1000 for t in s["timestamps"]], s["values"]))
    return out


def test_influx_passes_the_implausible_over_and_writes_every_ordinary_point(tmp_path, vm):
    pair = recent_pair(tmp_path)
    status = {}
    for name in ("older", "clean"):
        cfg = ForwardConfig(name="vm", type="influx", url=vm.url, db=name)
        # batches of 7 readings: some hold only implausible records, some mix them with ordinary ones;
        # the default hold for records without a time: the one stamped in the far future holds nothing
        f = Forwarder("vm", pair.db(name), InfluxSender(cfg), batch=7)
        drain(f)
        status[name] = settled(f, pair.db(name))
        f.close()
    older, clean = status["older"], status["clean"]
    assert (older["sent"], older["implausible"], older["untimed"], older["dead_letters"], older["retries"]) == (
        ORDINARY_READINGS, IMPLAUSIBLE, UNTIMED_FUTURE, 0, 0)
    assert (clean["sent"], clean.get("implausible", 0), clean["dead_letters"]) == (ORDINARY_READINGS, 0, 0)
    got = points(vm, "older")
    assert got == points(vm, "clean")
    t0 = pair.t0
    assert got[("meetkit_avg", "ams-002", "pm25")] == [(t0, 5.0), (t0 + 60, 6.0), (t0 + 120, 7.0)]
    assert got[("meetkit_avg", "ams-001", "pm1")] == [(t0 - 60, 3.0), (t0, 3.1)]  # seq 16's start derived
    assert not [k for k in got if k[1] == "ams-003"]
    [(t, huge)] = got[("meetkit_avg", "ams-004", "pm25")]  # VictoriaMetrics writes it out in digits
    assert t == t0 and float(huge) == pytest.approx(1e308)
    assert ("meetkit_avg", "ams-004", "temp") not in got  # an infinity: no field
    assert got[("meetkit_n", "ams-004", "temp")] == [(t0, 12)]


# -- MQTT, a real Mosquitto upstream ----------------------------------------------------------------------


def test_mqtt_publishes_every_ordinary_record_and_nothing_implausible(tmp_path, upstream):  # noqa: F811
    pair = recent_pair(tmp_path)
    reader = Reader(upstream)
    try:
        halves = []
        for name in ("older", "clean"):
            f = Forwarder("city", pair.db(name), MqttSender(mqtt_target(tmp_path, upstream)), batch=7)
            drain(f)
            st = settled(f, pair.db(name))
            f.close()
            assert (st["sent"], st.get("implausible", 0), st["dead_letters"]) == (
                ORDINARY_READINGS, IMPLAUSIBLE if name == "older" else 0, 0)
            got = reader.wait(ORDINARY_RECORDS * (len(halves) + 1))
            halves.append(sorted(got[ORDINARY_RECORDS * len(halves):], key=lambda d: (d["node"], d["boot"], d["seq"])))
        older, clean = halves
        assert older == clean
        assert [(d["node"], d["boot"], d["seq"], d["start"]) for d in older] == [
            ("ams-001", 3, 16, pair.t0 - 60), ("ams-001", 3, 17, pair.t0), ("ams-002", 3, 0, pair.t0),
            ("ams-002", 3, 1, pair.t0 + 60), ("ams-002", 3, 2, pair.t0 + 120), ("ams-004", 1, 0, pair.t0)]
        odd = older[-1]["readings"]
        assert odd["temp"] == {"avg": None, "min": None, "max": None, "n": 12, "unit": "degC", "flags": []}
        assert odd["pm25"]["avg"] == 1e308 and odd["pm25"]["n"] == 2**63 - 1
        assert len(reader.messages()) == 2 * ORDINARY_RECORDS
    finally:
        reader.close()


# -- SensorThings, the contract server ----------------------------------------------------------------------

FLEET = "".join(f'[nodes."ams-00{i}"]\nlat = 52.37\nlon = 4.89\n\n' for i in range(1, 5))


def sta_forwarder(db: Path, server: SensorThingsServer, fleet: Path) -> Forwarder:
    cfg = ForwardConfig(name="sta", type="sensorthings", url=server.url, fleet=fleet)
    return Forwarder("sta", db, SensorThingsSender(cfg, db), batch=7)


def observations(server: SensorThingsServer) -> dict[str, list[tuple[Any, ...]]]:
    """Datastream name -> its Observations (phenomenonTime, result, resultTime, parameters), sorted."""
    names = {d["@iot.id"]: d["name"] for d in server.all("Datastreams")}
    out: dict[str, list[tuple[Any, ...]]] = {n: [] for n in names.values()}
    for o in server.all("Observations"):
        out[names[o["Datastream"]]].append((o["phenomenonTime"], o["result"], o["resultTime"], o["parameters"]))
    return {n: sorted(v, key=str) for n, v in out.items()}


def mark(db: Path, datastream: str) -> Any:
    with Store(db, readonly=True) as s:
        return s.db.execute("SELECT sent_until FROM sensorthings_entities WHERE kind = 'Datastream' AND key = ?",
                            (datastream,)).fetchone()[0]


def test_sensorthings_sends_every_ordinary_observation_and_gets_past_an_older_gateways_mark(tmp_path, sta):
    pair = StorePair(tmp_path, 1795510800)  # 2026-11-24T09:00:00Z
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET)
    clean_sta = SensorThingsServer()
    servers = {"older": sta, "clean": clean_sta}
    forwarders = {name: sta_forwarder(pair.db(name), servers[name], fleet) for name in servers}
    try:
        for name, f in forwarders.items():
            drain(f)
            st = settled(f, pair.db(name))
            assert (st.get("implausible", 0), st["dead_letters"]) == (IMPLAUSIBLE if name == "older" else 0, 0)
        got = observations(sta)
        assert got == observations(clean_sta)
        assert not [n for n in got if n.startswith("ams-003")]
        assert got["ams-002 pm25 PMS5003"] == [
            (f"2026-11-24T09:0{m}:00.000Z/2026-11-24T09:0{m + 1}:00.000Z", 5.0 + m, f"2026-11-24T09:0{m + 1}:00.000Z",
             {"min": 4.0, "max": 7.0 + m, "n": 58}) for m in range(3)]
        # ams-004: the infinities are not sent (avg), or null (min, max)
        assert got["ams-004 pm25 PMS5003"][0][1:] == (1e308, "2026-11-24T09:01:00.000Z",
                                                       {"min": -1e308, "max": 5e-324, "n": 2**63 - 1})
        assert "ams-004 temp BME280" not in got

        # An older gateway sent an Observation in 2100 and marked the Datastream as sent up to the year
        # 318857 (its formatting failed after the mark was written): both are there on a restart.
        ds = "ams-002 pm25 PMS5003"
        ds_id = {d["name"]: d["@iot.id"] for d in sta.all("Datastreams")}[ds]
        assert sta.create_observations([{
            "Datastream": {"@iot.id": ds_id}, "components": ["phenomenonTime", "result", "resultTime"],
            "dataArray": [["2100-01-01T00:00:00Z/2100-01-01T00:01:00Z", 7.5, "2100-01-01T00:01:00Z"]]}])[0].startswith(
            "http")
        forwarders["older"].close()
        with Store(pair.db("older")) as s:
            s.db.execute("UPDATE sensorthings_entities SET sent_until = ? WHERE key = ?", (10**13 + 60, ds))
        forwarders["older"] = sta_forwarder(pair.db("older"), sta, fleet)
        lookups = len(sta.requests("GET", f"/Datastreams({ds_id})/Observations"))
        for name, f in forwarders.items():
            with Store(pair.db(name)) as s:
                s.add_batch(payload.parse_batch(encode(batch(node="ams-002", boot=3, seqs=range(3, 5))), "ams-002"))
            drain(f)
        assert mark(pair.db("older"), ds) == mark(pair.db("clean"), ds) == pair.t0 + 5 * 60
        got = observations(sta)
        assert got[ds][-1][0].startswith("2100-01-01")  # the older gateway's, left as it is
        assert got[ds][:-1] == observations(clean_sta)[ds] and len(got[ds]) == 6
        # one look for the newest plausible Observation, none for what might already be there
        looks = [q for _, _, q, _ in sta.requests("GET", f"/Datastreams({ds_id})/Observations")][lookups:]
        assert len(looks) == 1 and looks[0]["$filter"].startswith("resultTime le 2026-")
    finally:
        for f in forwarders.values():
            f.close()
        clean_sta.stop()


# -- sensor.community, the contract server ------------------------------------------------------------------


def test_sensor_community_pushes_the_fresh_ordinary_records_only(tmp_path):
    pair = StorePair(tmp_path, 1795510800)
    sensors = {"ams-001": "esp32-1111", "ams-002": "esp32-2222", "ams-003": "esp32-3333", "ams-004": "esp32-4444"}
    pushed = {}
    for name in ("older", "clean"):
        server = SensorCommunityServer({s: {1, 11, 15} for s in sensors.values()})
        try:
            clock = lambda: pair.t0 + 200.0  # noqa: E731: every ordinary record ended less than 300 s before
            cfg = ForwardConfig(name="sc", type="sensor.community", url=server.url, timeout=5.0,
                                sensors=tuple(sensors.items()))
            f = Forwarder("sc", pair.db(name), SensorCommunitySender(cfg, clock=clock), clock=clock, batch=7)
            drain(f)
            st = settled(f, pair.db(name))
            f.close()
            assert (st.get("implausible", 0), st.get("stale", 0)) == (IMPLAUSIBLE if name == "older" else 0, 0)
            pushed[name] = [(p.sensor, p.pin, p.values) for p in server.pushes]
        finally:
            server.stop()
    assert pushed["older"] == pushed["clean"]
    assert {s for s, _, _ in pushed["older"]} == {"esp32-1111", "esp32-2222", "esp32-4444"}
    assert ("esp32-4444", 11, {"humidity": "-5.00"}) in pushed["older"]  # the infinite temperature is not sent
