"""The store's bounds (gateway/retention.py): whole oldest records go, by age and by bytes, counted
per reason; data not yet forwarded is counted apart and raises an alarm; ids stay monotonic; the
file really stays within its bound; schema 3 stores are upgraded with their data."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from pathlib import Path

from meetkit_gateway.store import schema as store_schema
from meetkit_gateway.alarms import DROPPED_UNFORWARDED, Alarms
from meetkit_gateway.forward import Forwarder, Result
from meetkit_gateway.http import StatusServer
from meetkit_gateway.ingest import Inbound, Writer
from meetkit_gateway.payload import Envelope, parse_batch
from meetkit_gateway.retention import LOW_WATER, SLACK, Bounds, Pruner
from meetkit_gateway.store import MIGRATIONS, SCHEMA_VERSION, Store
from meetkit_gateway.topics import Topics
from tests.metrics import parse_exposition, sample

from .conftest import batch, encode, wait_for

T0 = 1795510800  # 2026-11-24T09:00:00Z
DAY = 86400


def records(node: str, boot: int, seqs: range) -> dict:
    """A batch like conftest's, with values that stay in range for any seq."""
    doc = batch(node=node, boot=boot, seqs=seqs)
    for rec in doc["recs"]:
        rec["pm25"] = [5.0 + rec["seq"] % 50, 4.0, 60.0, 58]
    return doc


def fill(store: Store, n: int, *, node: str = "ams-001", boot: int = 1, first: int = 0, per_batch: int = 25,
         received_at: float | None = None, spacing: float = 60.0) -> None:
    """`n` records of `node`, seqs from `first`, received `spacing` s apart from `received_at`."""
    at = T0 if received_at is None else received_at
    with store.transaction():
        for k in range(first, first + n, per_batch):
            seqs = range(k, min(k + per_batch, first + n))
            store.add_batch(parse_batch(encode(records(node, boot, seqs)), node),
                            received_at=at + (k - first) * spacing)


def prune(p: Pruner, limit: int = 10_000) -> int:
    steps = 0
    while p.step():
        steps += 1
        assert steps < limit, "pruning does not end"
    return steps


def ids(store: Store) -> list[int]:
    return [r[0] for r in store.db.execute("SELECT id FROM records ORDER BY id")]


def orphans(store: Store) -> int:
    """Envelopes kept of boots none of whose records is left."""
    return store.db.execute("SELECT count(*) FROM boots AS b WHERE NOT EXISTS"
                            " (SELECT 1 FROM recs AS r WHERE r.node = b.node AND r.boot = b.boot)").fetchone()[0]


def file_size(path: Path) -> int:
    """The database file alone, after folding the write-ahead log into it."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.stat().st_size


class Published:
    """Collects what the alarms publish (the MQTT side is tested in test_bounded_gateway below)."""

    def __init__(self) -> None:
        self.docs: list[dict] = []

    def __call__(self, payload: bytes) -> None:
        self.docs.append(json.loads(payload))


# -- bytes -----------------------------------------------------------------------------------------------


def test_the_bytes_bound_drops_the_oldest_whole_records_and_the_file_shrinks(tmp_path):
    path = tmp_path / "g.db"
    with Store(path) as s:
        fill(s, 12_000)
        fill(s, 12_000, node="ams-002")  # ids 12001..24000 (a node's seqs, a minute apart, end before now)
        full = s.used_bytes()
        assert full > 1_500_000
        bound = 1_000_000
        p = Pruner(s, Bounds(bound, 0), Alarms())
        prune(p)
        assert bound * (LOW_WATER - 0.02) < s.bounded_bytes() <= bound * LOW_WATER  # down to the low-water mark
        kept = ids(s)
        assert kept == list(range(24_000 - len(kept) + 1, 24_001))  # the newest, a contiguous suffix
        assert orphans(s) == 0
        c = s.counters()
        assert c["dropped.bytes"] == 24_000 - len(kept) and "dropped.age" not in c
        assert c.get("dropped.unforwarded", 0) == 0  # no forwarding targets: nothing waits
        assert s.incremental
    # the pages freed went back to the file system, but for the slack that new records reuse
    assert file_size(path) <= bound * (1 + SLACK)


def test_pruning_is_small_transactions_and_stops_under_the_bound(tmp_path):
    with Store(tmp_path / "g.db") as s:
        fill(s, 6000)
        bound = s.used_bytes() // 2
        p = Pruner(s, Bounds(bound, 0), Alarms(), slice=200, check_every_s=0)
        before = s.counts().records
        assert p.step() and before - s.counts().records == 200  # one step: one slice at most
        assert prune(p) > 5
        assert s.bounded_bytes() <= bound * LOW_WATER and not p.step()
        dropped = s.counters()["dropped.bytes"]
        fill(s, 10, first=6000)  # a little more: under the bound still (the low-water band), nothing dropped
        assert not p.step() and s.counters()["dropped.bytes"] == dropped


# -- age -------------------------------------------------------------------------------------------------


def test_the_age_bound_drops_what_was_received_before_it(tmp_path):
    with Store(tmp_path / "g.db") as s:
        fill(s, 100, received_at=T0 - 40 * DAY, spacing=DAY / 10)  # 10 a day, 40 days back to 30 days back
        fill(s, 10, node="ams-002", received_at=T0 - 3600)
        p = Pruner(s, Bounds(2_000_000_000, 35), Alarms(), clock=lambda: T0)
        prune(p)
        left = s.db.execute("SELECT node, min(received_at), count(*) FROM records GROUP BY node").fetchall()
        assert left == [("ams-001", T0 - 35 * DAY, 50), ("ams-002", T0 - 3600, 10)]
        assert s.counters()["dropped.age"] == 50 and "dropped.bytes" not in s.counters()
        assert orphans(s) == 0


def test_payload_v2_envelopes_go_with_the_last_record_of_their_boot(tmp_path):
    """A v2 node's envelope (one row per boot) is kept while a record of its boot is; pruned with
    the boot's last record, so the table does not grow for ever. A boot sent again later is asked
    for its envelope (test_payload_v2)."""
    env = Envelope("1.0", "esp32-devkitc", {"pm": "pms5003"}, {"pm25": "ug/m3"}, ("pm25",), (1,))
    with Store(tmp_path / "g.db") as s:
        fill(s, 10, boot=1, received_at=T0 - 40 * DAY)
        fill(s, 10, boot=2, received_at=T0 - 40 * DAY + 3600)
        fill(s, 10, boot=3, received_at=T0 - 3600)
        with s.transaction():
            for boot in (1, 2, 3, 4):   # 4: an envelope whose boot sent no record yet
                s.add_envelope("ams-001", boot, env, T0 - 40 * DAY)
        prune(Pruner(s, Bounds(2_000_000_000, 35), Alarms(), clock=lambda: T0))
        kept = [b for (b,) in s.db.execute("SELECT boot FROM envelopes ORDER BY boot")]
        assert kept == [3, 4]
        assert s.envelope("ams-001", 1) is None and s.envelope("ams-001", 3) == env
    with Store(tmp_path / "g.db") as s:   # and not only in the cache
        assert s.envelope("ams-001", 2) is None and s.envelope("ams-001", 4) == env


def test_only_a_prefix_goes_so_ids_stay_ordered(tmp_path):
    """A record with an odd reception time (the Pi's clock before NTP) waits for those before it."""
    with Store(tmp_path / "g.db") as s:
        fill(s, 5, received_at=T0 - 10 * DAY)
        fill(s, 5, first=5, received_at=T0)
        fill(s, 5, first=10, received_at=T0 - 20 * DAY)  # newer ids, an old clock
        prune(Pruner(s, Bounds(2_000_000_000, 5), Alarms(), clock=lambda: T0))
        assert ids(s) == list(range(6, 16))


def test_dead_letters_expire_with_the_age_bound(tmp_path):
    with Store(tmp_path / "g.db") as s:
        for k in range(30):
            s.add_dead_letter("meetkit/x/up", b"x" * 4000, "not_json", "not JSON", received_at=T0 - 50 * DAY + k,
                              node="x")
        fill(s, 200, received_at=T0 - DAY)
        prune(Pruner(s, Bounds(2_000_000_000, 40), Alarms(), clock=lambda: T0))
        assert s.counts().dead_letters == 0 and s.counters()["dead_letters_dropped.age"] == 30
        assert s.counts().records == 200


def test_dead_letters_never_displace_readings(tmp_path):
    """The audit's flood: 150 oversized messages from one node under an 8 MB bound took every
    record. Dead letters now have budgets of their own, outside max_bytes."""
    with Store(tmp_path / "g.db") as s:
        fill(s, 2000, received_at=T0 - DAY)
        records, readings_bytes = s.counts().records, s.bounded_bytes()
        bound = readings_bytes + 200_000  # the readings are just under their bound
        for k in range(600):  # 2.4 MB of garbage, three nodes
            s.add_dead_letter(f"meetkit/spew-{k % 3}/up", bytes([65 + k % 26]) * 4096, "oversized", "garbage",
                              received_at=T0 + k, node=f"spew-{k % 3}")
        assert s.used_bytes() > bound
        prune(Pruner(s, Bounds(bound, 0), Alarms(), clock=lambda: T0 + 600))
        assert s.counts().records == records and "dropped.bytes" not in s.counters()
        assert s.counts().dead_letters == 600  # within their budgets: kept


def test_a_flooding_node_loses_its_oldest_dead_letters_and_raises_an_alarm(tmp_path):
    published = Published()
    now = [T0]
    with Store(tmp_path / "g.db") as s:
        fill(s, 100, received_at=T0 - DAY)
        s.add_dead_letter("meetkit/quiet/up", b"{}", "missing_field", "v: missing", received_at=T0, node="quiet")
        for k in range(1000):
            s.add_dead_letter("meetkit/spew/up", b"x" * 4096, "oversized", "garbage", received_at=T0 + k, node="spew")
        p = Pruner(s, Bounds(2_000_000_000, 0, dead_letters_node_max_bytes=1_000_000, dead_letters_node_max=500),
                   Alarms(published), clock=lambda: now[0], check_every_s=0)
        prune(p)
        kept = s.dead_letters(limit=10_000, node="spew")
        assert len(kept) == 1_000_000 // 4096  # the bytes budget binds before the count
        assert min(d.received_at for d in kept) == T0 + 1000 - len(kept)  # the newest kept
        assert len(s.dead_letters(node="quiet")) == 1  # another node's are not touched
        assert s.counts().records == 100
        assert s.counters()["dead_letters_dropped.flood"] == 1000 - len(kept)
        assert [(d["alarm"], d["active"]) for d in published.docs] == [("dead_letter_flood", True)]
        assert "node spew" in published.docs[0]["reason"]
        # the count budget, and the total budget over all nodes
        for k in range(300):
            s.add_dead_letter("meetkit/chatty/up", b"{}", "not_json", "x", received_at=T0 + k, node="chatty")
        p.bounds = Bounds(2_000_000_000, 0, dead_letters_node_max=100, dead_letters_max_bytes=900_000)
        prune(p)
        assert len(s.dead_letters(limit=10_000, node="chatty")) == 100
        assert s.dead_letter_usage(every=True)[1] <= 900_000
        assert s.counters()["dead_letters_dropped.bytes"] > 0
        # quiet for FLOOD_QUIET_S: the alarm is over
        now[0] += 3600
        prune(p)
        assert [(d["alarm"], d["active"]) for d in published.docs][-1] == ("dead_letter_flood", False)


# -- what was not forwarded ---------------------------------------------------------------------------------


def cursor(s: Store, target: str, last_id: int) -> None:
    s.db.execute("INSERT INTO forward_cursors (target, last_id) VALUES (?, ?)"
                 " ON CONFLICT (target) DO UPDATE SET last_id = excluded.last_id", (target, last_id))


def test_dropping_unforwarded_records_is_counted_and_raises_an_alarm_until_the_targets_catch_up(tmp_path, caplog):
    published = Published()
    alarms = Alarms(published)
    with Store(tmp_path / "g.db") as s:
        fill(s, 100, received_at=T0 - 10 * DAY, spacing=3600, per_batch=1)
        cursor(s, "fast", 100)  # has everything
        cursor(s, "slow", 30)   # records 31.. not yet
        p = Pruner(s, Bounds(2_000_000_000, 8, targets=("fast", "slow")), alarms, clock=lambda: T0,
                   check_every_s=0)
        cursor(s, "disabled", 10)  # a target not enabled (not in the bounds) is not waited for
        prune(p)
        c = s.counters()
        assert c["dropped.age"] == 48  # received 10 days ago + 0..47 h: over 8 days
        assert c["dropped.unforwarded"] == 48 - 30  # ids 31..48: "slow" had not taken them
        assert [(d["alarm"], d["active"]) for d in published.docs] == [(DROPPED_UNFORWARDED, True)]
        assert "not yet forwarded to every target" in published.docs[0]["reason"]
        assert any("18 of those records had not been forwarded to every target" in r.message
                   for r in caplog.records if r.levelname == "WARNING")
        alarms.save(s)
        assert [(a.code, a.active) for a in s.active_alarms()] == [(DROPPED_UNFORWARDED, True)]
        # the slow target catches up past the oldest record kept: the alarm is over
        cursor(s, "slow", 49)
        p.step()
        assert [(d["alarm"], d["active"]) for d in published.docs][-1] == (DROPPED_UNFORWARDED, False)
        alarms.save(s)
        assert s.active_alarms() == []
        # a restarted gateway does not raise it again for old drops
        assert not Pruner(s, p.bounds, Alarms())._unforwarded_alarm


def test_a_target_that_never_ran_has_forwarded_nothing(tmp_path):
    with Store(tmp_path / "g.db") as s:
        fill(s, 20, received_at=T0 - 10 * DAY)
        prune(Pruner(s, Bounds(2_000_000_000, 1, targets=("new",)), Alarms(), clock=lambda: T0))
        assert s.counters()["dropped.unforwarded"] == 20


# -- ids --------------------------------------------------------------------------------------------------


class Untouched:
    kind = "test"

    def send(self, rows):  # pragma: no cover - pending() never sends
        return Result(False, "not used")

    def close(self) -> None:
        pass


def test_record_ids_stay_monotonic_even_when_every_record_was_pruned(tmp_path):
    path = tmp_path / "g.db"
    with Store(path) as s:
        fill(s, 50, received_at=T0 - 10 * DAY)
        cursor(s, "vm", 50)  # forwarded everything
        prune(Pruner(s, Bounds(2_000_000_000, 1, targets=("vm",)), Alarms(), clock=lambda: T0))
        assert s.counts().records == 0 and s.pruned_upto == 50
    with Store(path) as s:  # after a restart too
        fill(s, 3, first=50, received_at=T0)
        assert ids(s) == [51, 52, 53]
    f = Forwarder("vm", path, Untouched())
    try:
        p = f.pending()  # the target's cursor (50) is behind the new records: they are sent
        assert [r.record_id for r in p.rows][::2] == [51, 52, 53]
    finally:
        f.close()


# -- the writer ----------------------------------------------------------------------------------------------


def test_the_writer_prunes_between_groups_without_refusing_anything(tmp_path):
    s = Store(tmp_path / "g.db")
    bound = 400_000  # under half of what the 12 000 records take
    w = Writer(s, Topics(), max_group=20, bounds=Bounds(bound, 0))
    msgs = [Inbound("meetkit/ams-001/up", encode(records("ams-001", 1, range(k, k + 25))), time.time(), mid=k + 1,
                    qos=1)
            for k in range(0, 12_000, 25)]
    w.start()
    try:
        for m in msgs:
            w.submit(m)
        wait_for(lambda: w.committed == len(msgs), 60, "every message committed")
        with Store(tmp_path / "g.db", readonly=True) as r:
            wait_for(lambda: r.used_bytes() <= bound, 20, "the store back within its bound")
            c = r.counters()
            assert c["records"] == 12_000 and c["dropped.bytes"] > 5000
            assert r.counts().records == 12_000 - c["dropped.bytes"]
            assert ids(r)[-1] == 12_000  # the newest are kept
    finally:
        w.close()
        s.close()
    assert w.refused == 0 and w.committed == len(msgs)


# -- schema 3 -> 4 ----------------------------------------------------------------------------------------------


def schema3(path: Path, records: int) -> None:
    """A schema-3 store as the gateway before this one made it (rowid ids, no auto-vacuum)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for m in MIGRATIONS[:3]:
        con.executescript(m)
    con.execute("PRAGMA user_version = 3")
    con.execute("BEGIN")
    for k in range(records):
        rid = con.execute(
            "INSERT INTO records (node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors)"
            " VALUES ('ams-001', 1, ?, ?, ?, ?, 60, ?, '0.1.0', 'esp32-devkitc', '{\"pm\":\"pms5003\"}')",
            (k, T0 + 60 * k, T0 + 60 * k, 60 * k, T0 + 60 * k)).lastrowid
        con.executemany("INSERT INTO readings (record_id, quantity, avg, min, max, n, unit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(rid, "pm25", 5.0 + k % 7, 4.0, 9.0, 58, "ug/m3"), (rid, "temp", 12.5, 12.0, 13.0, 12, "degC")])
    con.execute("INSERT INTO forward_cursors (target, last_id) VALUES ('vm', ?)", (records // 2,))
    con.execute("INSERT INTO counters VALUES ('records', ?)", (records,))
    con.execute("COMMIT")
    assert con.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    con.close()


def test_a_schema_3_store_is_upgraded_with_its_data_and_vacuumed_once(tmp_path, caplog):
    path = tmp_path / "g.db"
    schema3(path, 3000)
    caplog.set_level("INFO")
    with Store(path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) and SCHEMA_VERSION >= 8
        assert s.incremental  # converted by one VACUUM
        assert s.counts().records == 3000 and s.counts().readings == 6000 and s.pruned_upto == 0
        assert [(r.quantity, r.avg) for r in s.readings(node="ams-001", since=T0 + 60 * 2999)] == [
            ("pm25", 5.0 + 2999 % 7), ("temp", 12.5)]
        fill(s, 1, boot=2)
        assert ids(s)[-1] == 3001
        used = s.used_bytes()
        prune(Pruner(s, Bounds(used // 2, 0, targets=("vm",)), Alarms()))
        c = s.counters()
        assert s.bounded_bytes() <= used // 2 and c["dropped.bytes"] > 1000
        assert c["dropped.unforwarded"] == c["dropped.bytes"] - 1500  # the cursor of "vm" was at 1500
    assert any("converted to incremental auto-vacuum" in r.message for r in caplog.records)
    assert file_size(path) <= used // 2 * (1 + SLACK) + 4096


def test_a_big_schema_3_store_is_not_vacuumed_at_start_and_still_bounded(tmp_path, caplog, monkeypatch):
    """Above VACUUM_AT_UPGRADE_MAX the upgrade skips the rewrite: the file keeps its size, and new
    records reuse the pages pruning frees instead of growing it."""
    monkeypatch.setattr(store_schema, "VACUUM_AT_UPGRADE_MAX", 0)
    path = tmp_path / "g.db"
    schema3(path, 6000)
    with Store(path) as s:
        assert not s.incremental
        assert s.counts().records == 6000
        bound = s.used_bytes() * 2 // 3
        p = Pruner(s, Bounds(bound, 0), Alarms(), check_every_s=0)
        prune(p)
        size = file_size(path)
        for k in range(5):  # as much again as there was, in rounds, pruning after each
            fill(s, 1200, boot=2 + k, received_at=T0 + DAY)
            prune(p)
            assert s.bounded_bytes() <= bound
        assert file_size(path) <= size  # the freed pages were reused
    assert any("not converted to incremental auto-vacuum" in r.message and "sqlite3" in r.message
               for r in caplog.records if r.levelname == "WARNING")


# -- what an operator sees ------------------------------------------------------------------------------------


def test_metrics_show_the_drops_by_reason_and_the_size(tmp_path):
    path = tmp_path / "g.db"
    with Store(path) as s:
        fill(s, 100, received_at=T0 - 10 * DAY)
        cursor(s, "vm", 40)
        prune(Pruner(s, Bounds(2_000_000_000, 1, targets=("vm",)), Alarms(), clock=lambda: T0))
        fill(s, 3000, boot=2, received_at=T0)
        prune(Pruner(s, Bounds(s.used_bytes() * 3 // 4, 0, targets=("vm",)), Alarms(), clock=lambda: T0))
        c = s.counters()
        used, bounded = s.used_bytes(), s.bounded_bytes()
    with StatusServer(path, port=0) as srv:
        with urllib.request.urlopen(srv.url + "/metrics", timeout=5) as r:
            fams = parse_exposition(r.read().decode())

    assert sample(fams, "meetkit_store_dropped_total", reason="age") == 100 == c["dropped.age"]
    assert sample(fams, "meetkit_store_dropped_total", reason="bytes") == c["dropped.bytes"] > 0
    unforwarded = sample(fams, "meetkit_store_dropped_unforwarded_total")
    assert unforwarded == 60 + c["dropped.bytes"] == c["dropped.unforwarded"]
    assert sample(fams, "meetkit_store_used_bytes") == used
    assert sample(fams, "meetkit_store_bounded_bytes") == bounded < used  # the dead letters' pages left out
    assert sample(fams, "meetkit_store_bytes") >= used
    assert fams["meetkit_store_dropped_total"]["type"] == "counter"
    # its own metric: sums stay right
    assert frozenset({("reason", "unforwarded")}) not in fams["meetkit_store_dropped_total"]["samples"]


def test_check_shows_the_size_and_what_was_pruned(tmp_path):
    from .conftest import cli

    path = tmp_path / "g.db"
    with Store(path) as s:
        fill(s, 100, received_at=T0 - 10 * DAY)
        cursor(s, "vm", 70)
        prune(Pruner(s, Bounds(2_000_000_000, 1, targets=("vm",)), Alarms(), clock=lambda: T0))
    (tmp_path / "g.toml").write_text('[store]\npath = "g.db"\nmax_bytes = "5 MB"\nmax_age_days = 1\n')
    r = cli("check", "--config", str(tmp_path / "g.toml"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"^  size        \d+\.\d KB in use of 5\.0 MB, file \d+\.\d KB$", r.stdout, re.M), r.stdout
    assert "  pruned      100 by age records; 30 of them not yet forwarded to every target" in r.stdout


def test_bounds_follow_the_configuration(tmp_path):
    from meetkit_gateway import config as configuration

    (tmp_path / "g.toml").write_text(
        '[store]\npath = "g.db"\nmax_bytes = "64 MB"\nmax_age_days = 30\n'
        '[[forward]]\nname = "a"\ntype = "influx"\nurl = "http://127.0.0.1:1"\ndb = "x"\n'
        '[[forward]]\nname = "b"\ntype = "influx"\nurl = "http://127.0.0.1:1"\ndb = "x"\nenabled = false\n')
    assert Bounds.of(configuration.load(tmp_path / "g.toml")) == Bounds(64_000_000, 30, ("a",))


def test_used_bytes_is_the_file_without_its_free_pages(tmp_path):
    path = tmp_path / "g.db"
    with Store(path) as s:
        fill(s, 500)

        def file_size() -> int:  # the main file alone, the WAL folded in
            s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return path.stat().st_size

        size, _, free = s.pages()
        assert s.used_bytes() + free * size == file_size()
        used = s.used_bytes()
        s.drop_records(250)
        size_after = file_size()
        assert s.pages()[2] > free  # freed pages are on the free list until reused or given back
        assert s.used_bytes() < used and s.used_bytes() + s.pages()[2] * size == size_after


# -- the whole gateway ------------------------------------------------------------------------------------------


def test_bounded_gateway_drops_the_oldest_and_tells_the_operator(tmp_path, broker):
    """A real gateway and Mosquitto, a store bound of 1 MB, one forwarding target that is down:
    every batch is still stored and acknowledged, the store stays within its bound, and the
    operator hears of the records dropped before the target took them (alarm on MQTT, counters,
    /metrics)."""
    from meetkit_gateway import config as configuration
    from meetkit_tools.services import free_port

    from .conftest import Listener, Publisher, Running

    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nkeepalive = 10\n'
        '[store]\npath = "gateway.db"\nmax_bytes = "1 MB"\n[http]\nport = 0\n'
        f'[[forward]]\nname = "down"\ntype = "influx"\nurl = "http://127.0.0.1:{free_port()}"\ndb = "x"\n'
    )
    alarms = Listener(broker.host, broker.port, "meetkit/gateway/alarm", "meetkit/+/ack")
    g = Running(configuration.load(conf)).wait_subscribed()
    node = Publisher(broker.host, broker.port)
    n, boots = 8000, 3  # about 1.8 MB of records (a record's readings in one row: about 75 bytes with two)
    try:
        for boot in range(1, boots + 1):
            for k in range(0, n, 25):
                node.publish("meetkit/ams-001/up", records("ams-001", boot, range(k, k + 25)))
        alarm = alarms.wait("meetkit/gateway/alarm", 1, timeout=60)[0]
        assert (alarm["alarm"], alarm["active"]) == ("dropped_unforwarded", True)
        # every seq of every boot acknowledged once (batches committed together share an ack)
        wait_for(lambda: len(alarms.acked("meetkit/ams-001/ack")) >= boots * n, 60, "every record acknowledged")
        assert sorted(alarms.acked("meetkit/ams-001/ack")) == sorted(list(range(n)) * boots)
        with g.store() as s:
            wait_for(lambda: s.used_bytes() <= 1_000_000, 20, "the store within its bound")
            c = s.counters()
            assert c["records"] == boots * n and c["dropped.bytes"] == c["dropped.unforwarded"] > 0
            assert s.counts().records == boots * n - c["dropped.bytes"]
            assert [a.code for a in s.active_alarms()] == ["dropped_unforwarded"]
        with urllib.request.urlopen(g.gateway.http.url + "/metrics", timeout=5) as r:
            fams = parse_exposition(r.read().decode())
        assert sample(fams, "meetkit_store_dropped_total", reason="bytes") >= 1
        assert sample(fams, "meetkit_alarm_active", code="dropped_unforwarded") == 1
        assert g.gateway.writer.refused == 0
    finally:
        node.close()
        g.stop()
        alarms.close()
