"""A store of schema 9, the layout before the compact one (one `records` row per record with its
envelope, one `readings` row per quantity), written and read as gateway/store did then: what the
migration to schema 11 starts from (tests/gateway/test_compact_migration.py) and the OLD side of
bench/store.py's side-by-side timings of the readers' queries.

`create` makes the file with the gateway's own first nine migrations; `add_batches` is schema 9's
`Store.add_batches` (its rows, its multi-row INSERTs) without the nodes' status; the `*_sql`
constants are schema 9's reader queries, `reading` makes their rows into the gateway's `Reading`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterator, Sequence

from meetkit_gateway.payload import QUANTITIES, Batch
from meetkit_gateway.store import MIGRATIONS, Reading
from meetkit_gateway.store.rows import make_reading, order

VERSION = 9
_UNITS = {q.key: q.unit for q in QUANTITIES.values()}
_NO_VALUE = (None, None, None, None)

#: schema 9's `READING_COLUMNS`
COLUMNS = ("r.id, r.node, r.start, r.dur, r.board, r.fw, g.quantity, g.avg, g.min, g.max, g.n, g.unit,"
           " g.flags, r.sensors, r.boot, r.seq")
EXPORT_SQL = (f"SELECT {COLUMNS} FROM records AS r JOIN readings AS g ON g.record_id = r.id"
              " WHERE r.node = ? AND r.start >= ? AND r.start < ? ORDER BY r.start, r.id")
READINGS_SQL = (f"SELECT {COLUMNS} FROM readings AS g JOIN records AS r ON r.id = g.record_id"
                " WHERE r.start IS NOT NULL AND r.start >= ?")
SERIES_SQL = ("SELECT r.start, g.quantity, g.avg FROM records AS r JOIN readings AS g ON g.record_id = r.id"
              " WHERE r.node = ? AND r.start >= ? AND g.quantity IN ({marks}) ORDER BY r.start, r.boot, r.seq")
FORWARD_SQL = (f"SELECT {COLUMNS} FROM records AS r JOIN readings AS g ON g.record_id = r.id"
               " WHERE r.id > ? AND r.id <= ? AND r.start IS NOT NULL ORDER BY r.id, g.quantity LIMIT ?")


def create(path: Path) -> sqlite3.Connection:
    """A new store of schema 9, as the gateway of that schema made it (WAL, incremental auto-vacuum)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA auto_vacuum = INCREMENTAL")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("BEGIN")
    for m in MIGRATIONS[:VERSION]:
        for statement in m.split(";"):
            if statement.strip():
                con.execute(statement)
    con.execute(f"PRAGMA user_version = {VERSION}")
    con.execute("COMMIT")
    return con


def add_batches(con: sqlite3.Connection, batches: Sequence[tuple[Batch, float]]) -> None:
    """Schema 9's rows of valid batches (duplicates are not looked for: give each record once),
    in one transaction, and each node's row."""
    con.execute("BEGIN IMMEDIATE")
    next_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM records").fetchone()[0]
    records: list[tuple] = []
    readings: list[tuple] = []
    seen: dict[str, float] = {}
    for batch, received_at in batches:
        sensors = json.dumps(dict(batch.sensors), separators=(",", ":"), sort_keys=True)
        units = {**_UNITS, **batch.units}
        for rec in batch.records:
            err = json.dumps(dict(rec.err), separators=(",", ":"), sort_keys=True) if rec.err else None
            records.append((next_id, batch.node, batch.boot, rec.seq, rec.ts, rec.ts, rec.up, rec.dur, received_at,
                            batch.fw, batch.board, sensors, err))
            for q, v in rec.values.items():
                fl = rec.flags.get(q)
                readings.append((next_id, q, *(v or _NO_VALUE), units[q], ",".join(fl) if fl else ""))
            for q, fl in rec.flags.items():
                if q not in rec.values:
                    readings.append((next_id, q, *_NO_VALUE, units[q], ",".join(fl)))
            next_id += 1
        seen[batch.node] = max(seen.get(batch.node, received_at), received_at)
    con.executemany("INSERT INTO records (id, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
    con.executemany("INSERT INTO readings (record_id, quantity, avg, min, max, n, unit, flags)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", readings)
    con.executemany("INSERT INTO nodes (node, last_seen) VALUES (?, ?) ON CONFLICT (node) DO UPDATE SET"
                    " last_seen = max(last_seen, excluded.last_seen)", seen.items())
    con.execute("COMMIT")


def readings(con: sqlite3.Connection, since: float) -> list[Reading]:
    """Schema 9's `Store.readings(since=...)`: every node's, sorted as the CLI shows them."""
    out = list(map(make_reading, con.execute(READINGS_SQL, (since,))))
    out.sort(key=lambda g: (g.node, g.start, g.boot, g.seq, order(g.quantity)))
    return out


def export(con: sqlite3.Connection, node: str, since: float, until: float) -> Iterator[Reading]:
    return map(make_reading, con.execute(EXPORT_SQL, (node, since, until)))


def series(con: sqlite3.Connection, node: str, since: float, quantities: tuple[str, ...]) -> list[tuple]:
    sql = SERIES_SQL.format(marks=",".join("?" * len(quantities)))
    return con.execute(sql, (node, since, *quantities)).fetchall()


def forward(con: sqlite3.Connection, after: int, upto: int, limit: int) -> list[Reading]:
    return list(map(make_reading, con.execute(FORWARD_SQL, (after, upto, limit))))


def batches(nodes: int, records: int, t0: int) -> list[tuple[Batch, float]]:
    """`nodes` nodes' `records` firmware-made records each (tools/dev/batches.py: the 12 quantities,
    batches of about five), parsed, each with its reception a second after its last interval."""
    from meetkit_gateway.payload import parse_batch

    from .batches import streams

    now = t0 + records * 60 + 3600
    out = []
    for stream in streams(nodes, records, t0):
        for msg in stream.messages:
            b = parse_batch(msg, stream.node, now)
            out.append((b, b.records[-1].ts + 61.25))  # type: ignore[operator]
    return out


def fill(con: sqlite3.Connection, nodes: int, records: int, t0: int, group: int = 200) -> int:
    """`batches(nodes, records, t0)` stored as schema 9 did; the records stored."""
    todo = batches(nodes, records, t0)
    for k in range(0, len(todo), group):
        add_batches(con, todo[k:k + group])
    return sum(len(b.records) for b, _ in todo)
