"""`meetkit provision`'s copy on a simulated board on a pty, against a plain write of the same
files, side by side in one run through one mpremote connection.

provision_copy_vs_plain_write_ratio: the plain write's time (mpremote's fs_writefile as `mpremote
fs cp` uses it) over provision's copy (its chunks plus the sha256 of every file on the board);
higher is better, 1.0: the check costs nothing net. Each the median of REPEAT runs. The detail also has the app's size for a real ESP32 (.mpy for
xtensawin) and the bytes it takes on a 115200-baud line, the figure that sets a real board's
copy time (estimated from the bytes, not measured on a board).
"""

from __future__ import annotations

import json
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
    from meetkit_tools.boardlink import BoardLink

    board_file = json.loads((BOARDS / "esp32-devkitc.json").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        t = Path(tmp)
        real = appbuild.build(t / "esp32", appbuild.Target(6, 3, "xtensawin"), board_file, {"node_id": "bench-01"},
                              {"fw": "bench"})
        real_files = list(real["files"])
        real_bytes = sum((t / "esp32" / f).stat().st_size for f in real_files)
        line = wire_bytes(t / "esp32", real_files + ["app.json"])
        ours: list[float] = []
        plain: list[float] = []
        with SimBoard(t / "board", speed=1) as board:
            link = BoardLink.open(board.port)
            try:
                target = appbuild.Target.from_sys_mpy(link.probe().mpy)
                app = t / "app"
                files = list(appbuild.build(app, target, board_file, {"node_id": "bench-01"}, {"fw": "bench"})["files"])
                for i in range(REPEAT):
                    for d in (f"plain{i}", f"plain{i}/lib", f"new{i}", f"new{i}/lib"):
                        link.mkdir(d)
                    t0 = time.perf_counter()
                    for f in files:   # what mpremote's fs cp does: write each file
                        link.t.fs_writefile(f"plain{i}/{f}", (app / f).read_bytes())
                    plain.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    for f in files:   # what provision does: write in 1 KB chunks, then check on the board
                        link.put(app / f, f"new{i}/{f}")
                    for f in files:
                        link.sha256(f"new{i}/{f}")
                    ours.append(time.perf_counter() - t0)
            finally:
                link.close()
    record("provision_copy_vs_plain_write_ratio", round(median(plain) / median(ours), 3), "ratio", "higher",
           {"provision_copy_s": [round(x, 3) for x in ours], "plain_write_s": [round(x, 3) for x in plain],
            "files": len(files), "repeat": REPEAT,
            "note": "one mpremote SerialTransport on a simulated board: mpremote's fs_writefile (256-byte chunks, "
                    "as `mpremote fs cp`) against provision's copy (1 KB chunks) plus the sha256 of every file on "
                    "the board; above 1: the check costs less than the larger chunks save"})
    record("provision_app_bytes_esp32", real_bytes, "bytes", "lower",
           {"files": len(real_files), "format": ".mpy xtensawin, board.json and config.json included",
            "serial_bytes": line, "est_copy_s_at_115200": round(line / BAUD_BYTES_S, 1),
            "note": "the copy time on a real board is estimated from the bytes on the line, not measured"})


if __name__ == "__main__":
    run()
