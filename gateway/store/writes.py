"""Ingest's writes: a group of batches' records and readings (`add_batches`), a node's status, an
alarm, the retained messages already handled, the values a replayed dead letter brings back."""

from __future__ import annotations

import json
import time
from typing import Sequence

from ..payload import QUANTITIES, REFUSED, Batch, Status
from .base import Base
from .rows import Added

_UNITS = {q.key: q.unit for q in QUANTITIES.values()}
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
        boot for the seqs already held, one INSERT per `_ROWS_PER_INSERT` rows. A statement per
        batch and per row was most of the time a batch took, also because SQLite lets go of the
        GIL at every statement, to the MQTT thread, and waits to get it back."""
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for batch, _ in batches:
            seqs = [rec.seq for rec in batch.records]
            if not seqs:
                continue
            span = spans.get((batch.node, batch.boot))
            lo, hi = min(seqs), max(seqs)
            spans[batch.node, batch.boot] = (lo, hi) if span is None else (min(span[0], lo), max(span[1], hi))
        out: list[Added] = []
        with self._writing():
            held = {
                key: {seq for (seq,) in self.db.execute(
                    "SELECT seq FROM records WHERE node = ? AND boot = ? AND seq BETWEEN ? AND ?", (*key, lo, hi))}
                for key, (lo, hi) in spans.items()
            }
            next_id = self._next_record_id()
            # The rows go flat, one parameter after the other, as a multi-row INSERT takes them.
            records: list[object] = []
            readings: list[object] = []
            stored_to: set[tuple[str, int]] = set()  # (node, boot) with records stored now
            seen: dict[str, tuple[float, int | None]] = {}  # node -> (last received, last `dropped` said)
            for batch, received_at in batches:
                node, boot, held_now = batch.node, batch.boot, held.setdefault((batch.node, batch.boot), set())
                sensors = json.dumps(dict(batch.sensors), separators=(",", ":"), sort_keys=True)
                units = {**_UNITS, **batch.units}  # as `batch.unit(q)`, looked up once
                stored = 0
                for rec in batch.records:
                    if rec.seq in held_now:
                        continue
                    held_now.add(rec.seq)  # a seq twice: the second is a duplicate
                    err = json.dumps(dict(rec.err), separators=(",", ":"), sort_keys=True) if rec.err else None
                    records += (next_id, node, boot, rec.seq, rec.ts, rec.ts, rec.up, rec.dur,
                                received_at, batch.fw, batch.board, sensors, err)
                    values, flags = rec.values, rec.flags
                    for q, v in values.items():  # a plain number has only avg: min, max, n stay NULL
                        if q in QUANTITIES:
                            fl = flags.get(q)
                            readings += (next_id, q, *(v or _NO_VALUE), units[q], ",".join(fl) if fl else "")
                    for q, fl in flags.items():  # flags without a value
                        if q not in values and q in QUANTITIES:
                            readings += (next_id, q, *_NO_VALUE, units[q], ",".join(fl))
                    next_id += 1
                    stored += 1
                if stored:
                    stored_to.add((node, boot))
                last = seen.get(node)
                seen[node] = (received_at if last is None else max(last[0], received_at),
                              batch.dropped if batch.dropped is not None or last is None else last[1])
                out.append(Added(stored, len(batch.records) - stored))
            self._insert_rows(
                "INSERT INTO records (id, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err)",
                13, records,
            )
            self._insert_rows("INSERT INTO readings (record_id, quantity, avg, min, max, n, unit, flags)", 8, readings)
            for node, boot in stored_to:
                self._derive_start(node, boot)
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
            "SELECT max(coalesce((SELECT max(id) FROM records), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pruned_upto'), 0)) + 1"
        ).fetchone()[0]

    def _derive_start(self, node: str, boot: int) -> None:
        # Records of a boot without `ts` get their start from a record of the same boot that has
        # one (payload.md: "with one record of the same boot that has ts, any ts of that boot
        # follows"): the next such record, else the previous one. Runs whenever records of that
        # boot arrive, so a later batch with a clock fills in the earlier records.
        ref = """(SELECT ref.ts + (r.up - ref.up) FROM records AS ref
                  WHERE ref.node = r.node AND ref.boot = r.boot AND ref.ts IS NOT NULL
                  AND ref.seq {op} r.seq ORDER BY ref.seq {order} LIMIT 1)"""
        self.db.execute(
            f"UPDATE records AS r SET start = coalesce({ref.format(op='>', order='ASC')}, "
            f"{ref.format(op='<', order='DESC')}) WHERE r.node = ? AND r.boot = ? AND r.start IS NULL",
            (node, boot),
        )

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
        units = {**_UNITS, **batch.units}
        restored = 0
        with self._writing():
            for rec in batch.records:
                row = self.db.execute("SELECT id FROM records WHERE node = ? AND boot = ? AND seq = ?",
                                      (batch.node, batch.boot, rec.seq)).fetchone()
                if row is None:
                    continue
                have = dict(self.db.execute("SELECT quantity, flags FROM readings WHERE record_id = ?", (row[0],)))
                for q in rec.quantities():
                    fl = rec.flags.get(q, ())
                    if q not in QUANTITIES or REFUSED in fl:
                        continue
                    if q in have and REFUSED not in have[q].split(","):
                        continue
                    v = rec.values.get(q)
                    self.db.execute(
                        "INSERT OR REPLACE INTO readings (record_id, quantity, avg, min, max, n, unit, flags)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (row[0], q, *(v or _NO_VALUE), units[q], ",".join(fl)))
                    restored += 1
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
