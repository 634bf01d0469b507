"""Migration 11 (issue 17): a store of schema 9 (one row per reading) moved to the compact layout
keeps every record and every value exactly, also when the gateway is killed in the middle of it.

The store is built as schema 9's gateway wrote it (tools/dev/store9.py: firmware-made records of
20 nodes, 1000 each) plus what an older store can hold besides: records without a time, null
values with their flags, flags in another order, a unit other than the contract's, a quantity no
longer in it, values no JSON can carry (infinities, 5e-324), counters of 2**63-1. Its content
is read before (schema 9's tables) and after (the `records` view, every record's readings)."""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meetkit_gateway.store import SCHEMA_VERSION, Store
from meetkit_gateway.store.rows import RECORD_COLUMNS, expand
from meetkit_tools.dev import store9
from meetkit_tools.dev.waits import wait_for

T0 = 1795510800
RECORD = "id, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err"
INF = float("inf")


def _same(x: Any) -> Any:
    """A value compared exactly: a float by its repr (-0.0 is not 0.0, nan is nan), with its type."""
    return (type(x).__name__, repr(x)) if isinstance(x, float) else x


def _odd(con: sqlite3.Connection) -> None:
    """What an older store may hold that no batch of today brings, by SQL in schema 9's tables."""
    con.execute("BEGIN")
    rows = [("old-01", 2, 0, None, None, 0), ("old-01", 2, 1, T0 + 60, T0 + 60, 60),
            ("old-01", 2**63 - 1, 2**63 - 1, 10**13, 10**13, 2**63 - 1)]
    for node, boot, seq, ts, start, up in rows:
        rid = con.execute(
            "INSERT INTO records (node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err)"
            " VALUES (?, ?, ?, ?, ?, ?, 60, ?, '0.1.0', 'esp32-devkitc', '{\"pm\":\"sds011\"}', ?)",
            (node, boot, seq, ts, start, up, T0 + 0.123456789 * seq, '{"pm":3}' if seq else None)).lastrowid
        con.executemany(
            "INSERT INTO readings (record_id, quantity, avg, min, max, n, unit, flags) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(rid, "pm25", 1e308, -1e308, 5e-324, 2**63 - 1, "ug/m3", "range"),
             (rid, "temp", INF, -INF, -0.0, 12, "degC", "partial,warmup"),  # flags out of the gateway's order
             (rid, "rh", -0.0, None, None, None, "%", ""),
             (rid, "press", None, None, None, None, "hPa", "missing,refused"),
             (rid, "LAeq", None, None, None, None, "dB(A)", "refused"),  # a unit the contract refuses
             (rid, "LZeq", 63.8, 60.1, 70.2, 60, "dB", ""),  # as firmware 0.1.0 sent it
             (rid, "co2", 415.5, None, None, None, "ppm", ""),  # a quantity no longer in the contract
             (rid, "cov", 0.1 + 0.2, None, None, None, "1", "")])  # no decimal the node could send
    con.execute("COMMIT")


def content(path: Path) -> tuple[list[tuple], dict[int, set[tuple]]]:
    """(every record's row, record id -> its readings), read from whichever layout the store has."""
    con = sqlite3.connect(path)
    try:
        records = [tuple(map(_same, r)) for r in con.execute(f"SELECT {RECORD} FROM records ORDER BY id")]
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings'").fetchone():
            readings: dict[int, set[tuple]] = {}
            for rid, *r in con.execute("SELECT record_id, quantity, avg, min, max, n, unit, flags FROM readings"):
                readings.setdefault(rid, set()).add(tuple(map(_same, r)))
            return records, readings
    finally:
        con.close()
    with Store(path, readonly=True) as s:
        readings = {}
        for g in expand(s.keys, s.db.execute(f"SELECT {RECORD_COLUMNS} FROM recs AS r")):
            readings.setdefault(g.record_id, set()).add(
                tuple(map(_same, (g.quantity, g.avg, g.min, g.max, g.n, g.unit, g.flags))))
    return records, readings


@pytest.fixture(scope="module")
def older(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    """A schema-9 store of 20 nodes x 1000 records and the odd ones, folded into one file; its content."""
    path = tmp_path_factory.mktemp("v9") / "gateway.db"
    con = store9.create(path)
    store9.fill(con, 20, 1000, T0)
    _odd(con)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path, content(path)


def copy_of(older: tuple[Path, tuple], to: Path) -> Path:
    shutil.copy(older[0], to / "gateway.db")
    return to / "gateway.db"


def check(path: Path, expected: tuple) -> None:
    with Store(path) as s:  # finishes a migration cut short
        assert s.db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert s.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert s.db.execute("SELECT name FROM sqlite_master WHERE name IN ('readings', 'recs')").fetchall() == [("recs",)]
        assert s.counts().records == len(expected[0])
    records, readings = content(path)
    assert records == expected[0]  # every record once, every column as it was
    assert readings == expected[1]  # every value, n, unit and flag


def test_the_compact_layout_keeps_every_record_and_value_exactly(older, tmp_path):
    path = copy_of(older, tmp_path)
    old_bytes = path.stat().st_size
    check(path, older[1])
    with Store(path) as s:
        assert s.used_bytes() < old_bytes / 3
        # the readers see the migrated values as they saw the old ones
        (odd,) = [g for g in s.readings(node="old-01") if g.boot == 2 and g.seq == 1 and g.quantity == "temp"]
        assert (odd.avg, odd.min, odd.max, odd.n, odd.flags) == (INF, -INF, 0.0, 12, "partial,warmup")
        assert s.envelope_of("old-01", 2) == {"fw": "0.1.0", "board": "esp32-devkitc", "sensors": {"pm": "sds011"},
                                              "units": {"LAeq": "dB(A)", "LZeq": "dB", "co2": "ppm", "cov": "1",
                                                        "press": "hPa", "pm25": "ug/m3", "rh": "%", "temp": "degC"}}


MIGRATE = "import sys; from meetkit_gateway.store import Store; Store(sys.argv[1]).close()"


def moved(path: Path) -> bool:
    """A slice of the records' move is committed: its progress mark is in `meta` (read-only, as
    another process may; locked or not there yet: False)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05)
        try:
            return con.execute("SELECT 1 FROM meta WHERE key = 'compact_upto'").fetchone() is not None
        finally:
            con.close()
    except sqlite3.Error:
        return False


def test_a_kill_at_any_moment_of_the_migration_loses_and_doubles_nothing(older, tmp_path):
    """SIGKILL at random moments of the migration (a power cut as far as SQLite is concerned: what
    was not committed is gone), then a start: it goes on from where it was."""
    path = copy_of(older, tmp_path)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", MIGRATE, str(path)], check=True, capture_output=True)
    whole = time.monotonic() - started
    rng = random.Random(17)
    phases = []
    for k in range(6):
        path = copy_of(older, tmp_path)
        for side in ("-wal", "-shm"):
            Path(f"{path}{side}").unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, "-c", MIGRATE, str(path)], stderr=subprocess.PIPE)
        if k % 2 == 0:
            # aimed: right after a slice of the move is committed (its progress mark readable), so
            # that kills land in the middle of the move on a fast machine and a slow one alike
            wait_for(lambda: moved(path) or p.poll() is not None, 30 + 10 * whole,
                     "the first slice of the move committed", step=0.002)
        else:
            time.sleep(rng.uniform(0.2, 1.0) * whole)  # waits on nothing on purpose: a kill at a random moment
        p.kill()
        p.communicate()
        con = sqlite3.connect(path)
        try:
            tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            mark = con.execute("SELECT value FROM meta WHERE key = 'compact_upto'").fetchone()
        finally:
            con.close()
        phases.append("done" if "readings" not in tables else "moving" if mark else "before")
        check(path, older[1])
    print("killed:", phases)
    assert "moving" in phases  # at least one kill came in the middle of moving the records
