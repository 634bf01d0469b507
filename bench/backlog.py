"""A gateway store holding a large backlog, built fast, for the forwarding benchmark.

The schema is the real one: `Store` makes it. The rows are then made by SQLite itself (a recursive
CTE, INSERT ... SELECT), not by a Python loop over millions of readings, so 3 million readings take
seconds. What they look like is what the gateway stores from nodes with a PMS5003, a BME280 and an
ICS43434 (docs/payload.md): `NODES` nodes taking turns (the ids interleave as they do when many nodes
report), one record a minute each, 12 readings per record: 7 summaries (avg, min, max, n) and 5
plain numbers (avg only), a quality flag on some, every record timed, the newest an hour old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from meetkit_gateway.store import Store

NODES = 50

# (quantity, unit, summary?, typical value)
QUANTITIES = [
    ("pm1", "ug/m3", True, 6.0), ("pm25", "ug/m3", True, 10.0), ("pm10", "ug/m3", True, 16.0),
    ("temp", "degC", True, 12.0), ("rh", "%", True, 78.0), ("press", "hPa", True, 1013.0),
    ("LAeq", "dB", True, 58.0), ("LA10", "dB", False, 61.0), ("LA50", "dB", False, 56.0),
    ("LA90", "dB", False, 52.0), ("LZeq", "dB", False, 66.0), ("cov", "1", False, 1.0),
]
SUMMARIES = sum(1 for q in QUANTITIES if q[2])


@dataclass(frozen=True)
class Backlog:
    path: Path
    records: int
    readings: int
    summaries: int  # readings with min, max and n (the rest are plain numbers: avg only)
    first_start: int
    last_start: int


def build(path: Path, readings: int, nodes: int = NODES) -> Backlog:
    """A new store at `path` with `readings` readings (rounded down to whole records)."""
    records = readings // len(QUANTITIES)
    per_node = -(-records // nodes)
    last = int(time.time()) // 60 * 60 - 3600  # VictoriaMetrics takes no points from the future
    first = last - (per_node - 1) * 60
    store = Store(path)
    db = store.db
    db.execute("PRAGMA synchronous = OFF")  # a benchmark's fixture: nothing to lose on a crash
    with store.transaction():
        db.execute("CREATE TEMP TABLE quantity (name TEXT, unit TEXT, summary INTEGER, typical REAL)")
        db.executemany("INSERT INTO quantity VALUES (?, ?, ?, ?)", QUANTITIES)
        db.execute(
            """
            WITH RECURSIVE i(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM i WHERE k + 1 < :records)
            INSERT INTO records (id, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err)
            SELECT k + 1, printf('bench-%03d', k % :nodes), 1, k / :nodes, :first + 60 * (k / :nodes),
                   :first + 60 * (k / :nodes), 60 * (k / :nodes), 60, :first + 60 * (k / :nodes) + 62,
                   '0.3.0', 'esp32-devkitc', '{"climate":"bme280","mic":"ics43434","pm":"pms5003"}',
                   CASE WHEN k % 97 = 0 THEN '{"pm":1}' END
            FROM i
            """,
            {"records": records, "nodes": nodes, "first": first},
        )
        # Values wander around the typical one (a hash of record and quantity); PM at high
        # humidity is flagged as the firmware does.
        db.execute(
            """
            INSERT INTO readings (record_id, quantity, avg, min, max, n, unit, flags)
            SELECT r.id, q.name,
                   round(q.typical * (1 + ((r.id * 7919 + q.rowid * 104729) % 401 - 200) / 1000.0), 2),
                   CASE WHEN q.summary THEN round(q.typical * 0.8, 2) END,
                   CASE WHEN q.summary THEN round(q.typical * 1.25, 2) END,
                   CASE WHEN q.summary THEN CASE WHEN q.name IN ('temp', 'rh', 'press') THEN 12 ELSE 58 END END,
                   q.unit,
                   CASE WHEN q.name IN ('pm25', 'pm10') AND r.id % 9 = 0 THEN 'rh_high' ELSE '' END
            FROM records AS r CROSS JOIN quantity AS q
            ORDER BY r.id, q.name
            """
        )
        # every node that sent a batch has a row (export and the status page start from them)
        db.execute("INSERT INTO nodes (node, last_seen) SELECT node, max(received_at) FROM records GROUP BY node")
        db.execute("INSERT INTO counters (name, value) VALUES ('records', ?)", (records,))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return Backlog(path, records, records * len(QUANTITIES), records * SUMMARIES, first, last)
