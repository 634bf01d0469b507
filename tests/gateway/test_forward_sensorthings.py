"""Forwarding to an OGC SensorThings API service: against the STRICT contract server of
tools/dev/sensorthings_server.py (no real SensorThings server can be installed here), through the real
forwarder and a real SQLite store."""

from __future__ import annotations

import base64
import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest

from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder, Forwarders
from meetkit_gateway.forward.sensorthings import SensorThingsSender
from meetkit_gateway.store import Store
from meetkit_tools.dev.sensorthings_server import ROOT, SensorThingsServer

from .conftest import batch, encode, example, wait_for

T0 = 1795510800  # 2026-11-24T02:20:00Z
FLEET = """
[nodes."ams-001"]
lat = 52.3731
lon = 4.8922
height_m = 3.5
name = "Dam, lamp post 12"

[nodes."ams-002"]
lat = 52.3584
lon = 4.8811
"""


def fill(db: Path, node: str = "ams-001", seqs: range = range(3), ts0: int | None = T0, **envelope: Any) -> None:
    doc = batch(node=node, seqs=seqs, ts0=ts0)
    doc.update(envelope)
    with Store(db) as s:
        s.add_batch(payload.parse_batch(encode(doc), node))


def target(url: str, fleet: Path | None = None, **kw: Any) -> ForwardConfig:
    return ForwardConfig(name="sta", type="sensorthings", url=url, fleet=fleet, **kw)


def forwarder(db: Path, cfg: ForwardConfig, batch: int = 1000, **kw: Any) -> Forwarder:
    return Forwarder(cfg.name, db, SensorThingsSender(cfg, db), batch=batch, **kw)


def drain(f: Forwarder, limit: int = 100) -> int:
    """Step until the forwarder idles; the number of steps that sent."""
    for k in range(limit):
        if f.step() > 0:
            return k
    raise AssertionError("the forwarder did not idle")


def by_name(server: SensorThingsServer, collection: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in server.all(collection)}


def observations(server: SensorThingsServer, datastream: str) -> list[dict[str, Any]]:
    ds = by_name(server, "Datastreams")[datastream]
    return sorted(server.observations(ds["@iot.id"]), key=lambda o: o["phenomenonTime"])


def iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


def dead_letters(db: Path) -> list[tuple]:
    with Store(db, readonly=True) as s:
        return s.db.execute("SELECT first_id, last_id, readings, status, reason FROM forward_dead_letters"
                            " ORDER BY id").fetchall()


def entity_posts(server: SensorThingsServer) -> list[str]:
    return [path for _, path, _, _ in server.requests("POST") if path != "/CreateObservations"]


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET)
    return path


def test_first_use_creates_each_entity_once_and_the_values_arrive_with_their_times_and_units(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(3))
    fill(db, "ams-002", range(3))
    f = forwarder(db, target(sta.url, fleet), batch=4)  # two records a request
    assert drain(f) == 3
    things = by_name(sta, "Things")
    assert sorted(things) == ["ams-001", "ams-002"]
    assert things["ams-001"]["properties"] == {"source": "meetkit", "node": "ams-001", "board": "esp32-devkitc",
                                               "fw": "0.1.0", "name": "Dam, lamp post 12"}
    assert things["ams-002"]["properties"] == {"source": "meetkit", "node": "ams-002", "board": "esp32-devkitc",
                                               "fw": "0.1.0"}  # the register has only its position
    loc = {e["name"]: e for e in sta.all("Locations")}["Dam, lamp post 12"]
    assert loc["location"] == {"type": "Point", "coordinates": [4.8922, 52.3731]}  # GeoJSON: lon, lat
    assert loc["encodingType"] == "application/geo+json" and loc["properties"]["height_m"] == 3.5
    assert things["ams-001"]["Locations"] == [loc["@iot.id"]]
    sensors = by_name(sta, "Sensors")
    assert sorted(sensors) == ["BME280", "PMS5003"]  # one per model, shared by the nodes
    assert sensors["PMS5003"]["metadata"] == "http://www.plantower.com/en/content/?108.html"
    props = by_name(sta, "ObservedProperties")
    assert {n: p["definition"] for n, p in props.items()} == {
        "PM2.5": "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/6001",
        "Air temperature": "http://vocab.nerc.ac.uk/collection/P07/current/CFSN0023/"}
    streams = by_name(sta, "Datastreams")
    assert sorted(streams) == ["ams-001 pm25 PMS5003", "ams-001 temp BME280", "ams-002 pm25 PMS5003",
                               "ams-002 temp BME280"]
    ds = streams["ams-001 pm25 PMS5003"]
    assert ds["unitOfMeasurement"] == {"name": "microgram per cubic metre", "symbol": "µg/m³",
                                       "definition": "http://qudt.org/vocab/unit/MicroGM-PER-M3"}
    assert ds["observationType"] == "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
    assert (ds["Thing"], ds["Sensor"], ds["ObservedProperty"]) == (
        things["ams-001"]["@iot.id"], sensors["PMS5003"]["@iot.id"], props["PM2.5"]["@iot.id"])
    assert streams["ams-002 temp BME280"]["unitOfMeasurement"]["symbol"] == "°C"
    # each entity was POSTed once: 2 Things (Locations inline), 2 Sensors, 2 ObservedProperties, 4 Datastreams
    assert sorted(entity_posts(sta)) == sorted(["/Things"] * 2 + ["/Sensors"] * 2 + ["/ObservedProperties"] * 2
                                               + ["/Datastreams"] * 4)
    obs = observations(sta, "ams-001 pm25 PMS5003")
    assert [(o["phenomenonTime"], o["result"], o["resultTime"], o["parameters"]) for o in obs] == [
        (f"{iso(T0 + 60 * s)}/{iso(T0 + 60 * s + 60)}", 5.0 + s, iso(T0 + 60 * s + 60),
         {"min": 4.0, "max": 7.0 + s, "n": 58}) for s in range(3)]
    foi = {e["@iot.id"]: e for e in sta.all("FeaturesOfInterest")}[obs[0]["FeatureOfInterest"]]
    assert foi["feature"]["coordinates"] == [4.8922, 52.3731]  # made by the service from the Thing's Location
    st = f.status()
    assert (st["kind"], st["sent"], st["dead_letters"], st["retries"], st["queue_rows"], st["up"]) == (
        "sensorthings", 12, 0, 0, 0, True)
    f.close()


def test_a_restart_creates_nothing_and_a_second_gateway_finds_what_is_there(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(3))
    cfg = target(sta.url, fleet)
    f = forwarder(db, cfg)
    drain(f)
    f.close()
    before = len(sta.state.requests)
    fill(db, "ams-001", range(3, 5))
    f = forwarder(db, cfg)  # a restart: the ids come from the store
    drain(f)
    f.close()
    assert [(m, p) for m, p, _, _ in sta.state.requests[before:]] == [("POST", "/CreateObservations")]
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 5
    # a second gateway with its own database and the same records plus a newer one: it finds every
    # entity, creates none, and adds only the newer readings
    other = tmp_path / "other.db"
    fill(other, "ams-001", range(6))
    posts = len(entity_posts(sta))
    g = forwarder(other, cfg)
    drain(g)
    assert len(entity_posts(sta)) == posts
    assert [len(v) for v in (sta.all("Things"), sta.all("Sensors"), sta.all("ObservedProperties"),
                             sta.all("Datastreams"))] == [1, 2, 2, 2]
    pm = observations(sta, "ams-001 pm25 PMS5003")
    assert [o["result"] for o in pm] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]  # seq 5 only was new
    assert g.status()["sent"] == 12
    g.close()


def test_flags_scalars_noise_and_readings_without_a_value(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    with Store(db) as s:
        s.add_batch(payload.parse_batch(encode(example()), "ams-001"))
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    obs = observations(sta, "ams-001 pm25 PMS5003")
    # seq 16 had no pm25 (flag missing): no Observation; seq 17's carries its flag
    assert [(o["result"], o["parameters"]) for o in obs] == [
        (5.2, {"min": 4.0, "max": 7.0, "n": 58, "flags": ["rh_high"]})]
    assert [o["phenomenonTime"] for o in observations(sta, "ams-001 pm1 PMS5003")] == [
        f"{iso(T0 - 60)}/{iso(T0)}", f"{iso(T0)}/{iso(T0 + 60)}"]  # seq 16's start derived from seq 17
    la90 = observations(sta, "ams-001 LA90 ICS-43434")
    assert [(o["result"], o["parameters"]) for o in la90] == [(49.6, {})]  # a plain number: no min/max/n
    laeq = observations(sta, "ams-001 LAeq ICS-43434")
    assert laeq[0]["parameters"] == {"min": 48.3, "max": 67.1, "n": 60}  # LAFmin, LAFmax, seconds of audio
    streams = by_name(sta, "Datastreams")
    assert streams["ams-001 cov ICS-43434"]["unitOfMeasurement"]["definition"] == "http://qudt.org/vocab/unit/UNITLESS"
    assert streams["ams-001 LAeq ICS-43434"]["unitOfMeasurement"]["symbol"] == "dB"
    assert by_name(sta, "ObservedProperties")["LAeq"]["definition"] == (
        "http://qudt.org/vocab/quantitykind/SoundPressureLevel")
    assert sorted(by_name(sta, "Sensors")) == ["BME280", "ICS-43434", "PMS5003"]
    assert f.status()["sent"] == 15 and dead_letters(db) == []
    f.close()


def test_per_row_errors_become_dead_letters_and_the_rest_is_delivered(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    fill(db, "ams-002", range(1))
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    gone = by_name(sta, "Datastreams")["ams-002 pm25 PMS5003"]["@iot.id"]
    sta.delete("Datastreams", gone)  # someone deleted it upstream; the gateway still has its id
    fill(db, "ams-001", range(1, 3))  # records 3, 4
    fill(db, "ams-002", range(1, 3))  # records 5, 6
    assert f.step() == 0.0
    reason = f"Datastream 'ams-002 pm25 PMS5003': error No such entity 'Datastream' with id {gone}"
    assert dead_letters(db) == [(5, 5, 1, 201, f"pm25: {reason}"), (6, 6, 1, 201, f"pm25: {reason}")]
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 3
    assert len(observations(sta, "ams-002 temp BME280")) == 3
    st = f.status()
    assert (st["sent"], st["dead_letters"], st["queue_rows"], st["up"]) == (10, 2, 0, True)
    assert st["last_error"] == f"2 readings refused: pm25: {reason}"  # the quantities, then the reason
    # the Datastream is looked up again before its next use: made anew, and the next readings arrive
    fill(db, "ams-002", range(3, 4))
    drain(f)
    assert [o["result"] for o in observations(sta, "ams-002 pm25 PMS5003")] == [8.0]
    assert f.status()["dead_letters"] == 2 and f.status()["last_error"] is None
    f.close()


def test_a_thing_deleted_upstream_is_made_again(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    f = forwarder(db, target(sta.url, fleet), rng=lambda: 1.0)
    drain(f)
    old = by_name(sta, "Things")["ams-001"]["@iot.id"]
    for ds in sta.all("Datastreams"):
        sta.delete("Datastreams", ds["@iot.id"])
    sta.delete("Things", old)
    fill(db, "ams-001", range(1, 2))
    assert f.step() == 0.0  # the cached Datastreams are gone: refused row by row, then looked up again
    assert [(a, n) for a, _, n, _, _ in dead_letters(db)] == [(2, 1), (2, 1)]  # one per reason
    fill(db, "ams-001", range(2, 3))
    assert f.step() == 0.5  # the Thing is gone too: 404 under it, retried...
    drain(f)  # ...and made again, with its Location
    thing = by_name(sta, "Things")["ams-001"]
    assert thing["@iot.id"] != old and len(thing["Locations"]) == 1
    assert [o["result"] for o in observations(sta, "ams-001 pm25 PMS5003")] == [7.0]
    f.close()


def test_a_node_without_a_position_is_refused_until_the_fleet_file_has_it(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(2))  # records 1, 2
    fill(db, "ams-003", range(2))  # records 3, 4: not in the fleet file
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    refused = dead_letters(db)
    assert [(a, b, n) for a, b, n, _, _ in refused] == [(3, 3, 2), (4, 4, 2)]
    assert refused[0][4] == (
        f"pm25,temp: node ams-003 has no known position, and the service makes each Observation's "
        f"FeatureOfInterest from its Thing's Location: add the node to the fleet file {fleet}, then replay")
    assert by_name(sta, "Things")["ams-003"]["Locations"] == []
    assert [len(observations(sta, n)) for n in ("ams-001 pm25 PMS5003", "ams-003 pm25 PMS5003")] == [2, 0]
    # ...none of ams-003's readings was sent: the service would have refused each
    sent_to = {item["Datastream"]["@iot.id"] for _, path, _, body in sta.requests("POST", "/CreateObservations")
               for item in body}
    assert by_name(sta, "Datastreams")["ams-003 pm25 PMS5003"]["@iot.id"] not in sent_to
    # the operator adds the node: its Thing gets the Location, its next readings go
    fleet.write_text(FLEET + '\n[nodes."ams-003"]\nlat = 52.3676\nlon = 4.9041\n')
    fill(db, "ams-003", range(2, 3))
    drain(f)
    assert [o["result"] for o in observations(sta, "ams-003 pm25 PMS5003")] == [7.0]
    loc = sta.all("Locations")[-1]
    assert by_name(sta, "Things")["ams-003"]["Locations"] == [loc["@iot.id"]]
    assert loc["location"]["coordinates"] == [4.9041, 52.3676]
    # ...and a replay sends what was refused, and nothing twice
    f.reset(0)
    drain(f)
    assert [o["result"] for o in observations(sta, "ams-003 pm25 PMS5003")] == [5.0, 6.0, 7.0]
    assert [o["result"] for o in observations(sta, "ams-001 pm25 PMS5003")] == [5.0, 6.0]
    f.close()


def test_no_fleet_file_at_all_names_the_missing_setting_and_a_broken_one_holds_new_nodes_back(tmp_path, sta):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    f = forwarder(db, target(sta.url))
    drain(f)
    assert dead_letters(db)[0][4].endswith("add the node to a fleet file (none is configured), then replay")
    f.close()
    broken = tmp_path / "fleet.toml"
    broken.write_text('[nodes."ams-009"]\nlat = 152.4\nlon = "4.9"\n')
    fill(db, "ams-009", range(1))
    f = forwarder(db, target(sta.url, broken), rng=lambda: 1.0)
    before = f.cursor()
    assert f.step() == 0.5  # not sent, not dead-lettered: retried until the file is fixed
    assert f.cursor() == before and "ams-009" not in by_name(sta, "Things")
    assert f.status()["last_error"] == (
        f'fleet file {broken}: nodes."ams-009".lat: must be a number from -90 to 90, got 152.4 (a number); '
        'nodes."ams-009".lon: must be a number from -180 to 180, got "4.9" (a string)')
    broken.write_text('[nodes."ams-009"]\nlat = 52.4\nlon = 4.9\n')
    drain(f)
    assert len(observations(sta, "ams-009 pm25 PMS5003")) == 1
    f.close()


def test_the_server_down_is_retried_with_retry_after_and_backoff_then_all_arrive_once(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(4))
    sta.outage = [(503, {"Retry-After": "7"}), (503, {})]
    f = forwarder(db, target(sta.url, fleet, timeout=2.0), batch=4, rng=lambda: 1.0)
    assert f.step() == 7.0  # the service's Retry-After
    assert f.step() == 1.0  # then the jittered backoff: 0.5 s doubling
    port, state = sta.port, sta.state
    sta.stop()  # down altogether
    assert f.step() == 2.0
    assert "ConnectionRefusedError" in f.status()["last_error"]
    assert f.cursor() == 0
    again = SensorThingsServer(port=port, state=state)  # back, with what it had
    try:
        drain(f)
        assert [o["result"] for o in observations(again, "ams-001 pm25 PMS5003")] == [5.0, 6.0, 7.0, 8.0]
        st = f.status()
        assert (st["retries"], st["sent"], st["dead_letters"], st["up"], st["last_error"]) == (3, 8, 0, True, None)
    finally:
        f.close()
        again.stop()


def test_replay_after_an_uncertain_failure_or_a_cursor_reset_adds_no_duplicates(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(3))
    f = forwarder(db, target(sta.url, fleet), rng=lambda: 1.0)
    sta.drop_answers = 1  # the service creates the Observations, the answer never arrives
    assert f.step() == 0.5
    assert "RemoteDisconnected" in f.status()["last_error"] and f.cursor() == 0
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 3  # they are there
    posts = len(sta.requests("POST", "/CreateObservations"))
    drain(f)
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 3 and len(observations(sta, "ams-001 temp BME280")) == 3
    assert len(sta.requests("POST", "/CreateObservations")) == posts  # everything was there: nothing to send
    lookups = sta.requests("GET", "/Datastreams(")
    assert len(lookups) == 2 and lookups[0][2]["$filter"] == (
        f"resultTime ge {iso(T0 + 60)[:-5]}Z and resultTime le {iso(T0 + 180)[:-5]}Z")
    assert f.status()["sent"] == 6 and f.cursor() == 3
    # part new, part replayed: only the new part goes
    fill(db, "ams-001", range(3, 5))
    f.reset(2)
    drain(f)
    assert [o["result"] for o in observations(sta, "ams-001 pm25 PMS5003")] == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert [len(row) for _, _, _, body in sta.requests("POST", "/CreateObservations")[-1:]
            for item in body for row in [item["dataArray"]]] == [2, 2]
    # the operator replays everything: nothing is added
    f.reset(0)
    drain(f)
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 5 and len(sta.all("Observations")) == 10
    f.close()


def test_basic_and_bearer_auth_and_a_refused_login_is_retried(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    (tmp_path / "pw").write_text("s3cret\n")
    sta.auth = "Basic " + base64.b64encode(b"lab:s3cret").decode()
    f = forwarder(db, target(sta.url, fleet, username="lab", password_file=tmp_path / "nope"), rng=lambda: 1.0)
    assert f.step() == 0.5 and "cannot read the secret file" in f.status()["last_error"]
    f.close()
    (tmp_path / "nope").write_text("wrong\n")
    f = forwarder(db, target(sta.url, fleet, username="lab", password_file=tmp_path / "nope"), rng=lambda: 1.0)
    assert f.step() == 0.5  # 401 is the target's configuration, not the data's fault: retried
    assert f.status()["last_error"].startswith("GET /Things: HTTP 401") and dead_letters(db) == []
    f.close()
    f = forwarder(db, target(sta.url, fleet, username="lab", password_file=tmp_path / "pw"))
    drain(f)
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 1
    f.close()
    (tmp_path / "token").write_text("t0ken\n")
    sta.auth = "Bearer t0ken"
    fill(db, "ams-001", range(1, 2))
    f = forwarder(db, target(sta.url, fleet, token_file=tmp_path / "token"))
    drain(f)
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 2
    f.close()


def test_an_unknown_sensor_model_and_a_refused_batch_go_to_the_dead_letters(tmp_path, sta, fleet):
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1), sensors={"pm": "sps30", "climate": "bme280"})
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    assert dead_letters(db) == [(1, 1, 1, None, "pm25: sensor model 'sps30' is unknown to this gateway "
                                 "(known: pms5003, pms7003, sds011, bme280, ics43434, inmp441)")]
    assert len(observations(sta, "ams-001 temp BME280")) == 1
    fill(db, "ams-001", range(1, 3), sensors={"pm": "sps30", "climate": "bme280"})
    sta.outage = [(400, {})]  # the service refuses the whole request
    assert f.step() == 0.0
    assert dead_letters(db)[1:] == [(2, 3, 4, 400, 'POST /CreateObservations: HTTP 400: '
                                     '{"code": 400, "type": "error", "message": "unavailable"}')]
    assert f.status()["dead_letters"] == 5 and f.cursor() == 3
    f.close()


def test_lookups_follow_next_links_and_forwarders_start_the_target_from_its_config(tmp_path, fleet):
    server = SensorThingsServer(max_top=2)  # pages of two entities
    try:
        for i in range(5):  # other people's Things of the same name
            server.create("Things", {"name": "ams-001", "description": "not ours", "properties": {"source": f"x{i}"}})
        db = tmp_path / "g.db"
        fill(db, "ams-001", range(2))
        fw = Forwarders.start(db, [target(server.url, fleet)], poll_s=0.05)
        try:
            wait_for(lambda: fw.status()[0]["queue_rows"] == 0, 10, "the target to drain")
        finally:
            fw.stop()
        ours = [t for t in server.all("Things") if t["properties"].get("source") == "meetkit"]
        assert len(ours) == 1 and len(server.all("Things")) == 6
        pages = [q for _, p, q, _ in server.requests("GET", "/Things") if p == "/Things"]
        assert [q.get("$skip") for q in pages] == [None, "2", "4"]
        assert len(observations(server, "ams-001 pm25 PMS5003")) == 2
    finally:
        server.stop()


# -- the contract server is strict: what a real service rejects, it rejects ---------------------------------


def call(server: SensorThingsServer, method: str, path: str, body: Any = None, raw: bytes | None = None,
         ctype: str = "application/json") -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, ROOT + path, body=data, headers={"Content-Type": ctype} if data is not None else {})
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    return resp.status, json.loads(text) if text else None


def test_the_contract_server_rejects_what_the_api_rejects(sta):
    thing = {"name": "t", "description": "d"}
    assert call(sta, "POST", "/Things", raw=b"{not json")[0] == 400
    assert call(sta, "POST", "/Things", thing, ctype="text/plain")[0] == 400
    assert call(sta, "POST", "/Things", {"name": "t"}) == (
        400, {"code": 400, "type": "error", "message": "Missing required property 'description'"})
    assert call(sta, "POST", "/Things", {**thing, "colour": "red"})[0] == 400
    assert call(sta, "POST", "/Things", {**thing, "properties": "x"})[0] == 400
    status, t = call(sta, "POST", "/Things", thing)
    assert status == 201 and t["@iot.id"] == 1
    loc = {"name": "l", "description": "d", "encodingType": "application/geo+json",
           "location": {"type": "Point", "coordinates": [52.37, 4.89]}}
    assert call(sta, "POST", "/Locations", {**loc, "encodingType": "application/json"})[0] == 400
    assert call(sta, "POST", "/Locations", {**loc, "location": {"type": "Point", "coordinates": [4.89, 152.0]}})[0] == 400
    sensor = {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "http://x"}
    assert call(sta, "POST", "/Sensors", {**sensor, "encodingType": "text/plain"})[0] == 400
    assert call(sta, "POST", "/Sensors", {k: v for k, v in sensor.items() if k != "metadata"})[0] == 400
    s_id = call(sta, "POST", "/Sensors", sensor)[1]["@iot.id"]
    op = call(sta, "POST", "/ObservedProperties", {"name": "o", "definition": "http://x", "description": "d"})[1]
    ds = {"name": "d", "description": "d", "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
          "OM_Measurement", "unitOfMeasurement": {"name": "n", "symbol": "s", "definition": "http://u"},
          "Thing": {"@iot.id": 1}, "Sensor": {"@iot.id": s_id}, "ObservedProperty": {"@iot.id": op["@iot.id"]}}
    assert call(sta, "POST", "/Datastreams", {k: v for k, v in ds.items() if k != "unitOfMeasurement"})[0] == 400
    assert call(sta, "POST", "/Datastreams", {**ds, "unitOfMeasurement": {"name": "n"}})[0] == 400
    assert call(sta, "POST", "/Datastreams", {**ds, "Thing": {"@iot.id": 99}})[1]["message"] == (
        "No such entity 'Things' with id 99")
    assert call(sta, "POST", "/Datastreams", {**ds, "observationType": "OM_Measurement"})[0] == 400
    d_id = call(sta, "POST", "/Datastreams", ds)[1]["@iot.id"]
    assert call(sta, "GET", "/Things?$filter=name%20eq%20t")[0] == 400  # an unquoted string
    assert call(sta, "GET", "/Things?$filter=name%20eq%20't'&$select=colour")[0] == 400
    assert call(sta, "GET", "/Things?$expand=Locations")[0] == 400
    assert call(sta, "GET", "/Things?$filter=name%20eq%20't'&$select=id") == (200, {"value": [{"@iot.id": 1}]})
    # CreateObservations: 400 for a malformed request, else one entry per row
    assert call(sta, "POST", "/CreateObservations", {"Datastream": {"@iot.id": d_id}})[0] == 400
    assert call(sta, "POST", "/CreateObservations", [{"Datastream": {"@iot.id": d_id}, "components": ["result"],
                                                      "dataArray": [[1, 2]]}])[0] == 400
    rows = [["2026-11-24T08:00:00Z/2026-11-24T08:01:00Z", 5.2], ["2026-11-24T08:01:00Z", None],
            ["yesterday", 5.0], ["2026-11-24T08:02:00Z", "high"]]
    status, answers = call(sta, "POST", "/CreateObservations", [
        {"Datastream": {"@iot.id": d_id}, "components": ["phenomenonTime", "result"], "dataArray": rows},
        {"Datastream": {"@iot.id": 99}, "components": ["result"], "dataArray": [[1.0]]}])
    assert status == 201 and answers == [
        "error No FeatureOfInterest provided, and none can be generated.",  # the Thing has no Location
        "error Missing required property 'result'",
        "error phenomenonTime could not be parsed as time instant or time interval.",
        "error result 'high' is not a number (OM_Measurement)",
        "error No such entity 'Datastream' with id 99"]
    assert call(sta, "POST", "/Things(1)/Locations", loc)[0] == 201
    status, answers = call(sta, "POST", "/CreateObservations", [
        {"Datastream": {"@iot.id": d_id}, "components": ["phenomenonTime", "result", "parameters"],
         "dataArray": [[rows[0][0], 5.2, {"n": 3}], [rows[0][0], 5.2, [3]]]}])
    assert answers == [f"{sta.url}/Observations({answers[0].rsplit('(')[1][:-1]})", "error parameters has to be a map."]
