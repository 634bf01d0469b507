"""The towns of the nodes a gateway in a region forwards: its own nodes' town is its own, a visiting
node's (one that failed over from a neighbour) is its HOME town, whatever gateway forwards it, so
that a record forwarded by two gateways of different towns is the same series in VictoriaMetrics
(docs/operator.md, "Forwarding in a region").

The table is the broker folder's `secrets.json` (`[region] visitors`, default `[fleet]
broker_secrets`): `nodes` holds this gateway's own nodes, `visitors` the neighbours' nodes that
`meetkit region accounts` gave an account here, each with its `home` gateway and that gateway's
`town`:

    {"nodes": {"ut-0001": "<password>"},
     "visitors": {"zs-0001": {"password": "<password>", "home": "zs-1", "town": "zeist"}}}

Only the node ids, `home` and `town` are kept from it: the passwords in the same file are dropped
as soon as it is parsed, never stored, logged or put in an error (an error names the file and the
key, never a value). The file is read again when it changes (as the fleet register is); one that
cannot be read keeps the table last read, and says why (`error`).

A node in neither table (an unknown visitor: `accounts` not run since its home gateway's broker
folder got it, or a node from outside the plan) is forwarded under this gateway's own town and
counted (`region.unknown_visitor`, records, at ingest); the page flags it. Without a file the
gateway cannot tell a visitor from its own node: every node goes under its own town.

    v = Visitors(Path("/etc/meetkit/broker/secrets.json"), "utrecht")
    v.town("zs-0001")      # "zeist"
    v.unknown("xx-0001")   # True: forwarded under "utrecht"
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import REGION_NAME
from .credentials import copied_at_start, is_credential
from .watched import WatchedFile, unreadable

UNKNOWN_VISITOR = "region.unknown_visitor"  # the store's counter: records of unknown visitors stored


@dataclass(frozen=True)
class Table:
    """What the file says, passwords left out: own node ids, visitor -> (home, town), and the
    entries that could not be used (by key)."""

    own: frozenset[str] = frozenset()
    visitors: dict[str, tuple[str, str]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def parse(text: str) -> Table:
    """The table from secrets.json's text; ValueError (naming no value) when it is not one.
    A visitor entry without a valid `town` (written by an older `meetkit region accounts`) is a
    problem of its own: that node counts as unknown."""
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise ValueError("not JSON (the broker folder's secrets.json)") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), dict):
        raise ValueError('no "nodes" in it: not the secrets.json of `meetkit broker init`')
    raw = doc.get("visitors", {})
    if not isinstance(raw, dict):
        raise ValueError('"visitors": not a table of nodes (`meetkit region accounts` writes it)')
    visitors: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for node, entry in raw.items():
        home = entry.get("home") if isinstance(entry, dict) else None
        town = entry.get("town") if isinstance(entry, dict) else None
        if isinstance(home, str) and isinstance(town, str) and REGION_NAME.fullmatch(town):
            visitors[node] = (home, town)
        else:
            problems.append(f'visitors."{node}": no town (run `meetkit region accounts` again: it writes each '
                            "visitor's home and town)")
    # the node ids of `nodes` only: their passwords are not kept
    return Table(frozenset(str(n) for n in doc["nodes"]), visitors, tuple(problems))


@dataclass(frozen=True)
class State:
    """For the page and /metrics."""

    path: str | None
    error: str | None  # the file cannot be read (the table last read is used)
    problems: tuple[str, ...]  # entries that could not be used
    visitors: int


class Visitors:
    """The town each node's records are forwarded under; safe to share between threads (the writer,
    the forwarders, the status server)."""

    def __init__(self, path: Path | None, own_town: str) -> None:
        self.path = path
        self.own_town = own_town
        self._lock = threading.Lock()
        self._file = WatchedFile(path) if path is not None else None
        self._table = Table()
        self._error: str | None = None

    def _refresh(self) -> None:
        if self._file is None:
            return
        try:
            text = self._file.read_if_changed()
        except (OSError, UnicodeDecodeError) as e:
            self._error = f"{self.path}: cannot read it ({unreadable(e)})"   # the table last read goes on
            return
        if text is None:
            return
        try:
            self._table, self._error = parse(text), None
        except ValueError as e:
            self._error = f"{self.path}: {e}"

    def town(self, node: str) -> str:
        """The town `node`'s records are forwarded under: its home town when it is a visitor the
        table knows, else this gateway's."""
        with self._lock:
            self._refresh()
            v = self._table.visitors.get(node)
        return v[1] if v is not None else self.own_town

    def towns(self, nodes: set[str]) -> dict[str, str]:
        """`town` for several nodes, the file looked at once."""
        with self._lock:
            self._refresh()
            table = self._table
        return {n: table.visitors[n][1] if n in table.visitors else self.own_town for n in nodes}

    def unknown(self, node: str) -> bool:
        """A file is set, and `node` is neither this gateway's nor a visitor it knows (with a town)."""
        if self.path is None:
            return False
        with self._lock:
            self._refresh()
            t = self._table
        return node not in t.own and node not in t.visitors

    def why_unknown(self) -> str:
        """What the page says of an unknown visitor."""
        path = self.path
        how = (copied_at_start(path, "`meetkit region accounts` wrote the new secrets.json")
               if path is not None and is_credential(path)
               else "run `meetkit region accounts` and copy its secrets.json here")
        return (f"not a node of this gateway nor a visitor of the region plan in {self.path}: forwarded under this "
                f"gateway's town, {self.own_town}, not its home town; {how}")

    def state(self) -> State:
        with self._lock:
            self._refresh()
            t = self._table
            return State(None if self.path is None else str(self.path), self._error, t.problems, len(t.visitors))
