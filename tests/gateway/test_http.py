"""The status server (gateway/http.py) over a store filled through the store's own API."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from meetkit_gateway import payload
from meetkit_gateway.http import StatusServer
from meetkit_gateway.store import Store
from tests.metrics import parse_exposition, promtool, sample

from .conftest import batch, encode

NOW = int(time.time()) // 60 * 60


def add(store: Store, node: str, boot: int, seqs: list[int], ts0: int | None, dropped: int | None = None,
        received_at: float | None = None) -> None:
    doc = batch(node=node, boot=boot, seqs=seqs, ts0=ts0)
    if dropped is not None:
        doc["dropped"] = dropped
    store.add_batch(payload.parse_batch(encode(doc), node), received_at=received_at or time.time())


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.db"
    with Store(path) as store:
        t0 = NOW - 3 * 3600
        add(store, "ams-001", 3, [0, 1, 2, 5, 6], t0)   # 3, 4 missing
        add(store, "ams-001", 4, [10, 13], t0 + 7200)   # 11, 12 missing: 4 in all
        add(store, "ams-002", 1, list(range(5)), t0, dropped=7)
        add(store, "old-01", 1, [0], NOW - 48 * 3600, received_at=NOW - 47 * 3600)  # outside 24 h
        store.set_status(payload.Status("ams-001", True, boot=4, fw="0.2.0", up=600, rssi=-67))
        store.set_status(payload.Status('we"ird\\node', False))
        store.add_dead_letter("meetkit/x/up", b"{", "json", "not JSON")
        store.bump("dropped.age", 12)
        store.bump("something.new", 2)
        store.add_alarm(time.time(), "disk_full", True, "no space left")
    return path


TARGETS = [
    {"name": "city-influx", "kind": "influxdb", "queue_rows": 1234, "oldest_age_s": 81.5,
     "last_success": 1795510800.25, "retries": 17, "dead_letters": 2, "sent": 1000, "up": True,
     "last_error": None},
    {"name": 'odd "name"\nline', "kind": "mqtt", "queue_rows": 0, "oldest_age_s": None, "last_success": None,
     "retries": 0, "dead_letters": 0, "up": False, "last_error": "connection refused"},
]


@pytest.fixture
def server(db: Path) -> Iterator[StatusServer]:
    with StatusServer(db, "127.0.0.1", 0, targets=lambda: TARGETS) as s:
        yield s


def get(server: StatusServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(server.url + path, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


# -- the tests -----------------------------------------------------------------------------------------


def test_healthz_is_ok_when_the_store_answers(server: StatusServer) -> None:
    status, ctype, body = get(server, "/healthz")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "ok" and doc["nodes"] == 4 and len(doc["db_id"]) == 16
    assert [a["code"] for a in doc["alarms"]] == ["disk_full"]


def test_healthz_is_503_without_a_store(tmp_path: Path) -> None:
    with StatusServer(tmp_path / "nothing.db", "127.0.0.1", 0) as s:
        status, _, body = get(s, "/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "error"
    assert not (tmp_path / "nothing.db").exists(), "read-only: must not create the store"


def test_metrics_are_valid_exposition_with_the_right_values(server: StatusServer) -> None:
    status, ctype, body = get(server, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    fams = parse_exposition(body.decode())
    assert sample(fams, "meetkit_store_up") == 1
    assert sample(fams, "meetkit_records_stored_total") == 5 + 2 + 5 + 1
    assert sample(fams, "meetkit_batches_total") == 4
    assert sample(fams, "meetkit_messages_rejected_total", code="json") == 1
    assert sample(fams, "meetkit_store_dropped_total", reason="age") == 12
    assert sample(fams, "meetkit_store_counter_total", name="something.new") == 2
    assert sample(fams, "meetkit_alarm_active", code="disk_full") == 1
    assert sample(fams, "meetkit_readings") == 13 * 2
    assert sample(fams, "meetkit_node_sequence_gaps", node="ams-001") == 4
    assert sample(fams, "meetkit_node_sequence_gaps", node="ams-002") == 0
    assert sample(fams, "meetkit_node_records", node="ams-001") == 7
    assert sample(fams, "meetkit_node_boot", node="ams-001") == 4
    assert sample(fams, "meetkit_node_boot", node="ams-002") == 1  # no status: from its records
    assert sample(fams, "meetkit_node_rssi_dbm", node="ams-001") == -67
    assert sample(fams, "meetkit_node_spool_dropped_total", node="ams-002") == 7
    assert abs(sample(fams, "meetkit_node_last_seen_timestamp_seconds", node="ams-001") - time.time()) < 60
    assert sample(fams, "meetkit_node_online", node='we"ird\\node') == 0  # escaped and read back
    assert sample(fams, "meetkit_node_sequence_gaps", node='we"ird\\node') == 0
    t = {"target": "city-influx", "kind": "influxdb"}
    assert sample(fams, "meetkit_forward_queue_rows", **t) == 1234
    assert sample(fams, "meetkit_forward_oldest_age_seconds", **t) == 81.5
    assert sample(fams, "meetkit_forward_last_success_timestamp_seconds", **t) == 1795510800.25
    assert sample(fams, "meetkit_forward_retries_total", **t) == 17
    assert sample(fams, "meetkit_forward_dead_letters_total", **t) == 2
    assert sample(fams, "meetkit_forward_up", **t) == 1
    odd = {"target": 'odd "name"\nline', "kind": "mqtt"}
    assert sample(fams, "meetkit_forward_up", **odd) == 0
    assert frozenset(odd.items()) not in fams["meetkit_forward_oldest_age_seconds"]["samples"]  # None: no sample
    assert sample(fams, "meetkit_forward_status_error") == 0
    for f in fams.values():
        assert f["help"] and f["type"]


ODD = ['a"b', "back\\slash", "new\nline", "lit\\n", 'all\\"of\n"it\\', "zürich-01", "{x=\"1\"}"]


def test_odd_names_are_escaped_and_read_back_exactly(tmp_path: Path) -> None:
    """Node ids, target names and counter names with quotes, backslashes, newlines (and a literal
    backslash-n, which is no newline) come back as they were, each series on its own line."""
    path = tmp_path / "odd.db"
    with Store(path) as store:
        for i, node in enumerate(ODD):
            store.set_status(payload.Status(node, True, boot=i))
            store.bump("rejected." + node, i + 1)
    targets = [{"name": name, "kind": name[::-1], "queue_rows": i} for i, name in enumerate(ODD)]
    with StatusServer(path, "127.0.0.1", 0, targets=lambda: targets) as s:
        status, _, body = get(s, "/metrics")
    assert status == 200
    text = body.decode()
    fams = parse_exposition(text)
    for i, name in enumerate(ODD):
        assert sample(fams, "meetkit_node_boot", node=name) == i
        assert sample(fams, "meetkit_messages_rejected_total", code=name) == i + 1
        assert sample(fams, "meetkit_forward_queue_rows", target=name, kind=name[::-1]) == i
    assert len(fams["meetkit_node_boot"]["samples"]) == len(ODD)
    assert len([line for line in text.splitlines() if line.startswith("meetkit_node_boot{")]) == len(ODD)


def test_metrics_pass_promtool_check_metrics(server: StatusServer) -> None:
    """The reference parser and linter takes /metrics; it does refuse a broken exposition."""
    text = get(server, "/metrics")[2].decode()
    assert "meetkit_http_requests_total" in text and 'odd \\"name\\"\\nline' in text  # all of it, escaped
    code, said = promtool(text)
    assert (code, said) == (3, {"meetkit_store_counter_total metric name should not include type 'counter'"})
    # the check can fail: a raw quote in a label value, a family declared twice
    broken = text.replace('{node="ams-001"}', '{node="ams"001"}', 1)
    assert broken != text and promtool(broken)[0] == 1
    twice = text + "# TYPE meetkit_records gauge\nmeetkit_records 1\n"
    assert promtool(twice)[0] == 1


def test_a_failing_targets_callable_does_not_break_metrics(db: Path) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("forwarder gone")

    with StatusServer(db, "127.0.0.1", 0, targets=broken) as s:
        status, _, body = get(s, "/metrics")
        assert status == 200
        assert sample(parse_exposition(body.decode()), "meetkit_forward_status_error") == 1
        doc = json.loads(get(s, "/api/nodes")[2])
        assert doc["targets"] == [] and "forwarder gone" in doc["targets_error"]


def test_gaps_count_missing_records_per_boot_only(tmp_path: Path) -> None:
    from meetkit_gateway.http import gaps

    with Store(tmp_path / "g.db") as store:
        add(store, "n", 1, [0, 1, 2, 3], NOW - 3600)
        add(store, "n", 2, [5, 9], NOW - 1800)      # a new boot starting at 5 is no gap; 6..8 are
        add(store, "n", 3, [0], NOW - 600)
        add(store, "m", 1, [0, 2, 4, 6], NOW - 3600)
        add(store, "m", 1, [2, 4], NOW - 3600)      # duplicates change nothing
        assert gaps(store.boots()) == {"n": 3, "m": 3}


def test_series_gives_aligned_columns_of_the_last_hours(server: StatusServer) -> None:
    status, ctype, body = get(server, "/api/series?node=ams-001&hours=24")
    assert status == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["node"] == "ams-001" and doc["hours"] == 24
    t0 = NOW - 3 * 3600
    assert doc["start"] == [t0 + s * 60 for s in (0, 1, 2, 5, 6)] + [t0 + 7200 + s * 60 for s in (10, 13)]
    for q in ("pm25", "pm10", "LAeq", "LA10", "LA90", "temp", "rh", "press"):
        assert len(doc[q]) == len(doc["start"]), q
    assert doc["pm25"][:3] == [5.0, 6.0, 7.0]
    assert doc["temp"][0] == 12.5
    assert doc["pm10"] == [None] * 7  # the batches carry no PM10
    assert doc["units"]["pm25"] == "ug/m3"
    assert get(server, "/api/series?node=ams-001&hours=0")[0] == 400
    assert get(server, "/api/series?node=ams-001&hours=x")[0] == 400
    assert get(server, "/api/series")[0] == 400


def test_nodes_api_has_the_fleet_and_targets(server: StatusServer) -> None:
    doc = json.loads(get(server, "/api/nodes")[2])
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert set(nodes) == {"ams-001", "ams-002", "old-01", 'we"ird\\node'}
    a = nodes["ams-001"]
    assert (a["rssi"], a["boot"], a["fw"], a["gaps"], a["records"], a["online"]) == (-67, 4, "0.2.0", 4, 7, True)
    assert a["flags"] == []
    assert nodes["ams-002"]["dropped"] == 7
    assert nodes['we"ird\\node']["flags"] == ["offline"]
    assert nodes["old-01"]["flags"] == ["stale"]
    assert [t["name"] for t in doc["targets"]] == ["city-influx", 'odd "name"\nline']
    assert doc["counts"]["dead_letters"] == 1
    assert json.loads(get(server, "/api/targets")[2])["targets"][0]["queue_rows"] == 1234


def test_the_page_and_its_vendored_library_are_served(server: StatusServer) -> None:
    status, ctype, body = get(server, "/")
    assert status == 200 and ctype.startswith("text/html")
    html = body.decode()
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "vendor/uPlot.iife.min.js" in srcs and "vendor/uPlot.min.css" in srcs
    assert not [s for s in srcs if s.startswith(("http:", "https:", "//"))], "no CDN: the Pi is offline"
    for src in ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "app.js", "style.css"):
        status, ctype, body = get(server, "/" + src)
        assert status == 200 and body, src
    assert get(server, "/app.js")[1].startswith("text/javascript")
    assert get(server, "/../http.py")[0] == 404  # gateway/http.py, beside static/
    assert get(server, "/%2e%2e/http.py")[0] == 404
    assert get(server, "/nothing")[0] == 404


def test_stop_frees_the_port(db: Path) -> None:
    s = StatusServer(db, "127.0.0.1", 0).start()
    port = s.port
    s.stop()
    s2 = StatusServer(db, "127.0.0.1", port).start()
    try:
        assert get(s2, "/healthz")[0] == 200
    finally:
        s2.stop()


def test_series_of_a_long_silent_node_ends_at_its_newest_record(server: StatusServer) -> None:
    doc = json.loads(get(server, "/api/series?node=old-01&hours=24")[2])
    assert doc["start"] == [NOW - 48 * 3600] and doc["until"] == NOW - 48 * 3600 + 60
    doc = json.loads(get(server, f"/api/series?node=old-01&hours=24&until={NOW}")[2])
    assert doc["start"] == [] and doc["until"] == NOW  # an explicit window is kept


# -- the fleet register beside the nodes -----------------------------------------------------------------

REGISTER = '''
[nodes."ams-001"]
board = "esp32-devkitc"
name = "Dam, lamp post 12"
lat = 52.3731
lon = 4.8922
height_m = 3.5
installed = 2026-11-24
notes = "key under the mat"

[nodes."ams-009"]   # mounted, not heard of yet
name = "Spui"
'''


def test_the_register_names_the_nodes_and_lists_those_never_seen(db: Path, tmp_path: Path) -> None:
    from meetkit_gateway.fleet import Fleet

    path = tmp_path / "fleet.toml"
    path.write_text(REGISTER)
    # cache_s=0: the register changes between requests, and each answer must show it at once
    with StatusServer(db, "127.0.0.1", 0, targets=lambda: TARGETS, fleet=Fleet(path), cache_s=0) as s:
        doc = json.loads(get(s, "/api/nodes")[2])
        nodes = {n["node"]: n for n in doc["nodes"]}
        assert nodes["ams-001"]["register"] == {"name": "Dam, lamp post 12", "board": "esp32-devkitc",
                                                "installed": "2026-11-24", "lat": 52.3731, "lon": 4.8922,
                                                "height_m": 3.5}  # never the notes: the page has no login
        assert nodes["ams-001"]["flags"] == []
        assert nodes["ams-002"]["flags"] == ["not in the register"] and nodes["ams-002"]["register"] is None
        assert nodes["old-01"]["flags"] == ["stale", "not in the register"]
        assert nodes["ams-009"]["flags"] == ["never seen"] and nodes["ams-009"]["register"] == {"name": "Spui"}
        assert (nodes["ams-009"]["records"], nodes["ams-009"]["last_seen"]) == (0, None)
        assert doc["fleet"] == {"path": str(path), "errors": None, "registered": 2, "never_seen": 1,
                                "unregistered": 3}
        fams = parse_exposition(get(s, "/metrics")[2].decode())
        assert [sample(fams, f"meetkit_fleet_{k}") for k in (
            "error", "nodes_registered", "nodes_never_seen", "nodes_unregistered")] == [0, 2, 1, 3]
        # the register broken: the page and /metrics say so, and nothing else fails
        path.write_text(REGISTER + '[nodes."ams-010"]\nlat = 152.4\nlon = 4.9\n')
        os.utime(path, ns=(1, 2_000_000_000_000_000_000))
        status, _, body = get(s, "/api/nodes")
        doc = json.loads(body)
        assert status == 200 and doc["fleet"]["errors"] == [
            'nodes."ams-010".lat: must be a number from -90 to 90, got 152.4 (a number)']
        assert [n["node"] for n in doc["nodes"] if "not in the register" in n["flags"] or n["register"]] == []
        assert "ams-009" not in {n["node"] for n in doc["nodes"]}  # unknown while the file is wrong
        fams = parse_exposition(get(s, "/metrics")[2].decode())
        assert sample(fams, "meetkit_fleet_error") == 1 and not fams["meetkit_fleet_nodes_registered"]["samples"]
        assert sample(fams, "meetkit_records_stored_total") == 13  # the rest as always
        assert get(s, "/healthz")[0] == 200
        path.unlink()
        doc = json.loads(get(s, "/api/nodes")[2])
        assert doc["fleet"]["errors"] == ["cannot read the file: No such file or directory"]


def test_without_a_register_no_node_is_flagged_for_it(server: StatusServer) -> None:
    doc = json.loads(get(server, "/api/nodes")[2])
    assert doc["fleet"] == {"path": None, "errors": None, "registered": None, "never_seen": None,
                            "unregistered": None}
    assert all("not in the register" not in n["flags"] and n["register"] is None for n in doc["nodes"])
    fams = parse_exposition(get(server, "/metrics")[2].decode())
    assert fams["meetkit_fleet_error"]["samples"] == {} and fams["meetkit_fleet_nodes_registered"]["samples"] == {}


# -- the page's ranges, its node view and its time zone ------------------------------------------------


def test_a_week_comes_in_ten_minute_means_laeq_as_energy(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    t0 = (NOW - 2 * 86400) // 600 * 600
    doc = batch(node="w-01", boot=1, seqs=range(20), ts0=t0)
    for i, rec in enumerate(doc["recs"]):  # LAeq 50 dB for 9 minutes and 60 dB for one, per bucket
        level = 60.0 if i % 10 == 9 else 50.0
        rec["LAeq"] = [level, level - 2, level + 2, 60]
    doc["units"]["LAeq"] = "dB"
    with Store(path) as store:
        store.add_batch(payload.parse_batch(encode(doc), "w-01"), received_at=time.time())
    with StatusServer(path, "127.0.0.1", 0, timezone="Asia/Kolkata") as s:
        week = json.loads(get(s, "/api/series?node=w-01&hours=168")[2])
        day = json.loads(get(s, f"/api/series?node=w-01&hours=24&until={t0 + 86400}")[2])
        some = json.loads(get(s, "/api/series?node=w-01&hours=168&q=LAeq,temp")[2])
        nodes = json.loads(get(s, "/api/nodes")[2])
    assert week["step"] == 600 and week["start"] == [t0, t0 + 600]
    assert (week["first"], week["last"]) == (t0, t0 + 600)
    # pm25 avg is 5 + seq: the arithmetic mean of 5..14 and 15..24; LAeq the energy mean
    assert week["pm25"] == [9.5, 19.5]
    energy = 10 * __import__("math").log10((9 * 10 ** 5 + 10 ** 6) / 10)
    assert week["LAeq"] == [pytest.approx(energy), pytest.approx(energy)] and energy > 51.5
    assert day["step"] == 0 and len(day["start"]) == 20 and day["first"] == t0  # a day: every record
    assert set(some) >= {"LAeq", "temp"} and "pm25" not in some and some["temp"] == [12.5, 12.5]
    assert week["tz"] == nodes["tz"] == "Asia/Kolkata"


def test_the_node_view_has_the_newest_record_whole_and_each_boots_gaps(server: StatusServer) -> None:
    status, _, body = get(server, "/api/node?node=ams-001")
    assert status == 200
    doc = json.loads(body)
    assert doc["tz"] == "Europe/Amsterdam"  # the default of [http] timezone
    assert doc["node"]["node"] == "ams-001" and doc["node"]["fw"] == "0.2.0" and doc["node"]["gaps"] == 4
    rec = doc["record"]
    assert (rec["boot"], rec["seq"], rec["fw"], rec["board"]) == (4, 13, "0.1.0", "esp32-devkitc")
    assert rec["sensors"] == {"pm": "pms5003", "climate": "bme280"}
    assert {r["quantity"]: (r["avg"], r["min"], r["max"], r["n"], r["unit"]) for r in rec["readings"]} == {
        "pm25": (18.0, 4.0, 20.0, 58, "ug/m3"), "temp": (12.5, 12.0, 13.0, 12, "degC")}
    assert doc["boots"] == [{"boot": 3, "first_seq": 0, "last_seq": 6, "records": 5, "missing": 2},
                            {"boot": 4, "first_seq": 10, "last_seq": 13, "records": 2, "missing": 2}]
    status, _, body = get(server, "/api/node?node=nobody")
    assert status == 404 and "nobody" in json.loads(body)["error"]
