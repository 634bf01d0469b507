"""Queries for readers: the CLI (`readings`, `nodes`, `status`), the status page and /metrics
(gateway/http.py), export. Readings come as `Reading`s, made straight from the cursor's rows."""

from __future__ import annotations

from typing import Iterator, Sequence

from ..payload import BOOT_MAX, DUR_MAX, FUTURE_MARGIN_S, SEQ_MAX, TS_MIN
from .base import Base
from .rows import READING_COLUMNS, AlarmRow, Counts, Latest, Node, Reading, make_reading, order

_READING_SQL = f"SELECT {READING_COLUMNS} FROM readings AS g JOIN records AS r ON r.id = g.record_id"

#: export's readings of one node in a period, by start, record by record
_EXPORT_SQL = f"""
    SELECT {READING_COLUMNS}
    FROM records AS r JOIN readings AS g ON g.record_id = r.id
    WHERE r.node = ? AND r.start >= ? AND r.start < ? {{quantities}}
    ORDER BY r.start, r.id
"""


class Readers(Base):
    def counts(self) -> Counts:
        c = self.counters()
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return Counts(
            records=one("SELECT count(*) FROM records"),
            readings=one("SELECT count(*) FROM readings"),
            dead_letters=one("SELECT count(*) FROM dead_letters"),
            nodes=one("SELECT count(*) FROM nodes"),
            duplicates=c.get("duplicates", 0),
            rejected={k.removeprefix("rejected."): v for k, v in c.items() if k.startswith("rejected.")},
        )

    def readings(
        self, node: str | None = None, since: float | None = None, quantity: str | None = None
    ) -> list[Reading]:
        """Readings of records whose interval starts at or after `since` (records without a known
        start are left out), by node, start, then quantity in the contract's order."""
        where, args = ["r.start IS NOT NULL"], list[object]()
        if since is not None:
            where.append("r.start >= ?")
            args.append(since)
        if node is not None:
            where.append("r.node = ?")
            args.append(node)
        if quantity is not None:
            where.append("g.quantity = ?")
            args.append(quantity)
        out = list(map(make_reading, self.db.execute(_READING_SQL + " WHERE " + " AND ".join(where), args)))
        out.sort(key=lambda g: (g.node, g.start, g.boot, g.seq, order(g.quantity)))
        return out

    def untimed(self, node: str | None = None, since: float | None = None) -> int:
        """Records with no known start yet (received at or after `since`)."""
        sql, args = "SELECT count(*) FROM records WHERE start IS NULL", list[object]()
        if node is not None:
            sql += " AND node = ?"
            args.append(node)
        if since is not None:
            sql += " AND received_at >= ?"
            args.append(since)
        return self.db.execute(sql, args).fetchone()[0]

    def implausible(self, nodes: Sequence[str], since: float | None, until: float | None, now: float) -> int:
        """Records of `nodes` received in [since, until) (None: open) whose start is known but whose
        interval or counters an older gateway stored outside the contract's plausible values: the
        rule of plausible.record, in SQL (a TEXT or an infinity fails every BETWEEN, as there)."""
        if not nodes:
            return 0
        where, args = [f"node IN ({','.join('?' * len(nodes))})"], list[object](nodes)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        if until is not None:
            where.append("received_at < ?")
            args.append(until)
        return self.db.execute(
            "SELECT count(*) FROM records WHERE start IS NOT NULL AND " + " AND ".join(where) +
            " AND NOT (start BETWEEN ? AND ? AND dur BETWEEN 1 AND ? AND boot BETWEEN 0 AND ?"
            " AND seq BETWEEN 0 AND ?)",
            (*args, TS_MIN, now + FUTURE_MARGIN_S, DUR_MAX, BOOT_MAX, SEQ_MAX),
        ).fetchone()[0]

    def latest(self) -> list[Latest]:
        """The newest record of every node that has one, by node id: what a live table shows."""
        # Driven from `nodes` (every node that sent a batch has a row): one index lookup on
        # UNIQUE (node, boot, seq) per node, instead of a walk over all records.
        recs = self.db.execute(
            """
            SELECT r.id, r.node, r.boot, r.seq, r.start, r.dur, r.received_at
            FROM nodes AS n JOIN records AS r
              ON r.id = (SELECT id FROM records WHERE node = n.node ORDER BY boot DESC, seq DESC LIMIT 1)
            ORDER BY n.node
            """
        ).fetchall()
        out = []
        for rid, node, boot, seq, start, dur, received_at in recs:
            rows = self.db.execute(_READING_SQL + " WHERE g.record_id = ?", (rid,))
            readings = sorted(map(make_reading, rows), key=lambda g: order(g.quantity))
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
        return self.db.execute(
            "SELECT node, boot, min(seq), max(seq), count(*) FROM records GROUP BY node, boot ORDER BY node, boot"
        ).fetchall()

    def readings_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM readings").fetchone()[0]

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
        marks = ",".join("?" * len(quantities))
        return self.db.execute(
            "SELECT r.start, g.quantity, g.avg FROM records AS r JOIN readings AS g ON g.record_id = r.id"
            f" WHERE r.node = ? AND r.start >= ? AND g.quantity IN ({marks}) ORDER BY r.start, r.boot, r.seq",
            (node, since, *quantities),
        ).fetchall()

    def newest_start(self, node: str, upto: float | None = None) -> int | None:
        """The latest interval start of a node's records (None: no timed record), of those
        starting at or before `upto` when given (an older store may hold starts far in the future)."""
        if upto is None:
            return self.db.execute("SELECT max(start) FROM records WHERE node = ?", (node,)).fetchone()[0]
        return self.db.execute("SELECT max(start) FROM records WHERE node = ? AND start <= ?",
                               (node, upto)).fetchone()[0]

    def node_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM nodes").fetchone()[0]

    def node_ids(self) -> list[str]:
        """Every node ever heard of, by id."""
        return [r[0] for r in self.db.execute("SELECT node FROM nodes ORDER BY node")]

    # -- export (export.py) ----------------------------------------------------------------------

    def export_readings(self, node: str, since: float, until: float,
                        quantities: Sequence[str] = ()) -> Iterator[Reading]:
        """`node`'s readings of `quantities` (all for none) in records starting in [since, until),
        by start, a record's readings together (in no set order), as the cursor yields them: memory
        does not grow with their number. Walks the (node, start) index."""
        where = f"AND g.quantity IN ({','.join('?' * len(quantities))})" if quantities else ""
        rows = self.db.execute(_EXPORT_SQL.format(quantities=where), (node, since, until, *quantities))
        return map(make_reading, rows)

    def untimed_received(self, nodes: Sequence[str], since: float, until: float) -> int:
        """Records of `nodes` received in [since, until) whose start is not known (yet)."""
        if not nodes:
            return 0
        return self.db.execute(
            f"SELECT count(*) FROM records WHERE start IS NULL AND node IN ({','.join('?' * len(nodes))})"
            " AND received_at >= ? AND received_at < ?", (*nodes, since, until)).fetchone()[0]
