"""What the gateway knows of each node besides its data: for now only where it is mounted.

A minimal stand-in for the fleet register (a later issue): an optional TOML file, its path in a
forwarding target's `fleet` key or in `[fleet] path` of gateway.toml, one table per node:

    [nodes."ams-001"]
    lat = 52.37310          # WGS84 degrees, north positive
    lon = 4.89220           # WGS84 degrees, east positive
    height_m = 3.5          # optional: mounting height above the ground, metres
    name = "Dam, lamp post 12"   # optional: a name for the place

    fleet = Fleet(path)
    fleet.node_metadata("ams-001")  # {"lat": 52.3731, "lon": 4.8922, "height_m": 3.5, "name": "..."} or None

The file is read again when it changes, so a node added to it needs no restart. A file that is
missing or wrong raises `FleetError` listing every problem by key (`nodes."ams-001".lat: must be
a number from -90 to 90, got 152.4 (a number)`): the caller holds back what needs it rather than
guess, since a position sent upstream without its node is hard to take back.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from .config import _describe  # the same wording as gateway.toml's errors
from .payload import NODE_ID

KEYS = ("lat", "lon", "height_m", "name")


class FleetError(Exception):
    """The fleet file cannot be used; `errors` lists every problem, one line each."""

    def __init__(self, source: Path, errors: list[str]) -> None:
        super().__init__(f"fleet file {source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


def _number(v: Any, low: float, high: float) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        return f"must be a number from {low:g} to {high:g}, got {_describe(v)}"
    return None


def parse(doc: dict[str, Any], source: Path) -> dict[str, dict[str, Any]]:
    """Node id -> metadata from a parsed fleet file, or FleetError naming every problem."""
    errors: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    for key in doc:
        if key != "nodes":
            errors.append(f'{key}: unknown key (the file has [nodes."<id>"] tables only)')
    nodes = doc.get("nodes", {})
    if not isinstance(nodes, dict):
        errors.append('nodes: must be tables [nodes."<id>"]')
        nodes = {}
    for node, table in nodes.items():
        where = f'nodes."{node}"'
        if not NODE_ID.fullmatch(node):
            errors.append(f"{where}: not a node id ([a-z0-9-], 1 to 32 characters)")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: must be a table")
            continue
        meta: dict[str, Any] = {}
        for key, value in table.items():
            if key not in KEYS:
                errors.append(f"{where}.{key}: unknown key (known: {', '.join(KEYS)})")
                continue
            if key == "name":
                problem = None if isinstance(value, str) and value.strip() else "must be a non-empty string"
            else:
                problem = _number(value, *{"lat": (-90, 90), "lon": (-180, 180), "height_m": (-100, 1000)}[key])
            if problem:
                errors.append(f"{where}.{key}: {problem}")
            else:
                meta[key] = float(value) if key != "name" else value
        if ("lat" in table) != ("lon" in table):
            errors.append(f"{where}: lat and lon go together")
        out[node] = meta
    if errors:
        raise FleetError(source, errors)
    return out


class Fleet:
    """The fleet file at `path` (None: no file, nothing is known of any node)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._nodes: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        assert self.path is not None
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                doc = tomllib.loads(self.path.read_text(encoding="utf-8"))
                self._nodes, self._stamp = parse(doc, self.path), stamp
        except OSError as e:
            raise FleetError(self.path, [f"cannot read the file: {e.strerror or e}"]) from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise FleetError(self.path, [f"not valid TOML: {e}"]) from None
        return self._nodes

    def node_metadata(self, node: str) -> dict[str, Any] | None:
        """What the file says of `node` (keys of KEYS that it gives), None when it says nothing."""
        if self.path is None:
            return None
        return self._load().get(node) or None
