"""Editing the fleet register (gateway/fleet.py) on the technician's laptop: `meetkit provision`
and `meetkit fleet set` add and change nodes, keeping the operator's comments, blank lines and
order (tomlkit).

    upsert(path, "ams-001", {"lat": 52.3731, "lon": 4.8922, "serials": {"pm": "PMS-1"}})
    get(path, "ams-001")  # {"lat": 52.3731, ...} typed as the gateway reads it, or None

`upsert` sets the given keys of the node's table (a new table at the end for a new node, a new
file with a short header for a new register); None removes a key. `serials` is merged role by
role (None removes a role), so a replaced PM sensor keeps the microphone's serial; `config` (the
node's `[nodes."<id>".config]`, what the gateway sends it) key by key likewise, a table written as
an inline table (`wifi = { ssid = "lab" }`). A new key goes
after the keys that come before it in the register's order (fleet.KEYS), not after the comments
that follow the table.

Nothing half-written is ever seen: the edited text is checked with `meetkit_gateway.fleet.parse`
exactly as the gateway will read it, and the node's configuration with the firmware's own rules
(`rule_problems`: tools/nodeconfig.py, which the gateway on a Pi does not have); a bad value
raises FleetError, naming it, and the file stays as it was. Then it is written to a temporary
file beside it, fsynced, and renamed over it (its mode kept). A lock file (`<name>.lock`, left
in place: removing it would race) is held around the read-modify-write, so two provisions at once
on one laptop both keep their rows.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterator

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import KeyType, SingleKey, Table, Whitespace

from meetkit_gateway.fleet import KEYS, FleetError, load, parse

HEADER = (
    "meetkit fleet register: one [nodes.\"<id>\"] table per node (docs/operator.md, \"The fleet register\").",
    "`meetkit provision` and `meetkit fleet set` add to it and keep comments; the gateway reads it",
    "at [fleet] path of gateway.toml.",
)
NEW_MODE = 0o644  # a new register: the gateway's service user must be able to read it


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold `<path>.lock` exclusively (waits for another holder)."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after 10 s: go on waiting
                    continue
        yield
    finally:
        os.close(fd)  # releases the lock


def _read(path: Path) -> tuple[tomlkit.TOMLDocument, int | None]:
    """The register as a tomlkit document (a new one with the header when there is no file) and
    its mode (None for a new file)."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        doc = tomlkit.document()
        for line in HEADER:
            doc.add(tomlkit.comment(line))
        doc.add(tomlkit.nl())
        return doc, None
    except (OSError, UnicodeDecodeError) as e:
        raise FleetError(path, [f"cannot read the file: {getattr(e, 'strerror', None) or e}"]) from None
    try:
        return tomlkit.parse(text), mode
    except TOMLKitError as e:
        raise FleetError(path, [f"not valid TOML: {e}"]) from None


def _nodes(doc: tomlkit.TOMLDocument, path: Path) -> Table:
    nodes = doc.get("nodes")
    if nodes is None:
        nodes = tomlkit.table(is_super_table=True)  # [nodes."<id>"] headers without a bare [nodes]
        doc.append("nodes", nodes)
    if not isinstance(nodes, Table):
        raise FleetError(path, ['nodes: must be tables [nodes."<id>"]'])
    return nodes


def _place(table: Table, key: str, value: Any) -> None:
    """Add `key` after the keys that precede it in KEYS (so before the comments that close the table)."""
    body = table.value.body
    present = [k.key for k, _ in body if k is not None]
    earlier = [k for k in KEYS[:KEYS.index(key)] if k in present] if key in KEYS else present
    if not present:
        table.append(key, value)
        return
    # tomlkit 0.15 (pinned) has no public insert: the container's, then the table's own dict view
    if earlier:
        table.value._insert_after(earlier[-1], key, value)
    else:
        table.value._insert_at(next(i for i, (k, _) in enumerate(body) if k is not None), key, value)
    dict.__setitem__(table, key, table.value.item(key))


def _serials(table: Table, roles: dict[str, Any]) -> None:
    current = table.get("serials")
    if current is None and all(v is None for v in roles.values()):
        return  # nothing to remove
    if not isinstance(current, dict):  # none yet (or a wrong value, which is replaced)
        current = tomlkit.inline_table()
        if "serials" in table:
            table["serials"] = current
        else:
            _place(table, "serials", current)
        current = table["serials"]
    for role, serial in roles.items():
        if serial is None:
            current.pop(role, None)
        else:
            current[role] = serial
    if not current:
        del table["serials"]


def _toml(value: Any) -> Any:
    """A value as the register writes it: a table inline, an array of tables as an array of inline tables."""
    if isinstance(value, dict):
        t = tomlkit.inline_table()
        t.update({k: _toml(v) for k, v in value.items()})
        return t
    if isinstance(value, list):
        a = tomlkit.array()
        a.extend(_toml(v) for v in value)
        return a
    return value


def _config(table: Table, keys: dict[str, Any]) -> None:
    current = table.get("config")
    if current is None and all(v is None for v in keys.values()):
        return  # nothing to remove
    if not isinstance(current, dict):  # none yet (or a wrong value, which is replaced)
        if "config" in table:
            del table["config"]
        table.append("config", tomlkit.table())  # [nodes."<id>".config], after the node's keys
        current = table["config"]
    body = current.value.body
    while body and body[-1][0] is None and isinstance(body[-1][1], Whitespace):
        body.pop()  # the blank line that closes it goes after the keys added now (tomlkit keeps it in the body)
    for key, value in keys.items():
        if value is None:
            current.pop(key, None)
        else:
            current[key] = _toml(value)
    if not current:
        del table["config"]
    else:
        current.add(tomlkit.nl())


def _apply(table: Table, fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if key == "serials" and isinstance(value, dict):
            _serials(table, value)
        elif key == "config" and isinstance(value, dict):
            _config(table, value)
        elif value is None:
            table.pop(key, None)
        elif key in table:
            table[key] = value
        else:
            _place(table, key, value)


def _write(path: Path, text: str, mode: int | None) -> None:
    """Replace `path` by `text` atomically: a temporary file beside it, fsynced, renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            if hasattr(os, "fchmod"):  # POSIX; mkstemp made it 0600
                os.fchmod(f.fileno(), NEW_MODE if mode is None else mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError, AttributeError):  # the rename itself on disk (POSIX)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def upsert(path: Path | str, node_id: str, fields: dict[str, Any]) -> None:
    """Set `fields` of `node_id` in the register at `path` (created if missing). FleetError, with
    the file untouched, when the result would not be a valid register or it cannot be written."""
    path = Path(path)
    with locked(path):
        doc, mode = _read(path)
        nodes = _nodes(doc, path)
        table = nodes.get(node_id)
        if table is None:
            # not a super table: its [nodes."<id>"] header is written even when it holds only its config
            table = tomlkit.table(is_super_table=False)
            nodes.append(SingleKey(node_id, t=KeyType.Basic), table)  # [nodes."ams-001"], as the docs write it
        elif not isinstance(table, Table):
            raise FleetError(path, [f'nodes."{node_id}": must be a table'])
        try:
            _apply(table, fields)
            if not table and table.is_super_table():  # its last key gone: keep the node, with a header
                nodes[node_id] = tomlkit.table(is_super_table=False)
            text = tomlkit.dumps(doc)
        except (TOMLKitError, TypeError, ValueError) as e:  # a value TOML has no type for
            raise FleetError(path, [f'nodes."{node_id}": cannot be written: {e}']) from None
        nodes = parse(tomllib.loads(text), path)  # exactly what the gateway will read; FleetError names the problem
        problems = rule_problems({node_id: nodes[node_id]})
        if problems:
            raise FleetError(path, problems)
        try:
            _write(path, text, mode)
        except OSError as e:
            raise FleetError(path, [f"cannot write the file: {e.strerror or e}"]) from None


def rule_problems(nodes: dict[str, dict[str, Any]]) -> list[str]:
    """What each node would refuse of the configuration the gateway sends it (its `config` and its
    `noise_offset_db`), by the firmware's own rules, named as the register's keys:
    `nodes."ams-001".config.interval_s: 5 is not a whole number from 10 to 3600`."""
    from meetkit_tools import nodeconfig

    out: list[str] = []
    for node, meta in nodes.items():
        config = dict(meta.get("config") or {})
        if "noise_offset_db" in meta:
            config["noise_offset_db"] = meta["noise_offset_db"]
        if not config:
            continue
        for problem in nodeconfig.remote_problems(node, config):
            where = f'nodes."{node}"' if problem.startswith("config.noise_offset_db") else f'nodes."{node}".config'
            rest = problem.removeprefix("config.")
            out.append(f"{where}.{rest}" + ("" if rest.startswith("noise_offset_db") else " (the firmware's rule)"))
    return out


def get(path: Path | str, node_id: str) -> dict[str, Any] | None:
    """What the register at `path` says of `node_id`, typed as the gateway reads it; None when the
    node (or the file) is not there. FleetError when the file is wrong."""
    path = Path(path)
    if not path.exists():
        return None
    return load(path).get(node_id)
