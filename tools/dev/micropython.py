"""Run code under the real MicroPython unix port, as the board would (the tests, the benchmarks)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from meetkit_tools.paths import FIRMWARE, MPYLIB, ROOT, SIM_MPY
from meetkit_tools.sim.runner import micropython_bin

__all__ = ["FIRMWARE_LIB", "MPYLIB", "ROOT", "SIM_MPY", "run_mpy"]

FIRMWARE_LIB = FIRMWARE / "lib"


def run_mpy(
    code: str | None = None,
    *,
    script: str | Path | None = None,
    path: list[Path] | None = None,
    heapsize: str | None = None,
    stdin: str | bytes | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
    args: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `code` (or `script`) under micropython with MICROPYPATH set to `path` + frozen modules.

    MICROPYPATH replaces the default path, so nothing from ~/.micropython leaks in.
    """
    cmd = [micropython_bin()]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    if code is not None:
        cmd += ["-c", code]
    elif script is not None:
        cmd += [str(script)]
    cmd += args or []
    dirs = [str(p) for p in (path if path is not None else [FIRMWARE_LIB])]
    env = dict(os.environ, MICROPYPATH=":".join(dirs + [".frozen"]))
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, env=env, cwd=cwd)
