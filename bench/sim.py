"""Simulator speed and the firmware's heap: one node, one simulated hour, against a real broker.

sim_speed_x_realtime: simulated seconds per wall second (higher is better), median of 3 runs. The
node's flash is a littlefs image (tools/sim/mpy/simflash.py); its programs and erases are in
`detail`.
firmware_peak_heap_bytes: the MicroPython heap's peak over that hour under -X heapsize=112K,
firmware and simulator models together (the models' own share is in `detail`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.results import median, record
from meetkit_tools.services import Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

HOURS = 1.0
RUNS = 3


def run() -> None:
    walls, peaks, sim_heap, lost, read, flash = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp)).start()
        try:
            for i in range(RUNS):
                spec = NodeSpec(node_id=f"bench-{i}", scenario=load_scenario("busy-road"),
                                workdir=Path(tmp) / f"n{i}", broker_port=broker.port,
                                until_s=HOURS * 3600, heapsize="112K")
                node = SimNode(spec)
                node.prepare()
                t0 = time.perf_counter()
                node.start()
                code = node.wait(1800)
                walls.append(time.perf_counter() - t0)
                if code != 0:
                    raise SystemExit(f"simulated node failed (exit {code}):\n{node.console_text()[-3000:]}")
                stats = node.last_state.get("stats", {})
                # heap_peak counts the simulator's own modules too: the firmware's is the rest
                peaks.append(stats["heap_peak"] - stats["sim_heap"] if "heap_peak" in stats else None)
                sim_heap.append(stats.get("sim_heap"))
                lost.append(stats.get("i2s_samples_lost"))
                read.append(stats.get("i2s_samples_read"))
                flash.append(node.flash_stats)
        finally:
            broker.stop()
    wall = median(walls)
    record("sim_speed_x_realtime", round(HOURS * 3600 / wall, 1), "simulated s per wall s", "higher",
           {"scenario": "busy-road", "simulated_s": HOURS * 3600, "wall_s_runs": [round(w, 2) for w in walls],
            "wall_s_median": round(wall, 2), "heapsize": "112K", "audio": "48 kHz, continuous",
            "i2s_samples_read": read, "i2s_samples_lost": lost,
            "flash": "littlefs image, 2 MiB, untimed", "flash_writes_erases_bytes":
                [[f["flash_writes"], f["flash_erases"], f["flash_bytes"]] for f in flash]})
    if all(p is not None for p in peaks):
        record("firmware_peak_heap_bytes", max(peaks), "bytes", "lower",
               {"runs": peaks, "heapsize": "112K", "simulator_models_heap_bytes": sim_heap,
                "firmware_budget_bytes": 112 * 1024,
                "method": "live heap after gc.collect() once per simulated second, less the simulator's own",
                "note": "64-bit unix port: objects take about twice an ESP32's heap, buffers the same"})
