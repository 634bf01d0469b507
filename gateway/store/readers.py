"""Queries for readers: the CLI (`readings`, `nodes`, `status`), the status page and /metrics
(gateway/http.py), export. Readings come as `Reading`s, a record's from its row (rows.expand)."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

from ..payload import BOOT_MAX, DUR_MAX, FUTURE_MARGIN_S, SEQ_MAX, TS_MIN
from .base import Base
from .rows import RECORD_COLUMNS, AlarmRow, Counts, Latest, Node, Reading, expand, order
from .values import decode

_NO_UNITS: dict[str, str] = {}


class Readers(Base):
    def counts(self) -> Counts:
        c = self.counters()
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return Counts(
            records=one("SELECT count(*) FROM recs"),
            readings=one("SELECT coalesce(sum(nv), 0) FROM recs"),
            dead_letters=one("SELECT count(*) FROM dead_letters"),
            nodes=one("SELECT count(*) FROM nodes"),
            duplicates=c.get("duplicates", 0),
            rejected={k.removeprefix("rejected."): v for k, v in c.items() if k.startswith("rejected.")},
        )

    def _node_ids(self, nodes: Sequence[str]) -> list[int]:
        """The ids of those of `nodes` the store knows."""
        ids = (self.keys.node_id(n, make=False) for n in nodes)
        return [i for i in ids if i is not None]

    def readings(
        self, node: str | None = None, since: float | None = None, quantity: str | None = None
    ) -> list[Reading]:
        """Readings of records whose interval starts at or after `since` (records without a known
        start are left out), by node, start, then quantity in the contract's order."""
        # node by node (the outer loop over `nodes`): each a range of the (node, start) index
        where, args = ["r.start IS NOT NULL"], list[object]()
        if since is not None:
            where.append("r.start >= ?")
            args.append(since)
        if node is not None:
            nid = self.keys.node_id(node, make=False)
            if nid is None:
                return []
            where.append("n.id = ?")
            args.append(nid)
        rows = self.db.execute(f"SELECT {RECORD_COLUMNS} FROM nodes AS n CROSS JOIN recs AS r ON r.node = n.id"
                               " WHERE " + " AND ".join(where), args)
        out = list(expand(self.keys, rows, None if quantity is None else (quantity,)))
        out.sort(key=lambda g: (g.node, g.start, g.boot, g.seq, order(g.quantity)))
        return out

    def untimed(self, node: str | None = None, since: float | None = None) -> int:
        """Records with no known start yet (received at or after `since`)."""
        sql, args = "SELECT count(*) FROM recs WHERE start IS NULL", list[object]()
        if node is not None:
            nid = self.keys.node_id(node, make=False)
            if nid is None:
                return 0
            sql += " AND node = ?"
            args.append(nid)
        if since is not None:
            sql += " AND received_at >= ?"
            args.append(since)
        return self.db.execute(sql, args).fetchone()[0]

    def implausible(self, nodes: Sequence[str], since: float | None, until: float | None, now: float) -> int:
        """Records of `nodes` received in [since, until) (None: open) whose start is known but whose
        interval or counters an older gateway stored outside the contract's plausible values: the
        rule of plausible.record, in SQL (a TEXT or an infinity fails every BETWEEN, as there)."""
        ids = self._node_ids(nodes)
        if not ids:
            return 0
        where, args = [f"node IN ({','.join('?' * len(ids))})"], list[object](ids)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        if until is not None:
            where.append("received_at < ?")
            args.append(until)
        return self.db.execute(
            "SELECT count(*) FROM recs WHERE start IS NOT NULL AND " + " AND ".join(where) +
            " AND NOT (start BETWEEN ? AND ? AND dur BETWEEN 1 AND ? AND boot BETWEEN 0 AND ?"
            " AND seq BETWEEN 0 AND ?)",
            (*args, TS_MIN, now + FUTURE_MARGIN_S, DUR_MAX, BOOT_MAX, SEQ_MAX),
        ).fetchone()[0]

    def latest(self) -> list[Latest]:
        """The newest record of every node that has one, by node id: what a live table shows."""
        # Driven from `nodes` (every node that sent a batch has a row): one index lookup on
        # UNIQUE (node, boot, seq) per node, instead of a walk over all records.
        recs = self.db.execute(
            f"""
            SELECT {RECORD_COLUMNS}, r.received_at
            FROM nodes AS n JOIN recs AS r
              ON r.id = (SELECT id FROM recs WHERE node = n.id ORDER BY boot DESC, seq DESC LIMIT 1)
            ORDER BY n.node
            """
        ).fetchall()
        out = []
        for row in recs:
            readings = list(expand(self.keys, (row[:-1],)))  # the contract's order
            rid, node, start, dur, boot, seq, received_at = row[0], self.keys.node_name(row[1]), *row[2:4], *row[5:7], row[-1]
            out.append(Latest(node, boot, seq, start, dur, received_at, {g.quantity: g for g in readings}))
        return out

    def nodes(self) -> list[Node]:
        rows = self.db.execute(
            "SELECT node, online, boot, fw, up, rssi, status_at, last_seen, dropped, mode, cfg, via, held"
            " FROM nodes ORDER BY node"
        )
        return [Node(r[0], None if r[1] is None else bool(r[1]), *r[2:]) for r in rows]

    def alarms(self, limit: int = 100) -> list[AlarmRow]:
        """The newest alarms, oldest first."""
        rows = self.db.execute(
            "SELECT id, at, code, active, reason FROM alarms ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [AlarmRow(i, at, code, bool(active), reason) for i, at, code, active, reason in reversed(rows)]

    # -- the status page and /metrics (gateway/http.py) -------------------------------------------

    def boots(self) -> list[tuple[str, int, int, int, int]]:
        """(node, boot, min seq, max seq, records) per boot of every node, by node then boot: the
        records missing inside a boot are max - min + 1 - records. One pass over the (node, boot,
        seq) index, no table rows read."""
        rows = self.db.execute(
            "SELECT node, boot, min(seq), max(seq), count(*) FROM recs GROUP BY node, boot").fetchall()
        return sorted((self.keys.node_name(nid), *rest) for nid, *rest in rows)  # type: ignore[misc]

    def readings_count(self) -> int:
        return self.db.execute("SELECT coalesce(sum(nv), 0) FROM recs").fetchone()[0]

    def active_alarms(self) -> list[AlarmRow]:
        """The newest row of each alarm code whose newest row says raised."""
        rows = self.db.execute(
            "SELECT id, at, code, active, reason FROM alarms AS a"
            " WHERE id = (SELECT max(id) FROM alarms WHERE code = a.code) AND active = 1 ORDER BY code"
        ).fetchall()
        return [AlarmRow(i, at, code, bool(active), reason) for i, at, code, active, reason in rows]

    def series(self, node: str, since: float, quantities: tuple[str, ...]) -> list[tuple[int, str, float | None]]:
        """(start, quantity, avg) of a node's records starting at or after `since`, by start:
        what a plot of the node's last hours draws. Uses the (node, start) index."""
        nid = self.keys.node_id(node, make=False)
        if nid is None:
            return []
        wanted = frozenset(quantities)
        rows = self.db.execute("SELECT start, shape, vals FROM recs WHERE node = ? AND start >= ? ORDER BY start, boot, seq",
                               (nid, since))
        shape = self.keys.shape
        return [(start, d[0], d[1]) for start, sid, vals in rows for d in decode(shape(sid), vals, _NO_UNITS)
                if d[0] in wanted]

    def series_buckets(self, node: str, since: float, until: float, step: int, quantities: tuple[str, ...],
                       energetic: frozenset[str] = frozenset()) -> list[tuple[int, str, float]]:
        """(bucket start, quantity, mean) of a node's records starting in [since, until), in buckets of
        `step` seconds aligned to multiples of it, by bucket then quantity: a long range of the
        status page at a few hundred points rather than a record a minute. A quantity in
        `energetic` (a sound level in dB) is averaged as energy, 10 log10(mean(10^(L/10))), as an
        LAeq over the bucket is; the others arithmetically. Non-finite values are left out."""
        nid = self.keys.node_id(node, make=False)
        if nid is None or step < 1:
            return []
        wanted = frozenset(quantities)
        rows = self.db.execute("SELECT start - start % ?, shape, vals FROM recs WHERE node = ? AND start >= ?"
                               " AND start < ? ORDER BY start", (step, nid, since, until))
        shape = self.keys.shape
        out: list[tuple[int, str, float]] = []
        cur: int | None = None
        sums: dict[str, list[float]] = {}  # the bucket under way (rows come by start): quantity -> [sum, n]

        def flush() -> None:
            for q, (total, n) in sorted(sums.items(), key=lambda kv: order(kv[0])):
                mean = total / n
                out.append((cur, q, 10 * math.log10(mean) if q in energetic and mean > 0 else mean))  # type: ignore[arg-type]
            sums.clear()

        for bucket, sid, vals in rows:
            if bucket != cur:
                flush()
                cur = bucket
            for d in decode(shape(sid), vals, _NO_UNITS):
                q = d[0]
                if q not in wanted:
                    continue
                v = d[1]
                if v is None or v - v != 0:  # no value, NaN or an infinity
                    continue
                if q in energetic:
                    if not -100 < v < 300:  # no sound level: 10^(v/10) would overflow
                        continue
                    v = 10 ** (v / 10)
                acc = sums.get(q)
                if acc is None:
                    sums[q] = [v, 1]
                else:
                    acc[0] += v
                    acc[1] += 1
        flush()
        return out

    def newest_start(self, node: str, upto: float | None = None) -> int | None:
        """The latest interval start of a node's records (None: no timed record), of those
        starting at or before `upto` when given (an older store may hold starts far in the future)."""
        nid = self.keys.node_id(node, make=False)
        if nid is None:
            return None
        if upto is None:
            return self.db.execute("SELECT max(start) FROM recs WHERE node = ?", (nid,)).fetchone()[0]
        return self.db.execute("SELECT max(start) FROM recs WHERE node = ? AND start <= ?",
                               (nid, upto)).fetchone()[0]

    def node_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM nodes").fetchone()[0]

    def node_ids(self) -> list[str]:
        """Every node ever heard of, by id."""
        return [r[0] for r in self.db.execute("SELECT node FROM nodes ORDER BY node")]

    # -- export (export.py) ----------------------------------------------------------------------

    def export_readings(self, node: str, since: float, until: float,
                        quantities: Sequence[str] = ()) -> Iterator[Reading]:
        """`node`'s readings of `quantities` (all for none) in records starting in [since, until),
        by start, a record's readings together (in the contract's order), as the cursor yields
        them: memory does not grow with their number. Walks the (node, start) index."""
        nid = self.keys.node_id(node, make=False)
        if nid is None:
            return iter(())
        rows = self.db.execute(f"SELECT {RECORD_COLUMNS} FROM recs AS r WHERE r.node = ? AND r.start >= ?"
                               " AND r.start < ? ORDER BY r.start, r.id", (nid, since, until))
        return expand(self.keys, rows, frozenset(quantities) if quantities else None)

    def untimed_received(self, nodes: Sequence[str], since: float, until: float) -> int:
        """Records of `nodes` received in [since, until) whose start is not known (yet)."""
        ids = self._node_ids(nodes)
        if not ids:
            return 0
        return self.db.execute(
            f"SELECT count(*) FROM recs WHERE start IS NULL AND node IN ({','.join('?' * len(ids))})"
            " AND received_at >= ? AND received_at < ?", (*ids, since, until)).fetchone()[0]
