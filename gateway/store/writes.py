"""Ingest's writes: a group of batches' records and readings (`add_batches`), a node's status, an
alarm, the retained messages already handled, the values a replayed dead letter brings back."""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from ..payload import QUANTITIES, REFUSED, Batch, Status
from .base import Base
from .keys import dumps
from .rows import Added
from .values import decode, encode, encode_record, unit_of

_NO_VALUE = (None, None, None, None)  # avg, min, max, n of a quantity without a value
#: Rows in one INSERT: at most 999 parameters (SQLite builds before 3.32), and few statements
#: to prepare (a last, shorter statement has each count up to this one).
_ROWS_PER_INSERT = 32
#: Multi-row INSERT statements by (insert, rows).
_MULTI_ROW_SQL: dict[tuple[str, int], str] = {}


class Writes(Base):
    def add_batch(self, batch: Batch, received_at: float | None = None) -> Added:
        """Store a valid batch's records; records already stored count as duplicates."""
        return self.add_batches([(batch, time.time() if received_at is None else received_at)])[0]

    def add_batches(self, batches: Sequence[tuple[Batch, float]]) -> list[Added]:
        """Store valid batches (each with when it was received), in order, as `add_batch` one
        after the other would; what each did with its records.

        A few statements for all of them (the writer passes a whole group): one look per node and
        boot for the seqs already held, one INSERT per `_ROWS_PER_INSERT` records, a record's
        readings in its row (values.py). A statement per batch and per row was most of the time a
        batch took, also because SQLite lets go of the GIL at every statement, to the MQTT thread,
        and waits to get it back."""
        keys = self.keys
        spans: dict[tuple[int, int], tuple[int, int]] = {}
        out: list[Added] = []
        with self._writing():
            nids = {}
            for batch, _ in batches:
                recs = batch.records
                if not recs:
                    continue
                nid = nids.get(batch.node)
                if nid is None:
                    nid = nids[batch.node] = keys.node_id(batch.node)
                span = spans.get((nid, batch.boot))
                lo, hi = min(r.seq for r in recs), max(r.seq for r in recs)
                spans[nid, batch.boot] = (lo, hi) if span is None else (min(span[0], lo), max(span[1], hi))
            held = {
                key: {seq for (seq,) in self.db.execute(
                    "SELECT seq FROM recs WHERE node = ? AND boot = ? AND seq BETWEEN ? AND ?", (*key, lo, hi))}
                for key, (lo, hi) in spans.items()
            }
            next_id = self._next_record_id()
            # The rows go flat, one parameter after the other, as a multi-row INSERT takes them.
            records: list[object] = []
            stored_to: set[tuple[int, int]] = set()  # (node id, boot) with records stored now
            seen: dict[str, tuple[float, int | None]] = {}  # node -> (last received, last `dropped` said)
            shapes: dict[bytes, int] = {}
            for batch, received_at in batches:
                node, boot = batch.node, batch.boot
                stored = 0
                if batch.records:
                    nid = nids[node]
                    held_now = held[nid, boot]
                    env = keys.batch_boot(nid, boot, batch.fw, batch.board, batch.sensors, batch.units)
                    for rec in batch.records:
                        if rec.seq in held_now:
                            continue
                        held_now.add(rec.seq)  # a seq twice: the second is a duplicate
                        err = dumps(rec.err) if rec.err else None
                        enc = rec.enc  # the quick path's, made while it read the values
                        shape, vals, nv = enc if enc is not None else encode_record(rec.values, rec.flags)
                        sid = shapes.get(shape)
                        if sid is None:
                            sid = shapes[shape] = keys.shape_id(shape)
                        records += (next_id, nid, boot, rec.seq, rec.ts, rec.ts, rec.up, rec.dur,
                                    received_at, env, err, nv, sid, vals)
                        next_id += 1
                        stored += 1
                    if stored:
                        stored_to.add((nid, boot))
                last = seen.get(node)
                seen[node] = (received_at if last is None else max(last[0], received_at),
                              batch.dropped if batch.dropped is not None or last is None else last[1])
                out.append(Added(stored, len(batch.records) - stored))
            self._insert_rows(
                "INSERT INTO recs (id, node, boot, seq, ts, start, up, dur, received_at, env, err, nv, shape, vals)",
                14, records,
            )
            for nid, boot in stored_to:
                self._derive_start(nid, boot)
            self.db.executemany(
                "INSERT INTO nodes (node, last_seen, dropped) VALUES (?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET"
                " last_seen = coalesce(max(last_seen, excluded.last_seen), excluded.last_seen),"
                " dropped = coalesce(excluded.dropped, dropped)",
                [(node, at, dropped) for node, (at, dropped) in seen.items()],
            )
            self.bump("batches", len(batches))
            self.bump("records", sum(a.stored for a in out))
            self.bump("duplicates", sum(a.duplicates for a in out))
        return out

    def _insert_rows(self, insert: str, width: int, flat: list[object]) -> None:
        """`insert` ("INSERT INTO t (a, b)") of the rows in `flat` (`width` values each, one row
        after the other), `_ROWS_PER_INSERT` rows per statement: a statement per row costs a third
        more in SQLite. Fixed-size statements: SQLite prepares each once (the connection caches them)."""
        step = _ROWS_PER_INSERT * width
        for i in range(0, len(flat), step):
            part = flat[i:i + step] if len(flat) > step else flat
            rows = len(part) // width
            sql = _MULTI_ROW_SQL.get((insert, rows))
            if sql is None:
                marks = "(" + ", ".join("?" * width) + ")"
                sql = _MULTI_ROW_SQL[insert, rows] = f"{insert} VALUES {', '.join([marks] * rows)}"
            self.db.execute(sql, part)

    def _next_record_id(self) -> int:
        # Above every id there is and every id ever pruned: SQLite alone would start again at 1
        # once all records were pruned, behind the forward cursors, which would then skip them.
        return self.db.execute(
            "SELECT max(coalesce((SELECT max(id) FROM recs), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pruned_upto'), 0)) + 1"
        ).fetchone()[0]

    def _derive_start(self, nid: int, boot: int) -> None:
        # Records of a boot without `ts` get their start from a record of the same boot that has
        # one (payload.md: "with one record of the same boot that has ts, any ts of that boot
        # follows"): the next such record, else the previous one. Runs whenever records of that
        # boot arrive, so a later batch with a clock fills in the earlier records.
        ref = """(SELECT ref.ts + (r.up - ref.up) FROM recs AS ref
                  WHERE ref.node = r.node AND ref.boot = r.boot AND ref.ts IS NOT NULL
                  AND ref.seq {op} r.seq ORDER BY ref.seq {order} LIMIT 1)"""
        self.db.execute(
            f"UPDATE recs AS r SET start = coalesce({ref.format(op='>', order='ASC')}, "
            f"{ref.format(op='<', order='DESC')}) WHERE r.node = ? AND r.boot = ? AND r.start IS NULL",
            (nid, boot),
        )

    def envelope_of(self, node: str, boot: int) -> dict[str, Any] | None:
        """{"fw", "board", "sensors", "units"} of `node`'s `boot` as its newest stored batch carried
        them, or None when no record of that boot was stored (cached: see keys.py)."""
        nid = self.keys.node_id(node, make=False)
        if nid is None:
            return None
        bid = self.keys.latest_boot(nid, boot)
        if bid is None:
            return None
        b = self.keys.boot(bid)
        return {"fw": b.fw, "board": b.board, "sensors": json.loads(b.sensors), "units": dict(b.units)}

    def retained_seen(self, topic: str, digest: bytes) -> bool:
        """This retained message was handled before (the broker hands it over at every subscription)."""
        row = self.db.execute("SELECT digest FROM retained_seen WHERE topic = ?", (topic,)).fetchone()
        return row is not None and row[0] == digest

    def set_retained_seen(self, topic: str, digest: bytes, at: float) -> None:
        with self._writing():
            self.db.execute(
                "INSERT INTO retained_seen (topic, digest, at) VALUES (?, ?, ?) ON CONFLICT (topic)"
                " DO UPDATE SET digest = excluded.digest, at = excluded.at", (topic, digest, at))

    def restore_values(self, batch: Batch) -> int:
        """For records of `batch` that are stored already: write the values the store lacks or
        holds as refused (flag `refused`), as a replayed dead letter brings them after a fix; the
        values it holds are left as they are. Returns how many were written."""
        restored = 0
        with self._writing():
            nid = self.keys.node_id(batch.node, make=False)
            if nid is None:
                return 0
            for rec in batch.records:
                row = self.db.execute("SELECT id, env, shape, vals FROM recs WHERE node = ? AND boot = ? AND seq = ?",
                                      (nid, batch.boot, rec.seq)).fetchone()
                if row is None:
                    continue
                rid, env, sid, vals = row
                units = self.keys.boot(env).units
                have = {r[0]: r for r in decode(self.keys.shape(sid), vals, units)}
                for q in rec.quantities():
                    fl = rec.flags.get(q, ())
                    if q not in QUANTITIES or REFUSED in fl:
                        continue
                    if q in have and REFUSED not in have[q][6].split(","):
                        continue
                    unit = batch.unit(q)
                    have[q] = (q, *(rec.values.get(q) or _NO_VALUE), unit, ",".join(fl))
                    restored += 1
                items = [(q, (avg, lo, hi, n), flags, None if unit == unit_of(units, q) else unit)
                         for q, avg, lo, hi, n, unit, flags in have.values()]
                shape, vals = encode(items)
                self.db.execute("UPDATE recs SET shape = ?, vals = ?, nv = ? WHERE id = ?",
                                (self.keys.shape_id(shape), vals, len(items), rid))
        return restored

    def set_status(self, status: Status, received_at: float | None = None, *, live: bool = True) -> None:
        """Record a node's status. `live` is False for a retained message the broker replayed:
        it says what the node last reported, not that the node is there now."""
        received_at = time.time() if received_at is None else received_at
        with self._writing():
            self.db.execute(
                """
                INSERT INTO nodes (node, online, boot, fw, up, rssi, status_at, last_seen, mode, cfg, via, held)
                VALUES (:node, :online, :boot, :fw, :up, :rssi, :at, :seen, :mode, :cfg, :via, :held)
                ON CONFLICT (node) DO UPDATE SET
                    online = excluded.online,
                    boot = coalesce(excluded.boot, boot),
                    fw = coalesce(excluded.fw, fw),
                    up = coalesce(excluded.up, up),
                    rssi = coalesce(excluded.rssi, rssi),
                    mode = coalesce(excluded.mode, mode),
                    cfg = coalesce(excluded.cfg, cfg),
                    via = coalesce(excluded.via, via),
                    held = coalesce(excluded.held, held),
                    status_at = excluded.status_at,
                    last_seen = coalesce(max(last_seen, excluded.last_seen), last_seen, excluded.last_seen)
                """,
                {
                    "node": status.node, "online": int(status.online), "boot": status.boot,
                    "fw": status.fw, "up": status.up, "rssi": status.rssi, "at": received_at,
                    "seen": received_at if live else None, "mode": status.mode, "cfg": status.cfg,
                    "via": status.via, "held": status.held,
                },
            )
            self.bump("status")

    def add_alarm(self, at: float, code: str, active: bool, reason: str) -> None:
        """Keep an alarm; a raised one (`active`) is counted as `alarm.<code>`."""
        with self._writing():
            self.db.execute(
                "INSERT INTO alarms (at, code, active, reason) VALUES (?, ?, ?, ?)",
                (at, code, int(active), reason),
            )
            if active:
                self.bump(f"alarm.{code}")
