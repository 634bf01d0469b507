"""A gateway store holding a large backlog, built fast, for the forwarding benchmark.

The schema is the real one: `Store` makes it, and writes the records as ingest does (its
`add_batches`, without the broker and the checks: 3 million readings take seconds). What they look like is what the gateway stores from nodes with a PMS5003, a BME280 and an
ICS43434 (docs/payload.md): `NODES` nodes taking turns (the ids interleave as they do when many nodes
report), one record a minute each, 12 readings per record: 7 summaries (avg, min, max, n) and 5
plain numbers (avg only), a quality flag on some, every record timed, the newest an hour old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from meetkit_gateway.payload import Batch, Record, Value
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
    sensors = {"climate": "bme280", "mic": "ics43434", "pm": "pms5003"}
    units = {name: unit for name, unit, _, _ in QUANTITIES}
    store = Store(path)
    store.db.execute("PRAGMA synchronous = OFF")  # a benchmark's fixture: nothing to lose on a crash
    with store.transaction():
        todo: list[tuple[Batch, float]] = []
        for k in range(records):
            rid, seq, node = k + 1, k // nodes, f"bench-{k % nodes:03d}"
            # Values wander around the typical one (a hash of record and quantity); PM at high
            # humidity is flagged as the firmware does.
            values = {}
            for i, (name, _, summary, typical) in enumerate(QUANTITIES, 1):
                avg = round(typical * (1 + ((rid * 7919 + i * 104729) % 401 - 200) / 1000.0), 2)
                values[name] = (Value(avg, round(typical * 0.8, 2), round(typical * 1.25, 2),
                                      12 if name in ("temp", "rh", "press") else 58) if summary else Value(avg))
            flags = {"pm25": ("rh_high",), "pm10": ("rh_high",)} if rid % 9 == 0 else {}
            rec = Record(seq, first + 60 * seq, 60 * seq, 60, values, flags, {"pm": 1} if k % 97 == 0 else {})
            todo.append((Batch(node, 1, "0.3.0", "esp32-devkitc", sensors, units, (rec,)), first + 60 * seq + 62))
            if len(todo) == 1000:
                store.add_batches(todo)
                todo = []
        store.add_batches(todo)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return Backlog(path, records, records * len(QUANTITIES), records * SUMMARIES, first, last)
