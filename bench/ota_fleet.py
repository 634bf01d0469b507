"""A fleet of 20 simulated nodes updated in a staged rollout through the real gateway.

A site as an operator runs it (tools/dev/fleetsite.py: a real Mosquitto with what `meetkit broker
init` generates for 20 nodes, the real `meetkit-gateway run` with the fleet register and [ota], a
release built like `meetkit release build --arch x64` and added). 20 nodes run the firmware as
release 0.1.9 (.mpy, 128 KB heap, quiet-street, default configuration: 60 s intervals) at SPEED
times real time, all at once on this machine; then `fleet update --release R --canary 1` (waves
of 10, the default): the canary, then two waves of 10, each node proving the release (a batch
acknowledged, its self-test) before its stage is done.

ota_fleet_update_s_20_nodes: simulated seconds from the canary's "ota: R accepted" to the last
node's "trial: R proved", on the nodes' own virtual clocks (they run at SPEED x real time when the
machine keeps up, slower when it does not); `detail` has the wall seconds from `fleet update` to
`fleet status` saying the rollout is done, and when each node got there. What bounds it: per stage, the slowest node's download
and its first interval's batch (the proof), plus the gateway's one-second step. On this 2-core
machine 20 nodes at speed 10 would not keep up; the nodes' mean accepted-to-proved time is in
`detail` for comparison with `ota_node_update_s` (one node, speed 10).

Alone: `.venv/bin/python -m bench.ota_fleet` (about 4 minutes).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import median, record
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.fleetsite import Site, firmware_as, sim_times
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.paths import FIRMWARE

OLD = "0.1.9"
N = 20
SPEED = 2


def run() -> None:
    new = fleetsim.fw_version()
    ids = [f"fl-{i:02d}" for i in range(N)]
    with tempfile.TemporaryDirectory(prefix="bench-ota-fleet-") as d:
        tmp = Path(d)
        old_fw = firmware_as(OLD, tmp / "fw-old")
        site = Site(tmp / "site", ids)
        try:
            m = site.build_release(FIRMWARE, tmp / "releases" / new)
            site.cli("release", "add", str(tmp / "releases" / new))
            nodes = {n: site.node(n, old_fw, speed=SPEED, seed=i + 1) for i, n in enumerate(ids)}
            wait_for(lambda: len([r for r in site.status_rows().values() if r["fw"] == OLD]) == N, 300,
                     "every node heard")
            t0 = time.monotonic()
            site.cli("fleet", "update", "--release", new, "--canary", "1")
            stages: list[tuple[float, int]] = []
            done_text = f"release {new}, done"
            deadline = t0 + 1800
            text = ""
            while time.monotonic() < deadline:
                text = site.cli("fleet", "status").stdout
                done = len(re.findall(rf"^fl-\d+\s+\S+\s+{re.escape(new)}\s", text, re.M))
                if not stages or stages[-1][1] != done:
                    stages.append((round(time.monotonic() - t0, 1), done))
                if done_text in text or "HALTED" in text:
                    break
                time.sleep(1)  # waits on: the rollout done (or halted)
            wall = time.monotonic() - t0
            per: list[dict[str, Any]] = []
            for n, node in nodes.items():
                lines = sim_times(node.console_text())
                a = next((t for t, l in lines if f"ota: {new} accepted" in l), None)
                p = next((t for t, l in lines if f"trial: {new} proved" in l), None)
                per.append({"node": n, "accepted_s": a, "proved_s": p,
                            "accepted_to_proved_s": None if a is None or p is None else round(p - a, 1),
                            "sim_s_at_end": lines[-1][0] if lines else None,
                            "memory_errors": node.console_text().count("MemoryError")})
            ok = done_text in text
        finally:
            site.close()
    spans = [r["accepted_to_proved_s"] for r in per if r["accepted_to_proved_s"] is not None]
    firsts = [r["accepted_s"] for r in per if r["accepted_s"] is not None]
    lasts = [r["proved_s"] for r in per if r["proved_s"] is not None]
    span = round(max(lasts) - min(firsts), 1) if ok and lasts and firsts else None
    record("ota_fleet_update_s_20_nodes", span, "simulated s", "lower",
           {"nodes": N, "done": ok, "wall_s": round(wall, 1), "speed": SPEED,
            "nodes_proved": len(lasts), "rollout": "1 canary, then waves of 10 (defaults of `fleet update`)",
            "wall_s_times_speed": round(wall * SPEED, 1),
            "clock": "the nodes' own virtual clocks (console, reset markers): the canary's 'ota: R accepted' to the "
                     "last node's 'trial: R proved'; wall_s x speed is higher when the machine did not keep up",
            "node_accepted_to_proved_s_median": median(spans) if spans else None,
            "node_accepted_to_proved_s_max": max(spans, default=None),
            "nodes_on_the_release_by_wall_s": stages, "release_bytes": m["bytes"], "release_files": len(m["files"]),
            "node": f"firmware as release 0.1.9, .mpy, {fleetsim.OFFER_HEAP} heap, quiet-street, 60 s intervals, flash untimed",
            "gateway": "real `meetkit-gateway run` on the generated broker accounts and ACL; offer_every_s 30",
            "machine": "2 shared cores: 20 micropython processes at speed 2 (speed 10 does not keep up)",
            "command": ".venv/bin/python -m bench.ota_fleet", "per_node": per})


if __name__ == "__main__":
    run()
