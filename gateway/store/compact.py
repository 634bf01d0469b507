"""The second half of migration 11: the records of the older layout (`records` and `readings`) moved into
`recs` (a record's readings in one BLOB, values.py) and `boots`, keeping every record's id, times,
`received_at`, `err`, and every reading's values, n, unit and flags exactly.

Safe against a power cut at any moment: the records move in slices of `SLICE`, each ONE
transaction that writes them into `recs` and moves the mark `meta.compact_upto` (the last id moved)
past them, so after a cut the next start goes on from the mark and no record is moved twice or
left out. The old tables are dropped, and `records` made a view, in one last transaction.

Time: bench/store.py measures it (`store_compact_migration_records_per_s`): the gateway's start
waits for it (it takes no data meanwhile: the nodes keep theirs, the broker its session), telling
systemd to extend its start timeout as it goes, and logs its progress."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from ..payload import QUANTITIES
from .keys import Keys, dumps
from .schema import RECORDS_VIEW
from .values import CODES, encode, encode_fast, unit_of

log = logging.getLogger(__name__)

#: records moved per transaction
SLICE = 2000
_DEFAULT_UNITS = {k: q.unit for k, q in QUANTITIES.items()}
_LOG_EVERY_S = 5.0


def pending(db: sqlite3.Connection) -> bool:
    """Schema 9's `readings` is still there: its records are not all moved yet."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'readings'").fetchone() is not None


def _extend_start_timeout() -> None:
    # Under systemd (Type=notify), a start longer than TimeoutStartSec is killed: ask for more.
    from ..systemd import Notifier

    Notifier().notify(f"EXTEND_TIMEOUT_USEC={int(4 * _LOG_EVERY_S * 1e6)}")


def convert(db: sqlite3.Connection, path: Path, slice_: int = SLICE,
            progress: Callable[[int, int], None] | None = None) -> None:
    """Move every record left in `records` to `recs`, slice by slice, then drop the old tables."""
    if not pending(db):
        return
    keys = Keys(db)
    left = db.execute("SELECT count(*) FROM records WHERE id > ?", (_mark(db),)).fetchone()[0]
    if left:
        log.warning("%s: moving %d records to the compact layout of schema 11 (takes a while for a big "
                    "store; the gateway starts taking data once it is done)", path, left)
    started = logged = time.monotonic()
    moved = 0
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            n = _move_slice(db, keys, slice_)
            if not n:
                db.execute("DROP TABLE readings")
                db.execute("DROP TABLE records")
                db.execute(RECORDS_VIEW)
                db.execute("DELETE FROM meta WHERE key = 'compact_upto'")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            keys.forget()
            raise
        if not n:
            break
        moved += n
        if progress is not None:
            progress(moved, left)
        if time.monotonic() - logged >= _LOG_EVERY_S:
            logged = time.monotonic()
            _extend_start_timeout()
            log.info("%s: %d of %d records moved to the compact layout", path, moved, left)
    if moved:
        log.warning("%s: %d records moved to the compact layout in %.1f s", path, moved, time.monotonic() - started)


def _mark(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'compact_upto'").fetchone()
    return 0 if row is None else int(row[0])


def _move_slice(db: sqlite3.Connection, keys: Keys, slice_: int) -> int:
    """One slice of records after the mark into `recs`, the mark after them; how many."""
    after = _mark(db)
    recs = db.execute(
        "SELECT id, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err FROM records"
        " WHERE id > ? ORDER BY id LIMIT ?", (after, slice_)).fetchall()
    if not recs:
        return 0
    last = recs[-1][0]
    readings: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for rid, *reading in db.execute(
            "SELECT record_id, quantity, avg, min, max, n, unit, flags FROM readings"
            " WHERE record_id > ? AND record_id <= ?", (after, last)):
        readings[rid].append(reading)
    rows = []
    for rid, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err in recs:
        nid = keys.node_id(node)
        mine = readings.get(rid, [])
        bid = _boot(db, keys, nid, boot, fw, board, sensors, {q: unit for q, *_, unit, _ in mine})  # type: ignore[misc]
        units = keys.boot(bid).units
        coded = _as_ingest(mine, units)
        if coded is None:
            items = [(q, (avg, lo, hi, n), flags, None if unit == unit_of(units, q) else unit)
                     for q, avg, lo, hi, n, unit, flags in mine]
            shape, vals = encode(items)
        else:
            shape, vals = coded
        rows.append((rid, nid, boot, seq, ts, start, up, dur, received_at, bid, err, len(mine), keys.shape_id(shape),
                     vals))
    db.executemany("INSERT INTO recs (id, node, boot, seq, ts, start, up, dur, received_at, env, err, nv, shape, vals)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("INSERT INTO meta (key, value) VALUES ('compact_upto', ?)"
               " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(last),))
    return len(recs)


def _as_ingest(readings: list[tuple[Any, ...]], units: dict[str, str]) -> tuple[bytes, bytes] | None:
    """Ingest's quick encoding of a record's readings as schema 9 held them, when they are as
    ingest writes them (known quantities, the boot's units, flags as written); None otherwise."""
    values: dict[str, Any] = {}
    flags: dict[str, tuple[str, ...]] = {}
    for q, avg, lo, hi, n, unit, fl in sorted(readings, key=lambda r: _ORDER.get(r[0], 99)):
        if q not in _ORDER or unit != unit_of(units, q) or (lo is None) != (hi is None) or (lo is None) != (n is None):
            return None
        values[q] = None if avg is None and lo is None and hi is None and n is None else (avg, lo, hi, n)
        if fl:
            flags[q] = tuple(fl.split(","))
    return encode_fast(values, flags)


_ORDER = {q: i for i, q in enumerate(CODES)}


def _boot(db: sqlite3.Connection, keys: Keys, nid: int, boot: int, fw: str, board: str, sensors: str,
          units: dict[str, str]) -> int:
    """The boots row of an old record's envelope: the first one moved of its node, boot, fw, board
    and sensors (its units those of that record's readings; a reading in another unit keeps its own)."""
    row = db.execute("SELECT min(id) FROM boots WHERE node = ? AND boot = ? AND fw = ? AND board = ? AND sensors = ?",
                     (nid, boot, fw, board, sensors)).fetchone()
    if row[0] is not None:
        return row[0]
    return keys.boot_id(nid, boot, fw, board, sensors, dumps(units))
