"""`meetkit release`: the release key, and signed app releases built from firmware/.

    meetkit release keygen --out DIR           DIR/release.key (Ed25519, 0600: keep it off the gateway)
                                               and DIR/release.pub (the gateway's [ota] release_keys)
    meetkit release build --key release.key --out DIR [--board B ...] [--arch x64]
    meetkit release verify DIR --pub release.pub

`build` compiles the app with the builder `meetkit provision` uses (tools/appbuild.py, .mpy for
xtensawin: every ESP32 and ESP32-S3 board), without the files each node has of its own (config.json,
board.json, ca.der, node.key), writes the manifest of docs/payload.md ("Release offer": version from
firmware/lib/config.py's FW_VERSION, each file's size and sha256, the .mpy version and architecture,
the MicroPython of mpy-cross, the boards) and release.sig, the Ed25519 signature over the
manifest's bytes. Versions only go up: with releases already beside --out (in its parent folder), a
version not above the newest of them is refused. The folder appears whole or not at all (built
beside it, then renamed), and is checked as the gateway checks it before it is renamed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meetkit_gateway import releases
from meetkit_gateway.releases import FILES, MANIFEST, SIGNATURE, ReleaseError, version_key
from meetkit_tools import appbuild
from meetkit_tools.paths import BOARDS, FIRMWARE

KEY = "release.key"
PUB = "release.pub"
ARCH = "xtensawin"  # ESP32 and ESP32-S3 (appbuild.ARCHS; `sys.implementation._mpy >> 10` == 10)
SIM_ARCH = "x64"  # the simulator's MicroPython (unix port on x86-64): releases for simulated nodes
MCUS = ("esp32", "esp32s3")  # the chips whose MicroPython loads xtensawin .mpy


class ReleaseToolError(Exception):
    """A problem the user can fix; the message says which."""


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, created with `mode` from the start."""
    from meetkit_tools.broker import _write as write

    write(path, data, mode)


def keygen(out: Path) -> tuple[Path, Path]:
    """A new release key pair in `out`; an existing release.key is never replaced (every gateway
    that trusts its release.pub would refuse the releases of a new one)."""
    out = Path(out)
    key_path, pub_path = out / KEY, out / PUB
    if key_path.exists():
        raise ReleaseToolError(f"{key_path}: exists; a release key is kept, not replaced (move it away first "
                               "if you mean to: the gateways then need the new release.pub)")
    key = Ed25519PrivateKey.generate()
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return key_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise ReleaseToolError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ReleaseToolError(f"{path}: not an unencrypted private key in PEM form ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseToolError(f"{path}: a {type(key).__name__}, not an Ed25519 key (`meetkit release keygen`)")
    return key


def fw_version(firmware: Path = FIRMWARE) -> str:
    """FW_VERSION of firmware/lib/config.py, read as text (the node's own constant)."""
    path = firmware / "lib" / "config.py"
    m = re.search(r'^FW_VERSION = "([^"]*)"', path.read_text(), re.M)
    if not m:
        raise ReleaseToolError(f"{path}: no FW_VERSION = \"...\" line")
    try:
        version_key(m[1])
    except ValueError as e:
        raise ReleaseToolError(f"{path}: FW_VERSION {e}") from None
    return m[1]


def micropython_version() -> str:
    """The MicroPython mpy-cross is from ("MicroPython v1.29.0 on ...; mpy-cross emitting mpy v6.3")."""
    out = subprocess.run([appbuild.mpy_cross_bin(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"MicroPython v(\d+\.\d+(?:\.\d+)?)", out)
    if not m:
        raise ReleaseToolError(f"mpy-cross --version said {out.strip()!r}: no MicroPython version in it")
    return m[1]


def newest_beside(out: Path) -> tuple[str, Path] | None:
    """The newest release in `out`'s parent folder (by its manifest's version), if any."""
    parent = Path(out).absolute().parent
    best: tuple[str, Path] | None = None
    if not parent.is_dir():
        return None
    for p in parent.iterdir():
        m = p / MANIFEST
        if p == Path(out).absolute() or not m.is_file():
            continue
        try:
            v = json.loads(m.read_bytes())["version"]
            key = version_key(v)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a release: none of ours
        if best is None or key > version_key(best[0]):
            best = (v, p)
    return best


def _boards(names: list[str], arch: str = ARCH) -> list[str]:
    known = sorted(p.stem for p in BOARDS.glob("*.json") if not p.stem.endswith(".schema"))
    chosen = list(dict.fromkeys(names)) or known
    for name in chosen:
        if name not in known:
            raise ReleaseToolError(f"--board {name}: unknown board (known: {', '.join(known)})")
        mcu = json.loads((BOARDS / f"{name}.json").read_text()).get("mcu")
        if arch == ARCH and mcu not in MCUS:
            raise ReleaseToolError(f"--board {name}: an {mcu}, whose MicroPython does not load {ARCH} .mpy")
    return chosen


def build(key_path: Path, out: Path, boards: list[str] | None = None, firmware: Path = FIRMWARE,
          arch: str = ARCH) -> dict[str, Any]:
    """Build, sign and check the release of `firmware` into `out` (which must not exist); its manifest.
    `arch`: the .mpy architecture (SIM_ARCH: the simulator's MicroPython, for tests and demos)."""
    out = Path(out).absolute()
    key = load_private_key(key_path)
    if out.exists():
        raise ReleaseToolError(f"--out {out}: exists; a release is built into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    version = fw_version(firmware)
    newest = newest_beside(out)
    if newest is not None and version_key(version) <= version_key(newest[0]):
        raise ReleaseToolError(f"version {version} (FW_VERSION in {firmware / 'lib' / 'config.py'}) is not above the "
                               f"newest release beside it, {newest[0]} in {newest[1]}: versions only go up")
    if arch not in (ARCH, SIM_ARCH):
        raise ReleaseToolError(f"--arch {arch}: one of {ARCH} (the boards), {SIM_ARCH} (the simulator)")
    chosen = _boards(boards or [], arch)
    try:
        mpy = appbuild.mpy_cross_version()
        micropython = micropython_version()
    except appbuild.BuildError as e:
        raise ReleaseToolError(str(e)) from None
    target = appbuild.Target(mpy[0], mpy[1], arch)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    try:
        try:
            appbuild.build_code(tmp / FILES, target, firmware)
        except appbuild.BuildError as e:
            raise ReleaseToolError(str(e)) from None
        files = []
        for p in sorted((tmp / FILES).rglob("*")):
            if p.is_file():
                files.append({"path": p.relative_to(tmp / FILES).as_posix(), "size": p.stat().st_size,
                              "sha256": appbuild.sha256(p)})
        manifest = {"v": releases.FORMAT, "version": version, "mpy": f"{mpy[0]}.{mpy[1]}", "arch": arch,
                    "micropython": micropython, "boards": chosen, "files": files,
                    "bytes": sum(f["size"] for f in files)}
        blob = json.dumps(manifest, separators=(",", ":")).encode()
        (tmp / MANIFEST).write_bytes(blob)
        (tmp / SIGNATURE).write_bytes(key.sign(blob))
        pub = releases.PublicKey(Path(key_path).with_name(PUB), key.public_key())
        try:
            releases.verify(tmp, [pub])  # as the gateway checks it
        except ReleaseError as e:
            raise ReleaseToolError(f"the release does not verify: {e}") from None
        os.chmod(tmp, 0o755)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
