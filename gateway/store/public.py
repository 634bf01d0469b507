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
