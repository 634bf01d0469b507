"""A corrupt database at start is moved aside with its -wal and -shm, a fresh one (new id) is
started, an alarm is raised, and the gateway ingests as before. Anything else is left alone."""

from __future__ import annotations

import logging
import random
import re
import sqlite3
from pathlib import Path

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway.payload import parse_batch
from meetkit_gateway.recovery import open_store
from meetkit_gateway.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError

from .conftest import Listener, Running, batch, cli, encode, write_config

GARBAGE = bytes(range(256)) * 32


def corrupted_copy(path: Path) -> str:
    """A store with records whose pages but the schema's are then overwritten: SQLite opens it and
    reads the schema, `quick_check` finds the damage. Returns its db id. (The schema has outgrown
    its first page: SQLite's dbstat says which pages hold it.)"""
    with Store(path) as s:
        for k in range(20):
            s.add_batch(parse_batch(encode(batch(seqs=range(10 * k, 10 * k + 10))), "ams-001"))
        db_id = s.db_id
        s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = s.db.execute("PRAGMA page_size").fetchone()[0]
        schema = {n for (n,) in s.db.execute("SELECT pageno FROM dbstat WHERE name = 'sqlite_schema'")}
    size = path.stat().st_size
    rng = random.Random(1)  # fixed bytes: the same damage every run
    with path.open("r+b") as f:
        for n in range(2, size // page + 1):
            if n not in schema:
                f.seek((n - 1) * page)
                f.write(rng.randbytes(page))
    return db_id


def test_a_file_that_is_not_a_database_is_moved_aside_and_the_gateway_runs(tmp_path, broker, node, acks, caplog):
    db = tmp_path / "gateway.db"
    db.write_bytes(GARBAGE)
    Path(f"{db}-wal").write_bytes(b"wal" * 100)
    Path(f"{db}-shm").write_bytes(b"shm" * 100)
    config = write_config(tmp_path, broker.port)
    before = cli("check", "--config", str(config))
    assert "cannot read it: file is not a database" in before.stdout

    caplog.set_level(logging.ERROR, logger="meetkit_gateway")
    g = Running(configuration.load(config)).wait_subscribed()
    try:
        (aside,) = tmp_path.glob("gateway.db.corrupt-*[0-9]Z")
        assert re.fullmatch(r"gateway\.db\.corrupt-\d{8}T\d{6}Z", aside.name)
        assert aside.read_bytes() == GARBAGE  # moved, not changed
        assert Path(f"{aside}-wal").read_bytes() == b"wal" * 100
        assert Path(f"{aside}-shm").exists()  # an index SQLite rebuilds when it opens the file
        (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert line.startswith("ALARM corrupt_db: the database was corrupt at start (file is not a database)")
        assert f"{db} -> {aside}" in line and f"{db}-wal -> {aside}-wal" in line

        # the gateway runs on a fresh database with a new id, and tells the nodes so
        node.publish("meetkit/ams-001/up", batch(seqs=[5]))
        (ack,) = acks.wait("meetkit/ams-001/ack", 1)
        assert ack["db"] == g.gateway.db_id
        with g.store() as s:
            assert s.counts().records == 1
            assert s.counters()["alarm.corrupt_db"] == 1
            (alarm,) = s.alarms()
        assert (alarm.code, alarm.active) == ("corrupt_db", True)
        assert g.gateway.alarms.raised["corrupt_db"] == 1

        # the alarm is retained on the broker for whoever looks later
        late = Listener(broker.host, broker.port, "meetkit/gateway/alarm")
        try:
            late.wait("meetkit/gateway/alarm", 1)
            ((topic, doc, retained),) = late.messages
        finally:
            late.close()
        assert retained
        assert doc["alarm"] == "corrupt_db" and doc["active"] is True and doc["v"] == 1
        assert str(aside) in doc["reason"]

        after = cli("check", "--config", str(config))
        assert after.returncode == 0
        assert re.search(r"^  ALARM       \S+Z corrupt_db: the database was corrupt at start", after.stdout, re.M)
        assert f"  database    id {g.gateway.db_id}" in after.stdout
    finally:
        g.stop()


def test_a_malformed_database_is_moved_aside_and_gets_a_new_id(tmp_path):
    path = tmp_path / "g.db"
    old_id = corrupted_copy(path)
    store, moved = open_store(path)
    try:
        assert moved is not None
        assert moved.target.name.startswith("g.db.corrupt-")
        # what SQLite found (an incremental auto-vacuum store also has pointer-map pages to complain of)
        assert moved.problem.startswith("quick_check: ") and "Page " in moved.problem
        assert store.db_id != old_id and re.fullmatch(r"[0-9a-f]{16}", store.db_id)
        assert store.counts().records == 0
    finally:
        store.close()
    assert moved.target.exists()


def test_two_corruptions_in_the_same_second_keep_both_files(tmp_path):
    path = tmp_path / "g.db"
    path.write_bytes(GARBAGE)
    s1, m1 = open_store(path)
    s1.close()
    path.unlink()
    Path(f"{path}-wal").unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)
    path.write_bytes(GARBAGE[::-1])
    s2, m2 = open_store(path)
    s2.close()
    assert m1 is not None and m2 is not None and m1.target != m2.target
    assert m1.target.read_bytes() == GARBAGE and m2.target.read_bytes() == GARBAGE[::-1]


def test_a_sound_database_is_left_alone(tmp_path):
    path = tmp_path / "g.db"
    with Store(path) as s:
        s.add_batch(parse_batch(encode(batch(seqs=[1])), "ams-001"))
        db_id = s.db_id
    store, moved = open_store(path)
    with store:
        assert moved is None and store.db_id == db_id and store.counts().records == 1
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []


def test_a_newer_schema_is_refused_not_moved(tmp_path):
    path = tmp_path / "g.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer than this gateway's"):
        open_store(path)
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []


def test_a_version_1_store_is_upgraded_keeping_its_data(tmp_path):
    path = tmp_path / "v1.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.executescript(MIGRATIONS[0])
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO records (node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors)"
                " VALUES ('ams-001', 3, 17, 1795510800, 1795510800, 1020, 60, 1795510801, '0.1.0', 'esp32-devkitc', '{}')")
    con.execute("INSERT INTO nodes (node, online, last_seen) VALUES ('ams-001', 1, 1795510801)")
    con.execute("INSERT INTO counters VALUES ('records', 1)")
    con.close()

    with Store(path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert re.fullmatch(r"[0-9a-f]{16}", s.db_id)
        assert s.counts().records == 1 and s.counters() == {"records": 1}
        (n,) = s.nodes()
        assert (n.node, n.online, n.dropped) == ("ams-001", True, None)
        s.add_batch(parse_batch(encode(batch(seqs=[18]) | {"dropped": 4}), "ams-001"))
        assert s.nodes()[0].dropped == 4
        db_id = s.db_id
    with Store(path, readonly=True) as s:
        assert s.db_id == db_id  # made once, kept


def test_run_stops_with_a_clear_error_on_a_store_it_must_not_touch(tmp_path):
    path = tmp_path / "gateway.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    r = cli("run", "--config", str(write_config(tmp_path, 1)), timeout=30)
    assert r.returncode == 1
    assert (f"cannot open the store {path}: {path}: schema version {SCHEMA_VERSION + 1} is newer than this "
            f"gateway's {SCHEMA_VERSION}") in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert [p.name for p in tmp_path.iterdir() if "corrupt" in p.name] == []
