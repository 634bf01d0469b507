"""Read a simulated node's flash image (littlefs) from CPython, and put a file on it.

The reading is done by real MicroPython (tools/sim/mpy/flashtool.py, through the simulator's own
block device, read-only), so the host sees exactly what the firmware would see at its next boot
and no littlefs package is needed. Read an image while its node is stopped: a running node may
be half-way through a write. `write_file` is what `mpremote fs cp` does to a stopped board.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from meetkit_tools.paths import SIM_MPY


def _tool(image: Path, *args: str, stdin: bytes | None = None) -> bytes:
    from meetkit_tools.sim.runner import micropython_bin

    image = Path(image)
    if not image.exists():
        raise FileNotFoundError(f"no flash image {image}: the node has not booted yet")
    p = subprocess.run([micropython_bin(), str(SIM_MPY / "flashtool.py"), str(image.resolve()), *args],
                       capture_output=True, timeout=60, input=stdin,
                       env=dict(os.environ, MICROPYPATH=f"{SIM_MPY}:.frozen"))
    if p.returncode != 0:
        raise RuntimeError(f"flashtool {' '.join(args)} on {image} failed ({p.returncode}):\n"
                           + (p.stdout + p.stderr).decode(errors="replace")[-2000:])
    return p.stdout


def list_files(image: Path, dir: str = "") -> list[str]:
    """Every file under `dir` (default: all), as paths from the root without a leading '/'."""
    out = _tool(image, "ls", *([dir] if dir else []))
    return sorted(out.decode().splitlines())


def read_files(image: Path, *paths: str) -> dict[str, bytes]:
    """The files at `paths` (a directory: every file under it; none: all), by path. Missing ones
    are left out."""
    out = _tool(image, "get", *(paths or ("/",)))
    files, i = {}, 0
    while i < len(out):
        nl = out.index(b"\n", i)
        size, _, name = out[i:nl].decode().partition(" ")
        i = nl + 1 + int(size)
        files[name] = out[nl + 1:i]
    return files


def read_file(image: Path, path: str) -> bytes | None:
    """One file's content, or None when there is no such file."""
    return read_files(image, path).get(path.strip("/"))


def write_file(image: Path, path: str, data: bytes) -> None:
    """Create or replace one file (its folder must exist), committed when this returns."""
    _tool(image, "put", path, stdin=data)


def write_files(image: Path, files: dict[str, bytes]) -> None:
    """Create or replace several files, their folders made as needed, in one go."""
    _tool(image, "putmany", stdin=b"".join(b"%d %s\n" % (len(data), path.encode()) + data
                                          for path, data in files.items()))


def statvfs(image: Path) -> dict[str, Any]:
    """Block size, total and free blocks of the filesystem (os.statvfs on the board)."""
    v = json.loads(_tool(image, "df"))
    return {"bsize": v[0], "blocks": v[2], "bfree": v[3]}
