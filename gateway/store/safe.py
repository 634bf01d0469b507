"""A region of gateways (docs/payload.md, "Safe in the region"): which of a node's records the
region's store holds, read from the region targets' forward cursors.

A record is safe once every region target (`[region] safe_targets`) took it: its cursor (a
records.id) passed it. A cursor also passes records it never sends (dead-lettered by the target,
untimed past the hold, implausible: core.py), so those never hold a node's pair back. The node's
safe pair is the (boot, seq) just before its earliest record still after the lowest of those
cursors, or its latest record when none is.

Cost: the index `recs_node_id` (node, id) reaches a node's records after the cursor without
reading the ones already forwarded, so a pair costs its node's unforwarded records (a region away
for 6 hours: 360 per node at one a minute), whatever the store holds (bench/region.py)."""

from __future__ import annotations

import json
from typing import Iterable

from ..payload import SEQ_MAX
from .base import Base

#: boot * SEQ_SPAN + seq orders (boot, seq) as one integer (boot and seq are below 2**30)
SEQ_SPAN = SEQ_MAX + 1

Pair = tuple[int, int]


def _cursor_sql(n: int) -> str:
    """The lowest cursor of n targets; 0 while one has none yet (it has taken nothing)."""
    marks = ",".join("?" * n)
    return (f"SELECT CASE WHEN count(*) = {n} THEN min(last_id) ELSE 0 END"
            f" FROM forward_cursors WHERE target IN ({marks})")


def pair_before(key: int) -> Pair | None:
    """The (boot, seq) just before `key` (boot * SEQ_SPAN + seq); None before (0, 0)."""
    boot, seq = divmod(key, SEQ_SPAN)
    if seq > 0:
        return boot, seq - 1
    return (boot - 1, SEQ_MAX) if boot > 0 else None


class Safe(Base):
    def safe_cursor(self, targets: tuple[str, ...]) -> int:
        """records.id up to which every region target has taken (or passed over) every record."""
        return self.db.execute(_cursor_sql(len(targets)), targets).fetchone()[0]

    def safe_pairs(self, targets: tuple[str, ...], nodes: Iterable[str]) -> dict[str, Pair | None]:
        """Each node's safe pair (None: `[]`, nothing safe yet, or no record at all), in one query."""
        names = sorted(set(nodes))
        if not names:
            return {}
        rows = self.db.execute(
            f"""WITH c(cur) AS ({_cursor_sql(len(targets))})
                SELECT n.node,
                       (SELECT min(r.boot * {SEQ_SPAN} + r.seq) FROM recs AS r INDEXED BY recs_node_id
                        WHERE r.node = n.id AND r.id > (SELECT cur FROM c)),
                       (SELECT r.boot * {SEQ_SPAN} + r.seq FROM recs AS r
                        WHERE r.node = n.id ORDER BY r.boot DESC, r.seq DESC LIMIT 1)
                FROM json_each(?) AS j JOIN nodes AS n ON n.node = j.value""",
            (*targets, json.dumps(names)),
        ).fetchall()
        out: dict[str, Pair | None] = {name: None for name in names}
        for node, first, latest in rows:
            if first is not None:
                out[node] = pair_before(first)
            elif latest is not None:
                out[node] = divmod(latest, SEQ_SPAN)
        return out

    def nodes_between(self, after: int, upto: int) -> list[str]:
        """The nodes with records in (after, upto]: those a cursor's move made safe."""
        return [r[0] for r in self.db.execute(
            "SELECT n.node FROM nodes AS n WHERE n.id IN (SELECT node FROM recs WHERE id > ? AND id <= ?)",
            (after, upto))]

    def unsafe_records(self, targets: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        """Per node with records not yet safe: how many, and when the oldest was received."""
        return {self.keys.node_name(nid): (n, oldest) for nid, n, oldest in self.db.execute(
            f"SELECT node, count(*), min(received_at) FROM recs WHERE id > ({_cursor_sql(len(targets))})"
            " GROUP BY node", targets)}
