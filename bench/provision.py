"""`meetkit provision` against a simulated board on a pty: how its staged, checked copy compares
with mpremote's own `fs cp -r` of the same files, side by side in one run.

provision_copy_vs_mpremote_cp_ratio: mpremote's plain copy time over provision's copy time
(copy into new/ and the sha256 check of every file on the board; higher is better, 1.0 would
mean the safety costs nothing). Both go through the same pty and the same simulated board, each
the median of REPEAT runs. The detail also has the app's size for a real ESP32 (.mpy for
xtensawin) and the bytes it takes on a 115200-baud line, the figure that sets a real board's
copy time (estimated from the bytes, not measured on a board).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import median, record
from meetkit_tools import appbuild
from meetkit_tools.paths import BOARDS
from meetkit_tools.sim.board import SimBoard

REPEAT = 3
BAUD_BYTES_S = 115200 / 10   # 8N1


def wire_bytes(app: Path, files: list[str]) -> int:
    """What mpremote's fs_writefile sends for the files (1 KB chunks as `w(b'...')` lines)."""
    n = 0
    for f in files:
        data = (app / f).read_bytes()
        for i in range(0, len(data), 1024):
            n += len("w(" + repr(data[i:i + 1024]) + ")") + 1
    return n


def run() -> None:
    board_file = json.loads((BOARDS / "esp32-devkitc.json").read_text())
    mpremote = str(Path(sys.executable).parent / "mpremote")
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        t = Path(tmp)
        real = appbuild.build(t / "esp32", appbuild.Target(6, 3, "xtensawin"), board_file, {"node_id": "bench-01"},
                              {"fw": "bench"})
        real_files = list(real["files"])
        real_bytes = sum((t / "esp32" / f).stat().st_size for f in real_files)
        line = wire_bytes(t / "esp32", real_files + ["app.json"])
        ours: list[float] = []
        theirs: list[float] = []
        with SimBoard(t / "board", speed=1) as board:
            # The same app, as the simulated board's MicroPython loads it, for mpremote's copy.
            probe = subprocess.run([mpremote, "connect", board.port, "eval", "__import__('sys').implementation._mpy"],
                                   capture_output=True, text=True, timeout=30)
            target = appbuild.Target.from_sys_mpy(int(probe.stdout.strip()))
            ref = appbuild.build(t / "ref", target, board_file, {"node_id": "bench-01"}, {"fw": "bench"})
            n_files = len(ref["files"])
            for i in range(REPEAT):
                res = subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "provision", "--port", board.port,
                                      "--board", "esp32-devkitc", "--node-id", "bench-01", "--wifi", "meetkit-lab",
                                      "--broker", "127.0.0.1:1", "--timeout", "1"],
                                     capture_output=True, text=True, timeout=300,
                                     env=dict(os.environ, MEETKIT_WIFI_PASSWORD="simulated"))
                m = re.search(r"copy\s+\d+ files in ([\d.]+) s", res.stdout)
                if not m:
                    raise RuntimeError("provision did not copy: " + res.stdout[-400:])
                ours.append(float(m[1]))
                t0 = time.monotonic()
                subprocess.run([mpremote, "connect", board.port, "fs", "cp", "-r", str(t / "ref") + "/", f":ref{i}/"],
                               check=True, capture_output=True, timeout=300)
                theirs.append(time.monotonic() - t0)
    record("provision_copy_vs_mpremote_cp_ratio", round(median(theirs) / median(ours), 3), "ratio", "higher",
           {"provision_copy_s": [round(x, 3) for x in ours], "mpremote_cp_r_s": [round(x, 3) for x in theirs],
            "files": n_files, "repeat": REPEAT,
            "note": "provision copies into new/ and checks each file's sha256 on the board; mpremote fs cp -r "
                    "copies only (its process start is in its time)"})
    record("provision_app_bytes_esp32", real_bytes, "bytes", "lower",
           {"files": len(real_files), "format": ".mpy xtensawin, board.json and config.json included",
            "serial_bytes": line, "est_copy_s_at_115200": round(line / BAUD_BYTES_S, 1),
            "note": "the copy time on a real board is estimated from the bytes on the line, not measured"})


if __name__ == "__main__":
    run()
