"""The smallest MicroPython heap the node starts in, per board (the firmware from source, as the
simulator runs it: compiling the modules at import is the peak; a board running the .mpy build
needs less).

firmware_min_start_heap_bytes: the largest of the boards' figures: going down from 112 KB in 2 KB
steps of the firmware's heap (-X heapsize, the simulator's own share added), the last size at
which the node still reached its first record (a minute of measuring) without a MemoryError. The boards' ESP32 firmware leaves about 112 KB
free when main.py starts; the margin to that is the figure that matters.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.results import record
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

BOARDS = ("esp32-devkitc", "esp32-s3-devkitc-1", "olimex-esp32-poe", "esp32-devkitc-air")
STEP_KB = 2
BUDGET_KB = 112


def starts(tmp: Path, board: str, kb: int) -> bool:
    node = SimNode(NodeSpec(node_id="heap-01", scenario=load_scenario("quiet-street"), workdir=tmp / f"{board}-{kb}",
                            board=board, until_s=65, broker_port=1, heapsize=f"{kb}K"))
    node.start()
    code = node.wait(300)
    return code == 0 and "MemoryError" not in node.console_text() and " I record 0: " in node.console_text()


def run() -> None:
    per_board, failed_at = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for board in BOARDS:
            # downwards from the board's budget: fragmentation makes "starts" not monotonic in the
            # heap size, so the figure is the smallest heap from which every larger one (in steps)
            # starts, not a bisection's lucky point
            kb = BUDGET_KB
            while kb > 48 and starts(Path(tmp), board, kb):
                kb -= STEP_KB
            per_board[board] = (kb + STEP_KB) * 1024
            failed_at[board] = kb * 1024
    record("firmware_min_start_heap_bytes", max(per_board.values()), "bytes", "lower",
           {"per_board": per_board, "first_failure_bytes": failed_at, "budget_on_the_board": BUDGET_KB * 1024,
            "step_bytes": STEP_KB * 1024, "format": "source (compiled at import)"})


if __name__ == "__main__":
    run()
