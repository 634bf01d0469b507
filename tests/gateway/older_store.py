"""An "older store": the current schema as a gateway before issue 13 could leave it, with the audit's
implausible times and counters beside ordinary records, for the tests of every reader.

`build(path, t0, implausible=True)` fills it through the Store API (batches of `payload.Batch` made
directly: ingest refuses such records now, an older gateway did not, nor values no JSON can carry,
infinities) and raw SQL (a reception time or a node status from a clock that was wrong). With
`implausible=False` it holds the same ordinary records and values and nothing else: a reader must
give the same for both (`CLEAN` is what it must leave out).

Ordinary records (times from `t0`, every one plausible):
- ams-001: the contract's example batch (seq 16 without ts, its start derived from seq 17), moved to t0;
- ams-002: three records of pm25 and temp;
- ams-004: one record with REAL values an older gateway could keep (huge, tiny, negative, an
  infinity, n of 2**63-1, RH below 0), plausible times.

Implausible records (`IMPLAUSIBLE` of them), in the same nodes and one of their own:
- ams-001 boot 9: ts = 0, 4102444800 (2100), 2**62, 10**13 (the audit's);
- ams-001 boot 10: no ts, its start derived from a ts of 0 (-3600), and that record;
- ams-002 boot 7: ts = 2**63-1, and a record after it without ts, whose derived start overflows
  SQLite's integers to a REAL (9.223372036854776e+18);
- ams-002 boot 8: a plausible ts with dur = 10**9;
- ams-003: boot = 2**63-1, seq = 2**63-1 (plausible ts), and an up of 2**63-1 without ts before a
  record with ts = 10**13 (a derived start that overflows to a REAL).
Every implausible record has pm25 and temp, so a reader that let one through would show it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from meetkit_gateway import payload
from meetkit_gateway.payload import Batch, Record, Value
from meetkit_gateway.store import Store

from .conftest import EXAMPLE, batch, encode

T0 = 1795510800  # 2026-11-24T09:00:00Z
#: records an export or a forwarder must leave out (each has a start, some derived)
IMPLAUSIBLE = 4 + 2 + 2 + 1 + 4
#: ...and the one record without a known start that is in the older store only (received far in
#: the future by a wrong clock: it must not hold forwarding back)
UNTIMED_FUTURE = 1
INF = float("inf")
#: ams-004's reading values as the store holds them (after the raw SQL)
ODD_VALUES = {"pm25": (1e308, -1e308, 5e-324, 2**63 - 1), "temp": (INF, -INF, -INF, 12), "rh": (-5.0, -5.0, -5.0, 12)}


def _rec(seq: int, ts: int | None, up: int | None = None, dur: int = 60, pm25: float = 7.5) -> Record:
    return Record(seq, ts, seq * 60 if up is None else up, dur,
                  {"pm25": Value(pm25, pm25 - 1, pm25 + 1, 58), "temp": Value(11.0, 10.5, 11.5, 12)})


def _batch(node: str, boot: int, *records: Record) -> Batch:
    return Batch(node, boot, "0.1.0", "esp32-devkitc", {"pm": "pms5003", "climate": "bme280"},
                 {"pm25": "ug/m3", "temp": "degC"}, records)


def ordinary(t0: int) -> list[dict[str, Any]]:
    """The ordinary batches, as nodes send them, with times from t0."""
    ex = copy.deepcopy(EXAMPLE)
    ex["recs"][1]["ts"] = t0
    odd_values = batch(node="ams-004", boot=1, seqs=[0], ts0=t0)
    odd_values["units"]["rh"] = "%"
    odd_values["recs"][0]["rh"] = [50.0, 50.0, 50.0, 12]  # made -5 below
    return [ex, batch(node="ams-002", boot=3, seqs=range(3), ts0=t0), odd_values]


def implausible(t0: int) -> list[Batch]:
    big = 2**63 - 1
    return [
        _batch("ams-001", 9, _rec(0, 0), _rec(1, 4102444800), _rec(2, 2**62), _rec(3, 10**13)),
        _batch("ams-001", 10, _rec(0, None, up=0), _rec(1, 0, up=3600)),
        _batch("ams-002", 7, _rec(0, big, up=0), _rec(1, None, up=60)),
        _batch("ams-002", 8, _rec(0, t0, dur=10**9)),
        _batch("ams-003", big, _rec(0, t0)),
        _batch("ams-003", 1, _rec(big, t0, up=0)),
        _batch("ams-003", 2, _rec(0, None, up=big), _rec(1, 10**13, up=0)),
    ]


def build(path: Path, t0: int = T0, *, implausible_too: bool = True, received_at: float | None = None) -> None:
    """Fill the store at `path` (made if missing) as the module's docstring says."""
    odd = implausible(t0) if implausible_too else []
    with Store(path) as s:
        if implausible_too:  # first: a record without ts whose node never sent one, stamped by a
            # clock set to the far future (it must not hold back forwarding what comes after it)
            s.add_batch(_batch("ams-003", 3, _rec(0, None)), 1e308)
        # ordinary and implausible batches interleaved, as the records of one fleet arrive
        for doc, mixed in zip(ordinary(t0), (odd[:3], odd[3:5], odd[5:])):
            b = payload.parse_batch(encode(doc), doc["node"])
            if b.node == "ams-004":  # the values an older gateway could keep, in REAL columns
                (rec,) = b.records
                b = dataclasses.replace(b, records=(dataclasses.replace(
                    rec, values={**rec.values, **{q: Value(*v) for q, v in ODD_VALUES.items()}}),))
            s.add_batch(b, received_at)
            for b in mixed:
                s.add_batch(b, received_at)
        db = s.db
        if implausible_too:  # what a node's status and the gateway's alarms may say with a wrong clock
            db.execute("INSERT INTO nodes (node, online, boot, fw, up, rssi, status_at, last_seen, dropped)"
                       " VALUES ('ams-003', 1, ?, '0.1.0', ?, ?, -1e308, 1e308, ?)"
                       " ON CONFLICT (node) DO UPDATE SET online = 1, boot = excluded.boot, up = excluded.up,"
                       " rssi = excluded.rssi, status_at = excluded.status_at, last_seen = excluded.last_seen,"
                       " dropped = excluded.dropped", (2**63 - 1, 2**63 - 1, -2**63, 2**63 - 1))
            db.execute("UPDATE nodes SET last_seen = ? WHERE node = 'ams-002'", (INF,))
            db.execute("INSERT INTO alarms (at, code, active, reason) VALUES (1e13, 'disk_full', 1, 'test')")


def starts(path: Path) -> dict[tuple[str, int, int], Any]:
    """(node, boot, seq) -> start as stored, to check the fixture is what it says."""
    with Store(path, readonly=True) as s:
        return {(n, b, q): t for n, b, q, t in s.db.execute("SELECT node, boot, seq, start FROM records")}

