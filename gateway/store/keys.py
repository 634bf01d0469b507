"""The small integers a record row refers to: a node's `nodes.id` and its batch's envelope, a
`boots` row (schema.py). Both are looked up for every record written and read, so they are cached;
a row never changes once committed (boots ids are never used again: AUTOINCREMENT), so a cache of
another process or connection is never wrong, only incomplete. What a rolled-back transaction made
is forgotten with it (`forget`)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Callable, Mapping, NamedTuple

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

    def _made(self, cache: dict[Any, int], key: Any, find: str, make: str | None, args: tuple[Any, ...]) -> int | None:
        """The id in `cache` under `key`, else the first row of `find`, else (unless `make` is None)
        the id of the row `make` inserts (a `RETURNING id`); kept in `cache`."""
        rid = cache.get(key)
        if rid is None:
            row = self.db.execute(find, args).fetchone()
            if row is None or row[0] is None:
                if make is None:
                    return None
                row = self.db.execute(make, args).fetchone()
            rid = row[0]
            if len(cache) >= _CACHED_MAX:
                cache.clear()
            cache[key] = rid
        return rid

    def _row(self, cache: dict[int, Any], rid: int, sql: str, made: Callable[[tuple], Any] = lambda r: r) -> Any:
        """`made` of the row `sql` reads by id, kept in `cache` (a row never changes once committed)."""
        row = cache.get(rid)
        if row is None:
            if len(cache) >= _CACHED_MAX:
                cache.clear()
            row = cache[rid] = made(self.db.execute(sql, (rid,)).fetchone())
        return row

    def node_id(self, node: str, make: bool = True) -> int | None:
        """`nodes.id` of `node`; a row made for it when it has none and `make` (else None)."""
        return self._made(self._node_ids, node, "SELECT id FROM nodes WHERE node = ?",
                          "INSERT INTO nodes (node) VALUES (?) RETURNING id" if make else None, (node,))

    def node_name(self, nid: int) -> str:
        return self._row(self._node_names, nid, "SELECT node FROM nodes WHERE id = ?")[0]

    def boot_id(self, nid: int, boot: int, fw: str, board: str, sensors: str, units: str) -> int:
        """The `boots` row of this envelope (sensors and units as `dumps` writes them), made if new."""
        key = (nid, boot, fw, board, sensors, units)
        return self._made(self._boot_ids, key,  # type: ignore[return-value]
                          "SELECT max(id) FROM boots WHERE node = ? AND boot = ? AND fw = ? AND board = ?"
                          " AND sensors = ? AND units = ?",
                          "INSERT INTO boots (node, boot, fw, board, sensors, units) VALUES (?, ?, ?, ?, ?, ?)"
                          " RETURNING id", key)

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
        return self._row(self._boots, bid, "SELECT node, boot, fw, board, sensors, units FROM boots WHERE id = ?",
                         lambda r: Boot(*r[:5], json.loads(r[5])))

    def shape_id(self, heads: bytes) -> int:
        """The `shapes` row of a record shape (values.py), made if new."""
        return self._made(self._shape_ids, heads, "SELECT id FROM shapes WHERE heads = ?",  # type: ignore[return-value]
                          "INSERT INTO shapes (heads) VALUES (?) RETURNING id", (heads,))

    def shape(self, sid: int) -> bytes:
        return self._row(self._shapes, sid, "SELECT heads FROM shapes WHERE id = ?")[0]

    def latest_boot(self, nid: int, boot: int) -> int | None:
        """The newest `boots` row of a node's boot, None when it has none."""
        row = self.db.execute("SELECT max(id) FROM boots WHERE node = ? AND boot = ?", (nid, boot)).fetchone()
        return row[0]
