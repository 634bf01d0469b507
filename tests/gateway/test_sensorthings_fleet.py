"""The fleet register as the SensorThings target uses it: the Things carry what the register says
of each node, a moved node gets a new Location (its Thing's HistoricalLocations keep the old one),
and each change is sent once. Against the STRICT contract server of tools/dev/sensorthings_server.py
(no real SensorThings server can be installed here), through the real forwarder, store and register
editor (tools/fleetfile.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
from pathlib import Path

from meetkit_gateway.store.sensorthings import TABLE
from meetkit_tools import fleetfile

from meetkit_tools.dev.sensorthings_server import SensorThingsServer
from .test_forward_sensorthings import by_name, call, drain, fill, forwarder, observations, target

REGISTER = '''
# the canal ring
[nodes."ams-001"]
board = "esp32-s3-devkitc-1"
name = "Dam, lamp post 12"
lat = 52.3731
lon = 4.8922
height_m = 3.5
installed = 2026-11-24
serials = { pm = "PMS5003-2311-0412", mic = "ICS-7781", climate = "BME-0042" }
noise_offset_db = -1.3
calibrated = 2026-11-20
notes = "key with the caretaker"
chip = "240ac4123456"
fw = "0.2.0"
provisioned = 2026-11-24T10:12:00Z
'''


def register(tmp_path: Path, text: str = REGISTER) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def edit(path: Path, node: str, fields: dict) -> None:
    """As an operator's `meetkit fleet set` does; a later mtime even within the clock's resolution."""
    before = path.stat().st_mtime_ns
    fleetfile.upsert(path, node, fields)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before, before + 1_000_000))


def requests(server: SensorThingsServer, since: int = 0) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _, _ in server.state.requests[since:]]


def history(server: SensorThingsServer, thing: int) -> list[list[int]]:
    """The Locations of the Thing's HistoricalLocations, oldest first."""
    return [h["Locations"] for h in sorted(server.all("HistoricalLocations"), key=lambda h: h["@iot.id"])
            if h["Thing"] == thing]


def feature(server: SensorThingsServer, observation: dict) -> list[float]:
    return {f["@iot.id"]: f for f in server.all("FeaturesOfInterest")}[observation["FeatureOfInterest"]][
        "feature"]["coordinates"]


def test_the_thing_carries_the_register_and_a_change_is_sent_once(tmp_path, sta):
    fleet = register(tmp_path)
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(3))
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    thing = by_name(sta, "Things")["ams-001"]
    assert thing["description"] == "meetkit street sensor node ams-001 at Dam, lamp post 12"
    assert thing["properties"] == {
        "source": "meetkit", "node": "ams-001",
        "board": "esp32-s3-devkitc-1", "fw": "0.2.0",  # the register's, not the records' esp32-devkitc 0.1.0
        "name": "Dam, lamp post 12", "installed": "2026-11-24",
        "serials": {"pm": "PMS5003-2311-0412", "mic": "ICS-7781", "climate": "BME-0042"},
        "noise_offset_db": -1.3, "calibrated": "2026-11-20"}
    sent = json.dumps([body for _, _, _, body in sta.state.requests])
    assert "caretaker" not in sent and "240ac4123456" not in sent  # notes and chip stay home
    assert history(sta, thing["@iot.id"]) == [thing["Locations"]]  # made with its Location: one history entry
    # the PM sensor is replaced and the microphone calibrated again
    edit(fleet, "ams-001", {"serials": {"pm": "PMS5003-2402-0007"}, "noise_offset_db": -0.8,
                            "calibrated": dt.date(2026, 12, 1)})
    before = len(sta.state.requests)
    for seq in range(3, 6):  # three batches
        fill(db, "ams-001", range(seq, seq + 1))
        drain(f)
    path = f"/Things({thing['@iot.id']})"
    assert [r for r in requests(sta, before) if r[0] != "POST"] == [("PATCH", path)]  # once, not per batch
    assert [p for m, p in requests(sta, before) if m == "POST"] == ["/CreateObservations"] * 3
    props = by_name(sta, "Things")["ams-001"]["properties"]
    assert (props["serials"]["pm"], props["serials"]["mic"], props["noise_offset_db"], props["calibrated"]) == (
        "PMS5003-2402-0007", "ICS-7781", -0.8, "2026-12-01")
    assert len(sta.all("Locations")) == 1 and len(sta.all("HistoricalLocations")) == 1  # it did not move
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 6
    f.close()
    # a restart knows what it sent (the store's sensorthings_entities): no request but the readings
    fill(db, "ams-001", range(6, 7))
    before = len(sta.state.requests)
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    assert requests(sta, before) == [("POST", "/CreateObservations")]
    f.close()


def test_a_moved_node_gets_a_new_location_and_its_history_keeps_the_old_one(tmp_path, sta):
    fleet = register(tmp_path)
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(2))
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    thing_id = by_name(sta, "Things")["ams-001"]["@iot.id"]
    (first,) = by_name(sta, "Things")["ams-001"]["Locations"]
    edit(fleet, "ams-001", {"lat": 52.3668, "lon": 4.8897})  # to the Spui
    before = len(sta.state.requests)
    for seq in range(2, 4):
        fill(db, "ams-001", range(seq, seq + 1))
        drain(f)
    assert [p for m, p in requests(sta, before) if m != "GET" and p != "/CreateObservations"] == [
        f"/Things({thing_id})/Locations"]  # one new Location, for two batches
    (second,) = by_name(sta, "Things")["ams-001"]["Locations"]
    locs = {e["@iot.id"]: e for e in sta.all("Locations")}
    assert second != first and locs[second]["location"]["coordinates"] == [4.8897, 52.3668]
    assert locs[first]["location"]["coordinates"] == [4.8922, 52.3731]  # the old place is kept...
    assert history(sta, thing_id) == [[first], [second]]  # ...in the Thing's history
    obs = observations(sta, "ams-001 pm25 PMS5003")
    assert [feature(sta, o) for o in obs] == [[4.8922, 52.3731]] * 2 + [[4.8897, 52.3668]] * 2
    # a new name only: the same Location renamed (same place, same FeatureOfInterest), no history entry
    edit(fleet, "ams-001", {"name": "Spui, lamp post 3"})
    before = len(sta.state.requests)
    fill(db, "ams-001", range(4, 5))
    drain(f)
    assert sorted(p for m, p in requests(sta, before) if m == "PATCH") == [f"/Locations({second})",
                                                                          f"/Things({thing_id})"]
    assert by_name(sta, "Locations")["Spui, lamp post 3"]["@iot.id"] == second
    assert by_name(sta, "Things")["ams-001"]["description"].endswith("at Spui, lamp post 3")
    assert history(sta, thing_id) == [[first], [second]]
    assert feature(sta, observations(sta, "ams-001 pm25 PMS5003")[-1]) == [4.8897, 52.3668]
    # mounted higher on the same post: a new place too
    edit(fleet, "ams-001", {"height_m": 4.5})
    fill(db, "ams-001", range(5, 6))
    drain(f)
    (third,) = by_name(sta, "Things")["ams-001"]["Locations"]
    assert third not in (first, second) and history(sta, thing_id) == [[first], [second], [third]]
    assert {e["@iot.id"]: e for e in sta.all("Locations")}[third]["properties"]["height_m"] == 4.5
    # taken out of the register's positions: the Thing stays where it was last put, the readings go
    edit(fleet, "ams-001", {"lat": None, "lon": None, "height_m": None})
    fill(db, "ams-001", range(6, 7))
    drain(f)
    assert by_name(sta, "Things")["ams-001"]["Locations"] == [third]
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 7 and f.status()["dead_letters"] == 0
    f.close()


def test_a_thing_made_elsewhere_or_cached_by_an_older_gateway_is_read_back_once(tmp_path, sta):
    fleet = register(tmp_path)
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    f.close()
    thing_id = by_name(sta, "Things")["ams-001"]["@iot.id"]
    # a second gateway with its own database and a register that says more: it finds the Thing,
    # reads what it has, and sends what differs, once
    edit(fleet, "ams-001", {"serials": {"climate": "BME-0099"}})
    other = tmp_path / "other.db"
    fill(other, "ams-001", range(3))
    before = len(sta.state.requests)
    g = forwarder(other, target(sta.url, fleet))
    drain(g)
    assert sorted((m, p) for m, p in requests(sta, before) if not p.endswith("/Datastreams")
                  and p.startswith(f"/Things({thing_id})")) == [
        ("GET", f"/Things({thing_id})"), ("GET", f"/Things({thing_id})/Locations"), ("PATCH", f"/Things({thing_id})")]
    assert by_name(sta, "Things")["ams-001"]["properties"]["serials"]["climate"] == "BME-0099"
    assert len(sta.all("Locations")) == 1  # the same place: no new Location
    g.close()
    # a store whose table was made before the register (no `sent` column): the column is added,
    # the Thing read back once, and nothing sent that the service has already
    old = tmp_path / "old.db"
    fill(old, "ams-001", range(3, 4))
    with sqlite3.connect(old) as c:
        c.execute(TABLE.replace("        sent TEXT,\n", ""))
        c.execute("INSERT INTO sensorthings_entities VALUES (?, 'Thing', 'ams-001', ?, NULL, 1)",
                  (sta.url, json.dumps(thing_id)))
    before = len(sta.state.requests)
    h = forwarder(old, target(sta.url, fleet))
    drain(h)
    assert sorted((m, p) for m, p in requests(sta, before) if not p.endswith("/Datastreams")
                  and p.startswith(f"/Things({thing_id})")) == [
        ("GET", f"/Things({thing_id})"), ("GET", f"/Things({thing_id})/Locations")]
    assert not [p for m, p in requests(sta, before) if m == "PATCH"]
    h.close()
    with sqlite3.connect(old) as c:
        (sent,) = c.execute("SELECT sent FROM sensorthings_entities WHERE kind = 'Thing'").fetchone()
    assert json.loads(sent)["properties"]["serials"]["climate"] == "BME-0099"


def test_a_broken_register_holds_back_only_batches_that_need_it(tmp_path, sta):
    fleet = register(tmp_path)
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    f = forwarder(db, target(sta.url, fleet), rng=lambda: 1.0)
    drain(f)
    fleet.write_text(REGISTER + '\n[nodes."ams-003"]\nlat = 152.4\nlon = 4.9\n')
    os.utime(fleet, ns=(1, 4_000_000_000_000_000_000))
    fill(db, "ams-001", range(1, 2))
    drain(f)  # described already: its readings go on as last described
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 2
    fill(db, "ams-003", range(1))  # a new node needs the register: retried, nothing lost
    before = f.cursor()
    assert f.step() == 0.5 and f.cursor() == before and "ams-003" not in by_name(sta, "Things")
    assert f.status()["last_error"] == (
        f'fleet file {fleet}: nodes."ams-003".lat: must be a number from -90 to 90, got 152.4 (a number)')
    edit_text = fleet.read_text().replace("lat = 152.4", "lat = 52.4")
    fleet.write_text(edit_text)
    os.utime(fleet, ns=(1, 5_000_000_000_000_000_000))
    drain(f)
    assert len(observations(sta, "ams-003 pm25 PMS5003")) == 1 and f.status()["dead_letters"] == 0
    f.close()


def test_a_refused_update_is_logged_and_the_readings_go_on(tmp_path, sta, caplog):
    fleet = register(tmp_path)
    db = tmp_path / "g.db"
    fill(db, "ams-001", range(1))
    f = forwarder(db, target(sta.url, fleet))
    drain(f)
    edit(fleet, "ams-001", {"name": "Dam 12"})
    fill(db, "ams-001", range(1, 2))
    sta.outage = [(400, {})]  # the service refuses the PATCH of the Thing for good
    drain(f)
    assert "refused to update /Things(" in caplog.text and "Dam 12" not in by_name(sta, "Things")["ams-001"][
        "description"]
    assert len(observations(sta, "ams-001 pm25 PMS5003")) == 2 and f.status()["dead_letters"] == 0
    before = len(sta.state.requests)
    fill(db, "ams-001", range(2, 3))
    drain(f)
    assert requests(sta, before) == [("POST", "/CreateObservations")]  # not tried at every batch
    f.close()


# -- the contract server's PATCH and HistoricalLocations are as strict as the rest ---------------------------


def test_the_contract_server_patches_and_keeps_history_as_the_api_does(sta):
    loc = {"name": "l", "description": "d", "encodingType": "application/geo+json",
           "location": {"type": "Point", "coordinates": [4.89, 52.37]}}
    status, thing = call(sta, "POST", "/Things", {"name": "t", "description": "d", "Locations": [loc]})
    t = thing["@iot.id"]
    (first,) = sta.all("Things")[0]["Locations"]
    assert history(sta, t) == [[first]]  # made with a Location: its first history entry
    assert call(sta, "PATCH", f"/Things({t})", {"properties": {"a": 1}}) == (200, None)
    assert call(sta, "PATCH", f"/Things({t})", {"properties": {"b": 2}}) == (200, None)
    assert call(sta, "GET", f"/Things({t})?$select=id,properties") == (200, {"@iot.id": t, "properties": {"b": 2}})
    assert call(sta, "GET", f"/Things({t})?$top=1")[0] == 400
    assert call(sta, "GET", f"/Things({t})?$select=colour")[0] == 400
    assert call(sta, "PATCH", f"/Things({t})", {"colour": "red"})[0] == 400
    assert call(sta, "PATCH", f"/Things({t})", {"name": None})[1]["message"] == (
        "property 'name' is mandatory and cannot be null")
    assert call(sta, "PATCH", f"/Things({t})", {"@iot.id": 7})[0] == 400
    assert call(sta, "PATCH", f"/Things({t})", {"properties": "x"})[0] == 400
    assert call(sta, "PATCH", f"/Things({t})", {"name": "u"}, ctype="text/plain")[0] == 400
    assert call(sta, "PATCH", f"/Things({t})", raw=b"{no")[0] == 400
    assert call(sta, "PATCH", f"/Things({t})", {"Locations": [{"@iot.id": 999}]})[0] == 400
    assert call(sta, "PATCH", "/Things(999)", {"name": "u"})[0] == 404
    assert call(sta, "PATCH", "/Things", {"name": "u"})[0] == 400
    assert call(sta, "PATCH", f"/Locations({first})", {"location": {"type": "Point", "coordinates": [4.89, 152.0]}}
                )[0] == 400
    assert call(sta, "PATCH", f"/Locations({first})", {"encodingType": "application/json"})[0] == 400
    assert call(sta, "PATCH", f"/Locations({first})", {"name": "renamed"}) == (200, None)
    assert sta.all("Locations")[0]["name"] == "renamed" and history(sta, t) == [[first]]
    # a new Location under the Thing replaces its current one and is recorded; so is a PATCH of its Locations
    status, second = call(sta, "POST", f"/Things({t})/Locations", loc)
    assert status == 201 and history(sta, t) == [[first], [second["@iot.id"]]]
    assert call(sta, "PATCH", f"/Things({t})", {"Locations": [{"@iot.id": first}]}) == (200, None)
    assert history(sta, t) == [[first], [second["@iot.id"]], [first]]
    status, page = call(sta, "GET", f"/Things({t})/HistoricalLocations?$select=time")
    assert status == 200 and len(page["value"]) == 3 and page["value"][0]["time"].endswith("Z")
    assert call(sta, "POST", "/HistoricalLocations", {"time": "yesterday", "Thing": {"@iot.id": t}})[0] == 400
    assert call(sta, "POST", "/HistoricalLocations", {"time": "2026-11-24T10:00:00Z"})[0] == 400  # no Thing
