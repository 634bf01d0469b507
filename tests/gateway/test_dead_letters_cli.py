"""`meetkit-gateway dead-letters list|show|replay`: an operator sees what was refused and, after a
fix, re-ingests it without storing anything twice (gateway/replay.py)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from meetkit_gateway import payload
from meetkit_gateway.ingest import Inbound, ingest
from meetkit_gateway.replay import replay
from meetkit_gateway.store import Store
from meetkit_gateway.topics import Topics

from .conftest import batch, cli, encode, example


def take(store: Store, topic: str, doc: dict | bytes, at: float | None = None) -> None:
    """A message through the gateway's own ingest, as the writer takes it."""
    with store.transaction():
        ingest(store, Topics(), Inbound(topic, encode(doc), time.time() if at is None else at))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('[store]\npath = "gateway.db"\n')
    return path


def db(config: Path) -> Path:
    return config.parent / "gateway.db"


def old_gateway_letter(store: Store, doc: dict, reason: str) -> None:
    """A batch an older gateway (pm ranges 0..2000) dead-lettered whole, as it kept it."""
    store.add_dead_letter("meetkit/ams-001/up", encode(doc), "out_of_range", reason, time.time() - 3600, "ams-001")


def smoke() -> dict:
    """The audit's batch: 12 records, record 6 with pm10 = 2150 (fireworks smoke)."""
    doc = batch(seqs=range(12))
    doc["units"]["pm10"] = "ug/m3"
    for r in doc["recs"]:
        r["pm10"] = [40.0, 30.0, 55.0, 58]
    doc["recs"][6]["pm10"] = [2150.0, 900.0, 3100.0, 58]
    return doc


def test_list_and_show(config: Path) -> None:
    with Store(db(config)) as s:
        take(s, "meetkit/ams-001/up", b"not json at all")
        poisoned = batch(seqs=range(3))
        poisoned["recs"][1]["ts"] = 10**13
        take(s, "meetkit/ams-001/up", poisoned)
        take(s, "meetkit/ams-002/status", {"v": 1, "node": "ams-002", "online": "yes"})
    r = cli("dead-letters", "list", "--config", str(config))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["id", "received", "(UTC)", "node", "code", "bytes", "reason"]
    assert [line.split()[0] for line in lines[2:5]] == ["3", "2", "1"]  # newest first
    assert "ams-002" in lines[2] and "wrong_type" in lines[2]
    assert "implausible" in lines[3] and "recs[1].ts: 10000000000000" in lines[3]
    assert "(3 shown, newest first; 3 dead letters of" in lines[-1]
    only = cli("dead-letters", "list", "--config", str(config), "--node", "ams-001", "--code", "not_json")
    assert [line.split()[0] for line in only.stdout.splitlines()[2:-1]] == ["1"]
    shown = cli("dead-letters", "show", "2", "--config", str(config))
    assert shown.returncode == 0
    assert "reason    recs[1].ts: 10000000000000" in shown.stdout
    body = json.loads(shown.stdout.split("kept:\n", 1)[1])
    assert [r["seq"] for r in body["recs"]] == [1] and body["boot"] == 3  # the refused record, in its envelope
    raw = cli("dead-letters", "show", "1", "--config", str(config))
    assert raw.stdout.rstrip().endswith("not json at all")
    assert cli("dead-letters", "show", "99", "--config", str(config)).returncode == 1
    assert cli("dead-letters", "show", "--config", str(config)).returncode == 2
    assert cli("dead-letters", "replay", "--config", str(config)).returncode == 2
    check = cli("check", "--config", str(config))
    assert ("  refused     1 record and 0 values refused alone, 0 values kept beyond their sensor's rating "
            "(flag range); 3 dead letters of ") in check.stdout


def test_replay_after_a_widened_range_stores_what_was_refused_once(config: Path) -> None:
    """A batch an older gateway rejected whole for one value above its range goes in now: the 12
    records, the smoky value flagged `range`; records the node had sent again meanwhile are not
    stored twice; replaying again finds nothing."""
    doc = smoke()
    with Store(db(config)) as s:
        old_gateway_letter(s, doc, "recs[6].pm10: avg 2150 is outside 0..2000 ug/m3")
        take(s, "meetkit/ams-001/up", dict(doc, recs=doc["recs"][:4]))  # the node sent 0..3 again (say)
        take(s, "meetkit/ams-001/up", b"garbage")
    r = cli("dead-letters", "replay", "--all", "--config", str(config), "--code", "out_of_range")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == ("replayed 1 dead letter: 1 went through and were deleted, 0 still refuse "
                                        "something; 8 records stored, 4 held already, 0 values filled in, "
                                        "0 status messages, 0 events")
    with Store(db(config), readonly=True) as s:
        pm10 = {g.seq: g for g in s.readings(quantity="pm10")}
        assert sorted(pm10) == list(range(12))
        assert pm10[6].avg == 2150.0 and "range" in pm10[6].flag_names
        assert s.counts().records == 12 and s.counts().dead_letters == 1  # the garbage stays
        assert s.counters()["dead_letters_replayed"] == 1
    again = cli("dead-letters", "replay", "--all", "--config", str(config))
    assert again.stdout.splitlines()[0].startswith("replayed 1 dead letter: 0 went through and were deleted, "
                                                   "1 still refuse something; 0 records stored")
    assert "  2: not JSON: Expecting value" in again.stdout
    with Store(db(config), readonly=True) as s:
        assert s.counts().records == 12 and s.counts().dead_letters == 1


def test_replay_fills_in_a_refused_value_and_nothing_else(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value refused as impossible is stored null and flagged; once the contract says it is
    possible after all (a newer gateway), the replay fills in that value only."""
    doc = example()
    doc["recs"][1]["pm25"] = [70000.0, 69000.0, 71000.0, 58]  # beyond what a PMS sensor can say today
    with Store(db(config)) as s:
        take(s, "meetkit/ams-001/up", doc)
        before = {g.quantity: g for g in s.readings() if g.seq == 17}
        assert before["pm25"].avg is None and before["pm25"].flag_names == ("rh_high", "refused")
        (dl,) = s.dead_letters()
        # still refused by today's contract: replay keeps it and changes nothing
        out = replay(s, Topics(), [dl])
        assert (out.replayed, out.kept, out.records, out.values) == (0, 1, 0, 0)
        pm25 = payload.QUANTITIES["pm25"]
        monkeypatch.setitem(payload.QUANTITIES, "pm25", dataclasses.replace(pm25, highest=100_000))
        out = replay(s, Topics(), s.dead_letters())
        assert (out.replayed, out.kept, out.records, out.duplicates, out.values) == (1, 0, 0, 1, 1)
        after = {g.quantity: g for g in s.readings() if g.seq == 17}
        assert (after["pm25"].avg, after["pm25"].max, after["pm25"].flag_names) == (70000.0, 71000.0, ("rh_high", "range"))
        assert {q: g for q, g in after.items() if q != "pm25"} == {q: g for q, g in before.items() if q != "pm25"}
        assert s.counts().dead_letters == 0 and s.counts().records == 2


def test_replay_of_a_future_record_once_its_time_has_come(config: Path) -> None:
    """A node whose clock ran 2 days ahead: its record is refused; replayed 3 days later (the
    gateway's clock then), it is plausible and stored."""
    now = time.time()
    doc = batch(seqs=[0], ts0=int(now) // 60 * 60 + 2 * 86400)
    with Store(db(config)) as s:
        take(s, "meetkit/ams-001/up", doc, at=now)
        assert s.counts().records == 0
        out = replay(s, Topics(), s.dead_letters(), now=now + 3 * 86400)
        assert (out.replayed, out.records) == (1, 1)
        assert s.counts().records == 1


def test_a_status_letter_replays_as_a_replayed_status(config: Path) -> None:
    with Store(db(config)) as s:
        s.add_dead_letter("meetkit/ams-002/status", encode({"v": 1, "node": "ams-002", "online": True, "rssi": -61}),
                          "unknown_field", "rssi: not a field of payload v1 (an older gateway)", node="ams-002")
        out = replay(s, Topics(), s.dead_letters())
        (n,) = s.nodes()
    assert out.statuses == 1 and (n.node, n.online, n.rssi, n.last_seen) == ("ams-002", True, -61, None)
