"""The fleet over the air (issue 15): the nodes' events and what they say of a node's state, the
configuration each node is sent (its versions), the commands asked of a node.

Events come through the writer like statuses (`add_event`). Readers follow them with a cursor:

    for e in store.events(kind="ota", since_id=last):   # oldest first; EventRow(id, node, kind, state, at, body)
        ...; last = e.id

Ids only grow. The newest `EVENTS_KEPT` events of each node and kind are kept (a node reporting in
a loop cannot fill the store), crash reports `CRASHES_KEPT`: a reader that falls further behind
than that misses the oldest.
"""

from __future__ import annotations

import json
from typing import Any

from ..payload import Event
from .base import Base
from .rows import CommandRow, EventRow, NodeConfigRow

#: events kept per node and kind (the newest)
EVENTS_KEPT = 200
#: crash reports kept per node (the newest): each holds up to 1.5 KB of traceback
CRASHES_KEPT = 20


def _event(row: tuple[Any, ...]) -> EventRow:
    i, node, kind, state, at, body = row
    return EventRow(i, node, kind, state, at, json.loads(body))


class FleetState(Base):
    # -- events (the writer) ---------------------------------------------------------------------

    def add_event(self, event: Event, received_at: float) -> int:
        """Keep `event` and what it says of its node (a config event: the version it runs now);
        drop the node's oldest of that kind beyond what is kept. Returns its id."""
        body = json.dumps(dict(event.body), separators=(",", ":"), ensure_ascii=False)
        with self._writing():
            cur = self.db.execute("INSERT INTO events (node, kind, state, at, body) VALUES (?, ?, ?, ?, ?)",
                                  (event.node, event.kind, event.state, received_at, body))
            eid = int(cur.lastrowid or 0)
            keep = CRASHES_KEPT if event.kind == "crash" else EVENTS_KEPT
            self.db.execute(
                "DELETE FROM events WHERE node = ? AND kind = ? AND id <= (SELECT id FROM events"
                " WHERE node = ? AND kind = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (event.node, event.kind, event.node, event.kind, keep))
            # the configuration version the node says it runs now: the one taken or proved; after a
            # revert the one it went back to
            version = None
            if event.kind == "config" and event.state in (None, "proved"):
                version = event.body.get("version")
            elif event.kind == "config" and event.state == "reverted":
                version = event.body.get("back_to")
            self.db.execute(
                "INSERT INTO nodes (node, last_seen, cfg) VALUES (?, ?, ?) ON CONFLICT (node) DO UPDATE SET"
                " last_seen = coalesce(max(last_seen, excluded.last_seen), excluded.last_seen),"
                " cfg = coalesce(excluded.cfg, cfg)",
                (event.node, received_at, version))
            self.bump(f"events.{event.kind}")
        return eid

    # -- events (readers) ------------------------------------------------------------------------

    def events(self, kind: str | None = None, since_id: int = 0, node: str | None = None,
               limit: int = 1000) -> list[EventRow]:
        """Events with an id above `since_id`, oldest first, at most `limit`; of one kind and node
        when given."""
        where, args = ["id > ?"], [since_id]
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)  # type: ignore[arg-type]
        if node is not None:
            where.append("node = ?")
            args.append(node)  # type: ignore[arg-type]
        rows = self.db.execute(
            "SELECT id, node, kind, state, at, body FROM events WHERE " + " AND ".join(where)
            + " ORDER BY id LIMIT ?", (*args, limit))
        return [_event(r) for r in rows]

    def latest_events(self, kind: str, limit: int = 1) -> dict[str, list[EventRow]]:
        """The newest `limit` events of `kind` of every node that has one, newest first, by node."""
        rows = self.db.execute(
            "SELECT id, node, kind, state, at, body FROM events AS e WHERE kind = ? AND id IN"
            " (SELECT id FROM events WHERE node = e.node AND kind = e.kind ORDER BY id DESC LIMIT ?)"
            " ORDER BY node, id DESC", (kind, limit))
        out: dict[str, list[EventRow]] = {}
        for r in rows:
            e = _event(r)
            out.setdefault(e.node, []).append(e)
        return out

    def event_count(self, kind: str, node: str | None = None) -> int:
        if node is None:
            return self.db.execute("SELECT count(*) FROM events WHERE kind = ?", (kind,)).fetchone()[0]
        return self.db.execute("SELECT count(*) FROM events WHERE kind = ? AND node = ?", (kind, node)).fetchone()[0]

    # -- the configuration each node is sent (gateway/configpub.py) ------------------------------

    def node_configs(self) -> dict[str, NodeConfigRow]:
        rows = self.db.execute(
            "SELECT node, version, digest, shown, made_at, published_at, problem FROM node_config ORDER BY node")
        return {r[0]: NodeConfigRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows}

    def set_node_config(self, node: str, version: int, digest: str, shown: dict[str, Any], at: float) -> None:
        """A new wanted configuration for `node`, not yet published."""
        with self._writing():
            self.db.execute(
                "INSERT INTO node_config (node, version, digest, shown, made_at, published_at, problem)"
                " VALUES (?, ?, ?, ?, ?, NULL, NULL) ON CONFLICT (node) DO UPDATE SET version = excluded.version,"
                " digest = excluded.digest, shown = excluded.shown, made_at = excluded.made_at,"
                " published_at = NULL, problem = NULL",
                (node, version, digest, json.dumps(shown, separators=(",", ":"), ensure_ascii=False), at))

    def config_published(self, node: str, version: int, at: float) -> None:
        """The broker took version `version` of `node`'s configuration (a newer one stays unpublished)."""
        with self._writing():
            self.db.execute("UPDATE node_config SET published_at = ?, problem = NULL WHERE node = ? AND version = ?",
                            (at, node, version))

    def config_problem(self, node: str, problem: str | None, at: float) -> None:
        """Why `node`'s configuration cannot be made or sent now (None: no problem any more)."""
        with self._writing():
            if problem is None:
                self.db.execute("UPDATE node_config SET problem = NULL WHERE node = ?", (node,))
                return
            self.db.execute(
                "INSERT INTO node_config (node, version, digest, shown, made_at, problem) VALUES (?, 0, '', '{}', ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET problem = excluded.problem", (node, at, problem))

    def forget_config(self, node: str) -> None:
        """`node` is configured no more, and was never sent a configuration: no row to show."""
        with self._writing():
            self.db.execute("DELETE FROM node_config WHERE node = ? AND version = 0", (node,))

    # -- commands (`meetkit-gateway fleet selftest`) -----------------------------------------------

    def add_command(self, node: str, cmd: str, at: float) -> int:
        """Ask `cmd` of `node`; the running gateway sends it. Returns its id."""
        with self._writing():
            cur = self.db.execute("INSERT INTO commands (node, cmd, at) VALUES (?, ?, ?)", (node, cmd, at))
            return int(cur.lastrowid or 0)

    def pending_commands(self, since: float = 0.0) -> list[CommandRow]:
        """Commands asked at or after `since` and not yet taken by the broker, oldest first."""
        rows = self.db.execute(
            "SELECT id, node, cmd, at, sent_at, problem FROM commands WHERE sent_at IS NULL AND at >= ? ORDER BY id",
            (since,))
        return [CommandRow(*r) for r in rows]

    def withdraw_command(self, cid: int) -> bool:
        """Take back a command the broker has not taken yet (its asker gave up); True if it was."""
        with self._writing():
            return self.db.execute("DELETE FROM commands WHERE id = ? AND sent_at IS NULL", (cid,)).rowcount > 0

    def command(self, cid: int) -> CommandRow | None:
        r = self.db.execute("SELECT id, node, cmd, at, sent_at, problem FROM commands WHERE id = ?", (cid,)).fetchone()
        return None if r is None else CommandRow(*r)

    def command_sent(self, cid: int, at: float) -> None:
        with self._writing():
            self.db.execute("UPDATE commands SET sent_at = ?, problem = NULL WHERE id = ?", (at, cid))

    def command_problem(self, cid: int, problem: str) -> None:
        with self._writing():
            self.db.execute("UPDATE commands SET problem = ? WHERE id = ?", (problem, cid))

    def answer(self, node: str, kind: str, cid: int) -> EventRow | None:
        """The node's answer to command `cid`: the newest event of `kind` carrying that id, or of
        kind `cmd` (the command refused) carrying it."""
        rows = self.db.execute(
            "SELECT id, node, kind, state, at, body FROM events WHERE node = ? AND kind IN (?, 'cmd')"
            " AND json_extract(body, '$.id') = ? ORDER BY id DESC LIMIT 1", (node, kind, cid)).fetchall()
        return _event(rows[0]) if rows else None

    def refused_commands(self, node: str, since: float) -> list[EventRow]:
        """`cmd` events of `node` received at or after `since`, oldest first: commands it did not
        take, with or without their id (a bad MAC leaves it unread)."""
        rows = self.db.execute(
            "SELECT id, node, kind, state, at, body FROM events WHERE node = ? AND kind = 'cmd' AND at >= ?"
            " ORDER BY id", (node, since))
        return [_event(r) for r in rows]
