"""The signed envelope of everything the gateway sends a node on `config`, `ota` and `cmd`
(docs/payload.md, "Authenticated for one node"), and the node keys it is signed with.

    {"v":1,"body":"{\\"node\\":\\"ams-001\\",\\"version\\":7,\\"config\\":{...}}","mac":"<64 hex>"}

`body` is a JSON text (a string, so that both sides hash the same bytes), `mac` HMAC-SHA256 of its
UTF-8 bytes with the node's 32-byte key, in lowercase hex. Every body names its `node`.

The keys are in the broker folder's `node-keys.json` (made by `meetkit broker init` / `add-node`,
0600), which the gateway reads at `[fleet] node_keys` of gateway.toml:

    {"nodes": {"ams-001": "<64 hex digits>", "ams-002": "..."}}

`NodeKeys` reads it again when it changes and never says a key in an error; a node without a key
(or a file that cannot be read) gets nothing signed: the caller holds back what it would have sent
and shows why (`NodeKeys.problem`). Read from its own path, a node added needs no restart; handed
to the service as a systemd credential, the file is a copy made at the gateway's start, so a node
missing from it is said with the restart that renews the copy (credentials.py).

    keys = NodeKeys(path)
    key = keys.key("ams-001")            # bytes, or None (keys.problem("ams-001") says why)
    envelope(key, {"node": "ams-001", "cmd": "selftest", "id": 12})   # the bytes to publish
    opened(key, payload)                 # the body as a dict, or SignatureError (what a node checks)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from pathlib import Path
from typing import Any

from .credentials import copied_at_start, is_credential
from .watched import WatchedFile, unreadable

VERSION = 1
KEY_BYTES = 32
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class SignatureError(Exception):
    """A message that is not a signed envelope for this key (the node's `bad mac`)."""


def body_text(body: dict[str, Any]) -> str:
    """The body as the JSON text that is signed: compact, keys in the order given."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def envelope(key: bytes, body: dict[str, Any]) -> bytes:
    """The signed envelope of `body` (which must name its `node`), as the bytes to publish."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a node key is {KEY_BYTES} bytes, got {len(key)}")
    text = body_text(body)
    doc = {"v": VERSION, "body": text, "mac": mac(key, text)}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def opened(key: bytes, payload: bytes) -> dict[str, Any]:
    """The body of a signed envelope, checked as a node checks it; SignatureError naming what is
    wrong (`bad mac`, not an envelope) otherwise. For the tests' fake nodes and for tools."""
    try:
        doc = json.loads(payload)
    except ValueError:
        raise SignatureError("not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or not isinstance(doc.get("body"), str) \
            or not isinstance(doc.get("mac"), str) or set(doc) != {"v", "body", "mac"}:
        raise SignatureError("not a signed envelope")
    if not hmac.compare_digest(mac(key, doc["body"]), doc["mac"]):
        raise SignatureError("bad mac")
    try:
        body = json.loads(doc["body"])
    except ValueError:
        raise SignatureError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise SignatureError("the body is not an object")
    return body


class NodeKeys:
    """The node keys at `path` (None: not configured, no node has a key). Safe to share between
    threads; the file is read again when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = WatchedFile(path) if path is not None else None
        self._keys: dict[str, bytes] = {}
        self._error: str | None = None  # why the file cannot be used, as last read
        self._bad: list[str] = []  # nodes whose key is not 64 hex digits

    def _load(self) -> None:
        if self.path is None or self._file is None:
            self._keys, self._error = {}, "no node keys configured ([fleet] node_keys in gateway.toml)"
            return
        try:
            text = self._file.read_if_changed()
        except (OSError, UnicodeDecodeError) as e:
            self._keys, self._error = {}, f"{self.path}: cannot read the node keys: {unreadable(e)}"
            return
        if text is None:
            return
        try:
            doc = json.loads(text)
        except ValueError as e:
            self._keys, self._error = {}, f"{self.path}: cannot read the node keys: {type(e).__name__}"
            return
        nodes = doc.get("nodes") if isinstance(doc, dict) else None
        if not isinstance(nodes, dict):
            self._keys, self._error = {}, f'{self.path}: not a node keys file ({{"nodes": {{"<id>": "<64 hex>"}}}})'
            return
        # a key in the wrong form is left out (and named by node, never shown): that node gets nothing
        self._keys = {n: bytes.fromhex(k) for n, k in nodes.items() if isinstance(k, str) and _HEX_KEY.fullmatch(k)}
        self._bad = sorted(n for n in nodes if n not in self._keys)
        self._error = None

    def key(self, node: str) -> bytes | None:
        with self._lock:
            self._load()
            return self._keys.get(node)

    def problem(self, node: str) -> str | None:
        """Why `node` has no key (None: it has one)."""
        with self._lock:
            self._load()
            if self._error is not None:
                return self._error
            if node in self._keys:
                return None
            if node in self._bad:
                return f"{self.path}: the key of {node} is not 64 hex digits"
            if is_credential(self.path):
                return f"no key for {node}: {copied_at_start(self.path, f'`meetkit broker add-node {node}`')}"
            return f"{self.path}: no key for {node} (`meetkit broker add-node {node}` makes one)"
