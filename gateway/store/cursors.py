"""Forwarding (gateway/forward/): each target's cursor, the readings after it, the batches a target
refused for good, what the status page shows of a target. The forwarder decides what a batch is;
these read and write what it decided."""

from __future__ import annotations

from itertools import islice

from .base import Base
from .rows import RECORD_COLUMNS, Reading, TargetState, expand

#: A target's timed records in (after, upto], in record order.
_FORWARD_SQL = f"SELECT {RECORD_COLUMNS} FROM recs AS r WHERE r.id > ? AND r.id <= ? AND r.start IS NOT NULL ORDER BY r.id"
#: What `advance_cursor` may set besides the cursor.
_CURSOR_FIELDS = frozenset({"last_success", "last_error"})


class Cursors(Base):
    def add_cursor(self, target: str, at: float) -> None:
        """The target's cursor at 0 unless it has one (its first run)."""
        self.db.execute("INSERT INTO forward_cursors (target, last_id, updated_at) VALUES (?, 0, ?)"
                        " ON CONFLICT (target) DO NOTHING", (target, at))

    def cursor(self, target: str) -> int:
        """The id of the last record the target handed on; 0 when none (or no cursor yet)."""
        row = self.db.execute("SELECT last_id FROM forward_cursors WHERE target = ?", (target,)).fetchone()
        return row[0] if row else 0

    def set_cursor(self, target: str, last_id: int, at: float) -> None:
        """Move the cursor to `last_id` whatever it was (an operator's replay)."""
        with self._writing():
            self.db.execute("UPDATE forward_cursors SET last_id = ?, updated_at = ? WHERE target = ?",
                            (last_id, at, target))

    def advance_cursor(self, target: str, after: int, upto: int, at: float, **fields: float | str | None) -> None:
        """Move the cursor from `after` past `upto`, setting `last_success` and `last_error` when
        given; nothing when the cursor is no longer at `after` (reset meanwhile)."""
        unknown = set(fields) - _CURSOR_FIELDS
        if unknown:
            raise ValueError(f"forward_cursors has no settable {', '.join(sorted(unknown))}")
        sets = "".join(f", {k} = :{k}" for k in fields)
        with self._writing():
            self.db.execute(
                f"UPDATE forward_cursors SET last_id = :upto, updated_at = :now{sets}"
                " WHERE target = :target AND last_id = :after",
                {"upto": upto, "after": after, "now": at, "target": target, **fields},
            )

    def cursor_error(self, target: str, reason: str, at: float) -> None:
        """The target failed (to be tried again): the cursor stays."""
        with self._writing():
            self.db.execute("UPDATE forward_cursors SET last_error = ?, updated_at = ? WHERE target = ?",
                            (reason, at, target))

    def add_forward_dead_letter(self, target: str, first_id: int, last_id: int, readings: int, at: float,
                                status: int | None, reason: str) -> None:
        """The records first_id..last_id (`readings` of their readings) the target refused for good."""
        with self._writing():
            self.db.execute(
                "INSERT INTO forward_dead_letters (target, first_id, last_id, readings, at, status, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (target, first_id, last_id, readings, at, status, reason))

    def forward_cursor_min(self, targets: tuple[str, ...]) -> int | None:
        """The lowest `last_id` of these targets (0 for one that has not run yet); None without
        targets: then nothing waits to be forwarded (retention.py)."""
        if not targets:
            return None
        marks = ",".join("?" * len(targets))
        cursors = dict(self.db.execute(
            f"SELECT target, last_id FROM forward_cursors WHERE target IN ({marks})", targets))
        return min(cursors.get(t, 0) for t in targets)

    # -- the next batch (in the forwarder's snapshot) ----------------------------------------------

    def newest_record_id(self) -> int:
        return self.db.execute("SELECT max(id) FROM recs").fetchone()[0] or 0

    def first_held_untimed(self, after: int, since: float, ahead: float) -> int | None:
        """The lowest id above `after` of a record without a known start received in (since,
        ahead], unless its boot has a record without a start received at or before `since`: the
        record that holds a target's batch back (core.py says why)."""
        return self.db.execute(
            """SELECT min(r.id) FROM recs AS r
               WHERE r.start IS NULL AND r.id > :after AND r.received_at > :since AND r.received_at <= :ahead
                 AND NOT EXISTS (SELECT 1 FROM recs AS o WHERE o.node = r.node AND o.boot = r.boot
                                 AND o.start IS NULL AND o.received_at <= :since)""",
            {"after": after, "since": since, "ahead": ahead},
        ).fetchone()[0]

    def forward_readings(self, after: int, upto: int, limit: int | None = None) -> list[Reading]:
        """Up to `limit` (None: all) readings of the timed records in (after, upto], by record id,
        a record's readings in the contract's order."""
        readings = expand(self.keys, self.db.execute(_FORWARD_SQL, (after, upto)))
        return list(readings if limit is None else islice(readings, limit))

    def untimed_between(self, after: int, upto: int) -> int:
        """Records in (after, upto] without a known start."""
        return self.db.execute("SELECT count(*) FROM recs WHERE start IS NULL AND id > ? AND id <= ?",
                               (after, upto)).fetchone()[0]

    # -- for /metrics and the status page ----------------------------------------------------------

    def target_state(self, target: str) -> TargetState:
        """The target's cursor, what waits after it and its counters, in one snapshot."""
        prefix = f"forward.{target}."  # not LIKE: "_" in a target's name would be a wildcard
        with self.snapshot():
            row = self.db.execute("SELECT last_id, last_success, last_error FROM forward_cursors WHERE target = ?",
                                  (target,)).fetchone()
            last_id, last_success, last_error = row if row else (0, None, None)
            queue = self.db.execute("SELECT coalesce(sum(nv), 0) FROM recs WHERE id > ?", (last_id,)).fetchone()[0]
            oldest = self.db.execute("SELECT received_at FROM recs WHERE id > ? ORDER BY id LIMIT 1",
                                     (last_id,)).fetchone()
            counters = dict(self.db.execute("SELECT name, value FROM counters WHERE substr(name, 1, ?) = ?",
                                            (len(prefix), prefix)))
        return TargetState(last_id, last_success, last_error, queue, None if oldest is None else oldest[0], counters)
