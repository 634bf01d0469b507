"""The signed envelope of the gateway's messages to one node, and the node keys it is signed with
(docs/payload.md, "Authenticated for one node").

    {"v":1,"body":"<a JSON text>","mac":"<HMAC-SHA256(node key, body's UTF-8 bytes), lowercase hex>"}

`body` is a string, so that the node hashes exactly the bytes the gateway hashed. Every body names
its `node`. The node keys file is the broker folder's `node-keys.json` (`meetkit broker init` and
`add-node` make a 32-byte key per node, hex): `{"ams-001": "<64 hex digits>", ...}`, mode 0600; the
gateway reads it where `[fleet] node_keys` says. It is read again when it changes (a node added with
`meetkit broker add-node` needs no restart). A key is never logged nor shown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from .payload import NODE_ID

VERSION = 1
KEY_HEX = re.compile(r"[0-9a-f]{64}")


class NodeKeyError(Exception):
    """The node keys file cannot be used, or has no key for a node; the message says which."""


def body_text(body: dict[str, Any]) -> str:
    """The JSON text of a body: compact, in the order given (the node hashes what it receives)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def seal(key: bytes, body: dict[str, Any]) -> bytes:
    """The envelope of `body` (which names its node), signed with that node's key."""
    text = body_text(body)
    return json.dumps({"v": VERSION, "body": text, "mac": mac(key, text)}, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def open_envelope(key: bytes, node: str, data: bytes) -> dict[str, Any]:
    """The body of an envelope for `node`, as a node checks it (tests and the simulator); ValueError
    naming the problem: `bad mac` or `another node's`, as the node says on its event topic."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != VERSION or not isinstance(doc.get("body"), str) \
            or not isinstance(doc.get("mac"), str):
        raise ValueError("not an envelope")
    if not hmac.compare_digest(mac(key, doc["body"]), doc["mac"]):
        raise ValueError("bad mac")
    body = json.loads(doc["body"])
    if not isinstance(body, dict) or body.get("node") != node:
        raise ValueError("another node's")
    return body


def parse_keys(text: str, source: Path | str) -> dict[str, bytes]:
    """node id -> key from the text of a node keys file; NodeKeyError naming each problem (never a key)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise NodeKeyError(f"{source}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise NodeKeyError(f"{source}: must be a JSON object of node id: key (64 hex digits)")
    out: dict[str, bytes] = {}
    problems = []
    for node, key in doc.items():
        if not NODE_ID.fullmatch(node):
            problems.append(f"{node[:40]!r}: not a node id")
        elif not isinstance(key, str) or not KEY_HEX.fullmatch(key):
            problems.append(f"{node}: the key must be 64 lowercase hex digits (32 bytes)")
        else:
            out[node] = bytes.fromhex(key)
    if problems:
        raise NodeKeyError(f"{source}: " + "; ".join(problems))
    return out


class NodeKeys:
    """The node keys file at `path`, read again when its modification time or size changes. Safe
    to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, bytes] = {}

    def _load(self) -> dict[str, bytes]:
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError as e:
                raise NodeKeyError(f"{self.path}: cannot read it ({e.strerror or e})") from None
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    text = self.path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise NodeKeyError(f"{self.path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
                self._keys = parse_keys(text, self.path)
                self._stamp = stamp
            return self._keys

    def key(self, node: str) -> bytes:
        keys = self._load()
        if node not in keys:
            raise NodeKeyError(f"{self.path}: no key for node {node} (`meetkit broker add-node {node}` makes one; "
                               "then provision the node again so that it has it)")
        return keys[node]

    def nodes(self) -> set[str]:
        return set(self._load())

    def seal(self, node: str, body: dict[str, Any]) -> bytes:
        """`body` (which must name `node`) in its envelope, signed with `node`'s key."""
        if body.get("node") != node:
            raise ValueError(f"the body names node {body.get('node')!r}, not {node!r}")
        return seal(self.key(node), body)
