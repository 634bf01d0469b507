"""The small integers a record row refers to: a node's `nodes.id` and its batch's envelope, a
`boots` row (schema.py). Both are looked up for every record written and read, so they are cached;
a row never changes once committed (boots ids are never used again: AUTOINCREMENT), so a cache of
another process or connection is never wrong, only incomplete. What a rolled-back transaction made
is forgotten with it (`forget`)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Mapping, NamedTuple

_CACHED_MAX = 10_000


class Boot(NamedTuple):
    """A `boots` row: a node boot's envelope, as its batches carried it."""

    node: int
    boot: int
    fw: str
    board: str
    sensors: str  # JSON object, as stored
    units: dict[str, str]


def dumps(obj: Mapping[str, Any]) -> str:
    """A JSON object as the store keeps it: compact, keys sorted."""
    return json.dumps(dict(obj), separators=(",", ":"), sort_keys=True)


class Keys:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._node_ids: dict[str, int] = {}
        self._node_names: dict[int, str] = {}
        self._boot_ids: dict[tuple[int, int, str, str, str, str], int] = {}
        self._boots: dict[int, Boot] = {}
        self._shape_ids: dict[bytes, int] = {}
        self._shapes: dict[int, bytes] = {}
        self._recent: dict[tuple[int, int, str, str], tuple[dict[str, str], dict[str, str], int]] = {}

    def forget(self) -> None:
        """After a rollback: ids made in it may be gone (or be given to something else)."""
        self._node_ids.clear()
        self._node_names.clear()
        self._boot_ids.clear()
        self._boots.clear()
        self._shape_ids.clear()
        self._shapes.clear()
        self._recent.clear()

    def node_id(self, node: str, make: bool = True) -> int | None:
        """`nodes.id` of `node`; a row made for it when it has none and `make` (else None)."""
        nid = self._node_ids.get(node)
        if nid is None:
            row = self.db.execute("SELECT id FROM nodes WHERE node = ?", (node,)).fetchone()
            if row is None:
                if not make:
                    return None
                row = self.db.execute("INSERT INTO nodes (node) VALUES (?) RETURNING id", (node,)).fetchone()
            nid = row[0]
            if len(self._node_ids) >= _CACHED_MAX:
                self._node_ids.clear()
            self._node_ids[node] = nid
        return nid

    def node_name(self, nid: int) -> str:
        name = self._node_names.get(nid)
        if name is None:
            if len(self._node_names) >= _CACHED_MAX:
                self._node_names.clear()
            name = self._node_names[nid] = self.db.execute("SELECT node FROM nodes WHERE id = ?", (nid,)).fetchone()[0]
        return name

    def boot_id(self, nid: int, boot: int, fw: str, board: str, sensors: str, units: str) -> int:
        """The `boots` row of this envelope (sensors and units as `dumps` writes them), made if new."""
        key = (nid, boot, fw, board, sensors, units)
        bid = self._boot_ids.get(key)
        if bid is None:
            row = self.db.execute(
                "SELECT id FROM boots WHERE node = ? AND boot = ? AND fw = ? AND board = ? AND sensors = ?"
                " AND units = ? ORDER BY id DESC LIMIT 1", key).fetchone()
            if row is None:
                row = self.db.execute("INSERT INTO boots (node, boot, fw, board, sensors, units)"
                                      " VALUES (?, ?, ?, ?, ?, ?) RETURNING id", key).fetchone()
            bid = row[0]
            if len(self._boot_ids) >= _CACHED_MAX:
                self._boot_ids.clear()
            self._boot_ids[key] = bid
        return bid

    def batch_boot(self, nid: int, boot: int, fw: str, board: str, sensors: Mapping[str, str],
                   units: Mapping[str, str]) -> int:
        """`boot_id` of a batch's envelope: compared with the boot's last one as dicts, without
        making its JSON (ingest: every batch of a boot carries the same)."""
        key = (nid, boot, fw, board)
        last = self._recent.get(key)
        if last is not None and last[0] == sensors and last[1] == units:
            return last[2]
        bid = self.boot_id(nid, boot, fw, board, dumps(sensors), dumps(units))
        if len(self._recent) >= _CACHED_MAX:
            self._recent.clear()
        self._recent[key] = (dict(sensors), dict(units), bid)
        return bid

    def boot(self, bid: int) -> Boot:
        b = self._boots.get(bid)
        if b is None:
            nid, boot, fw, board, sensors, units = self.db.execute(
                "SELECT node, boot, fw, board, sensors, units FROM boots WHERE id = ?", (bid,)).fetchone()
            if len(self._boots) >= _CACHED_MAX:
                self._boots.clear()
            b = self._boots[bid] = Boot(nid, boot, fw, board, sensors, json.loads(units))
        return b

    def shape_id(self, heads: bytes) -> int:
        """The `shapes` row of a record shape (values.py), made if new."""
        sid = self._shape_ids.get(heads)
        if sid is None:
            row = self.db.execute("SELECT id FROM shapes WHERE heads = ?", (heads,)).fetchone()
            if row is None:
                row = self.db.execute("INSERT INTO shapes (heads) VALUES (?) RETURNING id", (heads,)).fetchone()
            sid = row[0]
            if len(self._shape_ids) >= _CACHED_MAX:
                self._shape_ids.clear()
            self._shape_ids[heads] = sid
        return sid

    def shape(self, sid: int) -> bytes:
        heads = self._shapes.get(sid)
        if heads is None:
            if len(self._shapes) >= _CACHED_MAX:
                self._shapes.clear()
            heads = self._shapes[sid] = self.db.execute("SELECT heads FROM shapes WHERE id = ?", (sid,)).fetchone()[0]
        return heads

    def latest_boot(self, nid: int, boot: int) -> int | None:
        """The newest `boots` row of a node's boot, None when it has none."""
        row = self.db.execute("SELECT max(id) FROM boots WHERE node = ? AND boot = ?", (nid, boot)).fetchone()
        return row[0]
