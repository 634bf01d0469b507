"""The public page's reads (gateway/public/): a node's intervals of a few quantities, lean."""

from __future__ import annotations

from typing import Iterator

from .base import Base
from .values import decode

_NO_UNITS: dict[str, str] = {}


class Public(Base):
    def public_intervals(self, node: str, since: float, until: float, quantities: frozenset[str]
                         ) -> Iterator[tuple[int, int, int, int, str, float | None, str]]:
        """(start, dur, boot, seq, quantity, avg, flags) of `node`'s readings of `quantities` in
        records starting in [since, until), by start, as the cursor yields them (memory does not
        grow with their number). Walks the (node, start) index; no envelope is looked up: the page
        shows nothing of a node's boot, board or firmware."""
        nid = self.keys.node_id(node, make=False)
        if nid is None:
            return
        shape = self.keys.shape
        rows = self.db.execute("SELECT start, dur, boot, seq, shape, vals FROM recs WHERE node = ? AND start >= ?"
                               " AND start < ? ORDER BY start, boot, seq", (nid, since, until))
        for start, dur, boot, seq, sid, vals in rows:
            for d in decode(shape(sid), vals, _NO_UNITS):
                if d[0] in quantities:
                    yield start, dur, boot, seq, d[0], d[1], d[6]

    def public_hours(self, node: str, since: float, until: float) -> list[tuple[int, int, float, int]]:
        """(hour, records, newest reception, highest id) per UTC hour (start // 3600) of `node`'s
        records starting in [since, until): what tells the public page which days changed since it
        last computed them (a record added, replayed or pruned changes its hour's row) without
        reading a value. One walk of the (node, start) index."""
        nid = self.keys.node_id(node, make=False)
        if nid is None:
            return []
        return self.db.execute(
            "SELECT start / 3600, count(*), max(received_at), max(id) FROM recs WHERE node = ? AND start >= ?"
            " AND start < ? GROUP BY start / 3600 ORDER BY 1", (nid, since, until)).fetchall()
