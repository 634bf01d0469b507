"""The firmware's heap while it fetches a release, beside the same node without one.

Each run is a fresh site as an operator runs it (tools/dev/fleetsite.py: the generated broker, the
real `meetkit-gateway run`, a release of firmware/ as `meetkit release build --arch x64` makes it:
provision's app, lib/ as .mpy). The node runs the firmware as release 0.1.9 (.mpy, as on a board:
nothing compiled in its heap at run time) with a 128 KB budget (the offer's manifest needs about
120 KB of the 64-bit simulator's heap: docs/simulator.md, "Heap"), busy-road, 10 s intervals, the
flash's timing on, speed 10.

ota_heap_peak_bytes: the largest live heap of the firmware in the boot that takes the offer,
fetches, checks and stages the release (up to its restart into it): the simulator's live-heap
sample after a gc.collect() once per simulated second, less the simulator's own, as
firmware_peak_heap_bytes. Transients between two samples are not seen.

ota_heap_peak_ratio: that peak over the same node's peak without an update, measured the same way
over as long a boot (firmware_peak_heap_bytes the same way: same build, heap, scenario; the runs
alternating). Lower is better; 1.0: the update costs no heap beyond the node's own peak.

Why the real gateway and not the test-side one (fleetsim), which offers once: an offer the node
reads while it publishes a batch can fail its allocation (MemoryError in the publish, the
connection dropped, the QoS 1 offer gone with the clean session), and with fleetsim's single offer
the node then never fetched anything; the real gateway offers again every `offer_every_s`.
`detail` counts the node's MemoryErrors.

Alone: `.venv/bin/python -m bench.ota_heap` (about 3 minutes).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import record
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.fleetsite import Site, firmware_as
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.sim.runner import SimNode, load_scenario

HEAP = fleetsim.OFFER_HEAP
OLD = "0.1.9"
NODE = "ota-01"
RUNS = 2
SPEED = 10


def _states(n: SimNode) -> list[dict[str, Any]]:
    """Every state the node's boots end with (the runner keeps only the last)."""
    seen: list[dict[str, Any]] = []
    read = n._read_state

    def keep() -> dict[str, Any]:
        st = read()
        seen.append(st)
        return st
    n._read_state = keep  # type: ignore[method-assign]
    return seen


def _run(tmp: Path, fw: Path, update: bool, until_s: float | None) -> dict[str, Any]:
    new = fleetsim.fw_version()
    site = Site(tmp, [NODE])
    try:
        n = site.node(NODE, fw, start=False, scenario=load_scenario("busy-road"), flash_timing=True, speed=SPEED,
                      interval_s=10, heapsize=HEAP, extra_config={"interval_s": 10}, until_s=until_s)
        states = _states(n)
        n.start()
        if not update:
            n.wait(600)
            st = states[0].get("stats", {}) if states else {}
            return {"update": False, "peak": st["heap_peak"] - st["sim_heap"] if "heap_peak" in st else None,
                    "boot_s": states[0].get("t_ms", 0) / 1000 if states else None,
                    "memory_errors": n.console_text().count("MemoryError")}
        m = site.build_release(FIRMWARE, tmp / "releases" / new)
        site.cli("release", "add", str(tmp / "releases" / new))
        wait_for(lambda: site.status_rows().get(NODE, {}).get("fw") == OLD, 120, "the node heard")
        site.cli("fleet", "update", "--release", new, "--nodes", NODE, "--canary", "1")
        wait_for(lambda: states or not n.running, 600, "the node's restart into the release")
        time.sleep(0.5)  # waits on: nothing asserted; the runner has read the state
        n.stop()
        st = states[0].get("stats", {})
        return {"update": True, "installed": f"restarting: release {new} installed" in n.console_text(),
                "peak": st["heap_peak"] - st["sim_heap"] if "heap_peak" in st else None,
                "boot_s": states[0].get("t_ms", 0) / 1000, "release_bytes": m["bytes"],
                "release_files": len(m["files"]), "events": [e.get("state") for e in site.events(NODE, "ota")],
                "memory_errors": n.console_text().count("MemoryError"),
                "i2s_samples_lost": st.get("i2s_samples_lost")}
    finally:
        site.close()


def run() -> None:
    with_ota: list[dict[str, Any]] = []
    without: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ota-heap-") as d:
        tmp = Path(d)
        fw = firmware_as(OLD, tmp / "fw-old")
        for i in range(RUNS):  # alternately: the update's boot, then as long a boot without one
            r = _run(tmp / f"u{i}", fw, True, None)
            with_ota.append(r)
            without.append(_run(tmp / f"b{i}", fw, False, r["boot_s"] or 120))
    peaks = [r["peak"] for r in with_ota if r.get("installed") and r["peak"] is not None]
    base = [r["peak"] for r in without if r["peak"] is not None]
    common = {"heapsize": HEAP, "firmware": ".mpy (x64), as release 0.1.9",
              "scenario": "busy-road, 10 s intervals, flash timing on, speed 10",
              "release_bytes": with_ota[0].get("release_bytes"), "release_files": with_ota[0].get("release_files"),
              "method": "live heap after gc.collect() once per simulated second, less the simulator's own, over "
                        "the boot that fetched and staged the release (baseline: as long a boot without an offer)",
              "gateway": "real `meetkit-gateway run`, `fleet update --canary 1`",
              "command": ".venv/bin/python -m bench.ota_heap"}
    record("ota_heap_peak_bytes", max(peaks) if peaks else None, "bytes", "lower",
           dict(common, runs=with_ota, baseline_runs=without,
                note="64-bit unix port: objects take about twice an ESP32's heap, buffers the same; compare with "
                     "the baseline (ota_heap_peak_ratio), not with firmware_peak_heap_bytes (sources, 112K, an hour)"))
    record("ota_heap_peak_ratio", round(max(peaks) / max(base), 3) if peaks and base else None, "ratio", "lower",
           dict(common, ota_heap_peak_bytes=max(peaks) if peaks else None,
                firmware_peak_heap_bytes_same_way=max(base) if base else None, runs_with_update=peaks,
                runs_without=base))


if __name__ == "__main__":
    run()
