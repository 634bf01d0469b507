"""Pruning (retention.py decides what; these do it, inside the caller's transaction) and the
file's pages: what the bound compares, the free pages given back."""

from __future__ import annotations

from .dead_letters import DeadLetters
from .rows import Pruned


class Pruning(DeadLetters):
    def oldest_records(self, limit: int) -> list[tuple[int, float]]:
        """(id, received_at) of the `limit` records with the lowest ids: the next to prune."""
        return self.db.execute("SELECT id, received_at FROM recs ORDER BY id LIMIT ?", (limit,)).fetchall()

    def record_id_span(self) -> tuple[int, int] | None:
        """(lowest, highest) record id, None when there are no records."""
        lo, hi = self.db.execute("SELECT min(id), max(id) FROM recs").fetchone()
        return None if lo is None else (lo, hi)

    def drop_records(self, upto: int, after: int = 0) -> Pruned:
        """Delete the records with ids up to `upto` (their readings with them), and the boots
        (and payload v2 envelopes) no record is left of; `after` is a forward cursor (the lowest of the enabled
        targets'): records above it count as not yet forwarded everywhere. Ids stay monotonic:
        see `pruned_upto`."""
        with self._writing():
            n, unforwarded, first = self.db.execute(
                "SELECT count(*), count(*) FILTER (WHERE id > ?), min(id) FROM recs WHERE id <= ?",
                (after, upto),
            ).fetchone()
            envs = [e for (e,) in self.db.execute("SELECT DISTINCT env FROM recs WHERE id <= ?", (upto,))]
            self.db.execute("DELETE FROM recs WHERE id <= ?", (upto,))
            gone = [(str(node), int(boot)) for e in envs for node, boot in self.db.execute(
                "SELECT n.node, b.boot FROM boots AS b JOIN nodes AS n ON n.id = b.node WHERE b.id = ?"
                " AND NOT EXISTS (SELECT 1 FROM recs AS r WHERE r.node = b.node AND r.boot = b.boot)", (e,))]
            self.db.executemany(
                "DELETE FROM boots WHERE id = ?"
                " AND NOT EXISTS (SELECT 1 FROM recs AS r WHERE r.node = boots.node AND r.boot = boots.boot)",
                [(e,) for e in envs])
            # payload v2's envelope of such a boot goes too: should its node send that boot again,
            # the gateway asks for the envelope (docs/payload.md, "Payload v2")
            self.forget_envelopes(gone)
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('pruned_upto', ?) ON CONFLICT (key) DO UPDATE"
                " SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (str(upto),),
            )
        return Pruned(n, unforwarded, first)

    @property
    def pruned_upto(self) -> int:
        return int(self._meta("pruned_upto") or 0)

    def pages(self) -> tuple[int, int, int]:
        """(page size, pages in the file, free pages)."""
        size = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return size, count, free

    def used_bytes(self) -> int:
        """Bytes of the pages in use: the file without its free pages (what the bound compares;
        the write-ahead log, at most a few MB between checkpoints, is not counted)."""
        size, count, free = self.pages()
        return (count - free) * size

    def bounded_bytes(self) -> int:
        """What `[store] max_bytes` bounds: the pages in use without the dead letters' (they have
        budgets of their own, retention.py)."""
        return self.used_bytes() - self.dead_letter_pages_bytes()

    def reclaim(self, pages: int) -> int:
        """Give up to `pages` free pages back to the file system (the file shrinks), outside a
        transaction; only an incremental auto-vacuum store can. Returns the pages given back."""
        if pages <= 0 or not self.incremental:
            return 0
        before = self.pages()[2]
        # executescript steps the pragma to its end; execute() would free one page per call
        self.db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return before - self.pages()[2]

    def drop_retained_seen(self, before: float) -> int:
        with self._writing():
            return self.db.execute("DELETE FROM retained_seen WHERE at < ?", (before,)).rowcount
