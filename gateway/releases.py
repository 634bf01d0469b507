"""Signed app releases: what `meetkit release build` makes, checked before anything of it reaches a
node (docs/payload.md, "Release offer"; docs/operator.md, "Running the fleet over the air").

A release is a folder:

    manifest.json   {"v":1,"version":"0.3.0","mpy":"6.3","arch":"xtensawin","micropython":"1.29.0",
                     "boards":[...],"files":[{"path":"boot.py","size":1034,"sha256":"..."},...],"bytes":N}
    release.sig     Ed25519 signature (64 bytes) by the release key over manifest.json's bytes as they are
    files/<path>    every file of the manifest

`verify(folder, keys)` checks, in this order, and names the first thing that fails: the signature
against each release public key configured (`[ota] release_keys`), the manifest's form, and every
file's size and sha256. Only a `Release` that passed all of it is ever offered or served: the gateway
keeps its files' bytes in memory, so what it serves is what was checked (a file changed on the disk
afterwards changes nothing).

`Releases` is the gateway's folder of kept releases (`[ota] releases`), one folder per version:
`add` verifies and copies a release in whole (a temporary folder, then one rename), `get` verifies a
kept one again when it is loaded.

Versions compare as numbers, part by part (`0.10.0` after `0.9.1`): `version_key`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MANIFEST = "manifest.json"
SIGNATURE = "release.sig"
FILES = "files"
FORMAT = 1
VERSION = re.compile(r"(0|[1-9][0-9]{0,5})(\.(0|[1-9][0-9]{0,5})){0,3}")
MPY = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")
BOARD = re.compile(r"[a-z0-9-]{1,64}")
PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,3}")
SHA256 = re.compile(r"[0-9a-f]{64}")
#: files a node keeps of its own: a release never carries them (provision writes them, or the node
#: itself), and appswap's bookkeeping
NODE_FILES = ("config.json", "board.json", "ca.der", "node.key", "app.json", "boot.count")
NODE_DIRS = ("new", "sp")
#: a release bigger than this is refused: provision's whole app is about 150 KB; a node's flash is 2 MB
MAX_BYTES = 1_000_000
MAX_FILES = 200
#: the manifest travels inside the offer, escaped as a JSON string: it must fit the broker's 16 KB
#: (tools/broker.py, GATEWAY_PAYLOAD_BYTES) and a node's heap; provision's app makes about 2.5 KB
MAX_MANIFEST_BYTES = 8000


class ReleaseError(Exception):
    """A release that cannot be used; the message names the file and the problem."""


def version_key(version: str) -> tuple[int, ...]:
    """`version` as numbers to compare (`0.10.0` > `0.9.1`; `1.2` == `1.2.0`); ValueError if it is not one."""
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise ValueError(f"{version!r} is not a version (1 to 4 whole numbers joined by '.', like 0.3.0)")
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short name of a public key, for logs and messages: sha256 of its 32 bytes, 16 hex digits."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    path: Path
    key: Ed25519PublicKey

    @property
    def name(self) -> str:
        return f"{self.path.name} ({fingerprint(self.key)})"


def load_public_key(path: Path) -> PublicKey:
    """An Ed25519 public key in PEM (as `meetkit release keygen` writes release.pub)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise ReleaseError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ReleaseError(f"{path}: not a public key in PEM form ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"{path}: a {type(key).__name__}, not an Ed25519 public key")
    return PublicKey(Path(path), key)


@dataclass(frozen=True)
class Release:
    """A verified release: its manifest (parsed and as signed), the key that signed it, every file's bytes."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signed_by: str
    data: tuple[bytes, ...]  # in the manifest's order of files

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def boards(self) -> tuple[str, ...]:
        return tuple(self.manifest["boards"])

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.manifest["files"])

    @property
    def size(self) -> int:
        return int(self.manifest["bytes"])


def check_manifest(doc: Any) -> dict[str, Any]:
    """The manifest, if it has the form of docs/payload.md; ReleaseError naming the field otherwise."""
    def bad(field: str, what: str) -> ReleaseError:
        return ReleaseError(f"{MANIFEST}: {field}: {what}")

    if not isinstance(doc, dict):
        raise ReleaseError(f"{MANIFEST}: must be a JSON object")
    if doc.get("v") != FORMAT:
        raise bad("v", f"must be {FORMAT}, got {doc.get('v')!r}")
    try:
        version_key(doc.get("version"))  # type: ignore[arg-type]
    except ValueError as e:
        raise bad("version", str(e)) from None
    if not isinstance(doc.get("mpy"), str) or not MPY.fullmatch(doc["mpy"]):
        raise bad("mpy", f"must be the .mpy version like \"6.3\", got {doc.get('mpy')!r}")
    for key in ("arch", "micropython"):
        if not isinstance(doc.get(key), str) or not 0 < len(doc[key]) <= 32 or not doc[key].isprintable():
            raise bad(key, f"must be a short text, got {doc.get(key)!r}")
    boards = doc.get("boards")
    if not isinstance(boards, list) or not boards or not all(isinstance(b, str) and BOARD.fullmatch(b) for b in boards):
        raise bad("boards", "must be a non-empty list of board names (boards/<name>.json)")
    files = doc.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise bad("files", f"must be a list of 1 to {MAX_FILES} files")
    seen: set[str] = set()
    total = 0
    for i, f in enumerate(files):
        if not isinstance(f, dict) or set(f) != {"path", "size", "sha256"}:
            raise bad(f"files[{i}]", 'must be {"path", "size", "sha256"}')
        path, size, digest = f["path"], f["size"], f["sha256"]
        if not isinstance(path, str) or not PATH.fullmatch(path) or ".." in path.split("/"):
            raise bad(f"files[{i}].path", f"not a relative path of the app, got {str(path)[:80]!r}")
        if path in NODE_FILES or path.split("/")[0] in NODE_DIRS or path.endswith((".swp", ".old")):
            raise bad(f"files[{i}].path", f"{path} is the node's own, never part of a release")
        if path in seen:
            raise bad(f"files[{i}].path", f"{path} is listed twice")
        seen.add(path)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_BYTES:
            raise bad(f"files[{i}].size", f"must be a whole number of bytes up to {MAX_BYTES}")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise bad(f"files[{i}].sha256", "must be 64 lowercase hex digits")
        total += size
    if doc.get("bytes") != total:
        raise bad("bytes", f"must be the files' total, {total}, got {doc.get('bytes')!r}")
    if total > MAX_BYTES:
        raise bad("bytes", f"{total} bytes: a release is at most {MAX_BYTES}")
    return doc


def verify(folder: Path, keys: list[PublicKey]) -> Release:
    """The release in `folder` if a key of `keys` signed its manifest and every file matches it;
    ReleaseError naming what does not."""
    folder = Path(folder)
    if not keys:
        raise ReleaseError("no release public key to check the signature with ([ota] release_keys)")
    try:
        manifest_bytes = (folder / MANIFEST).read_bytes()
        signature = (folder / SIGNATURE).read_bytes()
    except OSError as e:
        raise ReleaseError(f"{folder}: not a release ({e.filename and Path(e.filename).name}: "
                           f"{e.strerror or e})") from None
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"{folder / MANIFEST}: {len(manifest_bytes)} bytes, at most {MAX_MANIFEST_BYTES}")
    signer = None
    for k in keys:
        try:
            k.key.verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        signer = k
        break
    if signer is None:
        raise ReleaseError(f"{folder / SIGNATURE}: bad signature: it is not a signature of {MANIFEST} by "
                           f"{' or '.join(k.name for k in keys)}")
    try:
        doc = json.loads(manifest_bytes)
    except ValueError as e:
        raise ReleaseError(f"{folder / MANIFEST}: not JSON ({e})") from None
    try:
        manifest = check_manifest(doc)
    except ReleaseError as e:
        raise ReleaseError(f"{folder}/{e}") from None
    data = []
    for f in manifest["files"]:
        p = folder / FILES / f["path"]
        try:
            blob = p.read_bytes()
        except OSError as e:
            raise ReleaseError(f"{p}: missing ({e.strerror or e})") from None
        if len(blob) != f["size"]:
            raise ReleaseError(f"{p}: {len(blob)} bytes, the manifest says {f['size']}")
        if hashlib.sha256(blob).hexdigest() != f["sha256"]:
            raise ReleaseError(f"{p}: sha256 does not match the manifest")
        data.append(blob)
    return Release(manifest, manifest_bytes, signer.name, tuple(data))


class Releases:
    """The gateway's folder of kept releases (`[ota] releases`), one subfolder per version."""

    def __init__(self, folder: Path, keys: list[PublicKey]) -> None:
        self.folder = Path(folder)
        self.keys = keys

    def versions(self) -> list[str]:
        """The versions kept, oldest first (by version, not by date)."""
        if not self.folder.is_dir():
            return []
        out = []
        for p in self.folder.iterdir():
            if p.is_dir() and (p / MANIFEST).exists():
                try:
                    version_key(p.name)
                except ValueError:
                    continue
                out.append(p.name)
        return sorted(out, key=version_key)

    def get(self, version: str) -> Release:
        """The kept release `version`, verified now; ReleaseError if it is missing or does not verify."""
        try:
            version_key(version)
        except ValueError as e:
            raise ReleaseError(str(e)) from None
        folder = self.folder / version
        if not (folder / MANIFEST).exists():
            known = ", ".join(self.versions()) or "none"
            raise ReleaseError(f"no release {version} in {self.folder} (kept: {known}; "
                               "`meetkit-gateway release add DIR` keeps one)")
        release = verify(folder, self.keys)
        if release.version != version:
            raise ReleaseError(f"{folder}: its manifest says version {release.version}, not {version}")
        return release

    def add(self, source: Path) -> tuple[Release, bool]:
        """Verify the release in `source` and keep a copy; (the release, False if it was kept already).
        ReleaseError if it does not verify, or another release of the same version is kept."""
        release = verify(source, self.keys)
        dest = self.folder / release.version
        if dest.exists():
            try:
                kept = (dest / MANIFEST).read_bytes()
            except OSError:
                kept = b""
            if kept == release.manifest_bytes:
                self.get(release.version)  # what is kept still verifies
                return release, False
            raise ReleaseError(f"{dest}: another release {release.version} is kept already; a new build needs a "
                               "new version (firmware/lib/config.py's FW_VERSION)")
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True)
            os.chmod(self.folder, 0o755)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".incoming-{release.version}-"))
        try:
            (tmp / MANIFEST).write_bytes(release.manifest_bytes)
            (tmp / SIGNATURE).write_bytes((Path(source) / SIGNATURE).read_bytes())
            for f, blob in zip(release.files, release.data):
                p = tmp / FILES / f["path"]
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(blob)  # the bytes that were checked, not the source read again
            # Readable by all (a release is no secret): `release add` runs as root, the service as
            # its own (dynamic) user, which must read what root kept
            for p in [tmp, tmp / MANIFEST, tmp / SIGNATURE, *(tmp / FILES).rglob("*"), tmp / FILES]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
                if p.is_file():
                    with open(p, "rb") as fh:
                        os.fsync(fh.fileno())
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        verify(dest, self.keys)
        return release, True
