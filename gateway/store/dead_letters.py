"""Dead letters: what the gateway refused, kept to be looked at and replayed (replay.py), and what
their own budgets count and drop (retention.py)."""

from __future__ import annotations

import sqlite3
import time

from ..payload import MAX_MESSAGE_BYTES
from .base import Base
from .rows import DeadLetter

#: Payloads larger than this are kept truncated in the dead-letter table: a message over the
#: contract's size is kept as evidence, not whole (docs/payload.md).
DEAD_LETTER_MAX = MAX_MESSAGE_BYTES


class DeadLetters(Base):
    _DEAD_LETTER_COLUMNS = "id, received_at, topic, payload, code, reason, node, size"

    def add_dead_letter(
        self, topic: str, payload: bytes, code: str, reason: str, received_at: float | None = None,
        node: str | None = None, *, count: bool = True, size: int | None = None,
    ) -> int:
        """Keep a rejected message (or a batch's refused records) with its reason; counted as
        `rejected.<code>` unless `count` is False (the caller counts refused records itself).
        `size`: the message's size when `payload` is already only its first bytes."""
        received_at = time.time() if received_at is None else received_at
        size = max(len(payload), size or 0)
        if size > DEAD_LETTER_MAX:
            reason += f" (kept the first {DEAD_LETTER_MAX} of {size} bytes)"
            payload = payload[:DEAD_LETTER_MAX]
        with self._writing():
            cur = self.db.execute(
                "INSERT INTO dead_letters (received_at, topic, payload, code, reason, node, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (received_at, topic, payload, code, reason, node, len(payload)),
            )
            if count:
                self.bump(f"rejected.{code}")
        self.dead_letter_nodes.add(node)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def dead_letter(self, id: int) -> DeadLetter | None:
        row = self.db.execute(
            f"SELECT {self._DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (id,)).fetchone()
        return None if row is None else DeadLetter(*row)

    def update_dead_letter(self, id: int, payload: bytes, code: str, reason: str) -> None:
        """What a dead letter still holds after a replay, and why."""
        with self._writing():
            self.db.execute("UPDATE dead_letters SET payload = ?, code = ?, reason = ?, size = ? WHERE id = ?",
                            (payload, code, reason, len(payload), id))

    def delete_dead_letter(self, id: int) -> bool:
        with self._writing():
            return self.db.execute("DELETE FROM dead_letters WHERE id = ?", (id,)).rowcount > 0

    def dead_letters(self, limit: int = 100, node: str | None = None, code: str | None = None,
                     before: int | None = None) -> list[DeadLetter]:
        """The newest dead letters first (of `node`, with `code`, with ids below `before`)."""
        where, args = [], list[object]()
        for cond, value in (("node = ?", node), ("code = ?", code), ("id < ?", before)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = f"SELECT {self._DEAD_LETTER_COLUMNS} FROM dead_letters"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [DeadLetter(*r) for r in rows]

    def dead_letter_usage(self, node: str | None = None, *, every: bool = False) -> tuple[int, int]:
        """(dead letters, bytes of their payloads) of `node` (None: those of no node), or of all
        with `every`."""
        sql = "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters"
        row = self.db.execute(sql if every else sql + " WHERE node IS ?", () if every else (node,)).fetchone()
        return row[0], row[1]

    def dead_letter_sizes(self, node: str | None = None, *, every: bool = False,
                          limit: int = 100_000) -> list[tuple[int, int]]:
        """(id, size) of the oldest dead letters of `node` (or of all), oldest first."""
        if every:
            return self.db.execute("SELECT id, size FROM dead_letters ORDER BY id LIMIT ?", (limit,)).fetchall()
        return self.db.execute("SELECT id, size FROM dead_letters WHERE node IS ? ORDER BY id LIMIT ?",
                               (node, limit)).fetchall()

    def drop_dead_letters_of(self, node: str | None, upto: int) -> int:
        """Delete `node`'s dead letters with ids up to `upto`; returns how many."""
        with self._writing():
            return self.db.execute("DELETE FROM dead_letters WHERE node IS ? AND id <= ?", (node, upto)).rowcount

    def dead_letter_pages_bytes(self) -> int:
        """Bytes of the pages the dead letters (table and index) take in the file: what the
        readings' bound leaves out. From SQLite's dbstat table where it is built in (Debian's and
        Raspberry Pi OS's library); else estimated from their sizes (a payload near a page's size
        takes two)."""
        try:
            row = self.db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('dead_letters', 'dead_letters_node')"
                " AND aggregate = TRUE").fetchone()
            return int(row[0] or 0)
        except sqlite3.OperationalError:  # no dbstat in this SQLite
            count, size = self.dead_letter_usage(every=True)
            return 2 * size + 64 * count

    def oldest_dead_letters(self, limit: int) -> list[tuple[int, float]]:
        """(id, received_at) of the `limit` oldest dead letters."""
        return self.db.execute("SELECT id, received_at FROM dead_letters ORDER BY id LIMIT ?", (limit,)).fetchall()

    def drop_dead_letters(self, upto: int) -> int:
        """Delete the dead letters with ids up to `upto`; returns how many."""
        with self._writing():
            return self.db.execute("DELETE FROM dead_letters WHERE id <= ?", (upto,)).rowcount
