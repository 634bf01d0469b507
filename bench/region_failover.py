"""How long a node of a destroyed gateway is without a gateway (issue 16): region_failover_s.

The regional rig (tools/dev/regionrig.py: three gateways in two towns, each with its own Mosquitto
and `meetkit-gateway run`, one VictoriaMetrics, one central Mosquitto); one simulated node of ut-1
running the firmware (an air-only board) with its broker list ut-1, ut-2, zs-1 and the default
failover_after_s (120 s). Once the node has had a batch acknowledged at home and is T0 simulated
seconds old, ut-1 is destroyed (the gateway and its Mosquitto killed, its database deleted).

region_resent_records_per_failover: the records the node sent again to ut-2 after failing over
(its console's "sending again N records not yet safe": what ut-1 had not yet confirmed safe in the
region), beside the records it had made before the kill (what a node that keeps no safe position
would send again, as far as its spool holds them) and how many of the resent the regional store
already held when ut-1 died (its VictoriaMetrics read right after the kill: ut-1 had forwarded them,
its confirmation had not yet come back). The goal: only what the region lacks.

region_failover_s: simulated seconds from the gateway's death to the node's next record committed
elsewhere. The death is placed where the node felt it: its first failed MQTT operation after the
kill (it polls its connection every simulated second, so within about a second of the death; a
killed broker's socket answers at once); the record committed elsewhere is the node's first
acknowledgement from ut-2 (its console's "gateway database changed" line: ut-2 acknowledges only
what it committed). Both times are the node's own console's. The node runs at SPEED times real
time, so the gateways' and brokers' real latencies count SPEED-fold in its time (a 50 ms commit is
a simulated second); at full simulation speed they would count about a thousandfold. The median
of RUNS runs, each a fresh region; `detail` has the parts (felt -> failing over, failing over ->
connected, connected -> acknowledged), each run's, and the regional judge's lost and duplicated
records of each run (every record the node made against the regional VictoriaMetrics).

Alone: `.venv/bin/python -m bench.region_failover` (about 6 minutes).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from bench.results import median, record
from meetkit_tools.dev.faultrig import db_rows
from meetkit_tools.dev.regionrig import Region, region_samples
from meetkit_tools.dev.waits import wait_for

NODE = "ut-0001"
T0 = 1800         # simulated seconds of the node before its gateway is destroyed (30 records: a spool to not resend)
SPEED = 20
RUNS = 3
FAILOVER_AFTER_S = 120   # the firmware's default (config.py)


def _times(console: str, pattern: str) -> list[int]:
    out = []
    for line in console.splitlines():
        head = line[:8].strip()
        if head.isdigit() and re.search(pattern, line):
            out.append(int(head))
    return out


def one_run(tmp: Path) -> dict[str, Any]:
    reg = Region(tmp, {"ut-1": [NODE]})
    try:
        n = reg.node(NODE, "ut-1", until_s=48 * 3600, speed=SPEED)
        seen: dict[str, float] = {}
        snap: dict[str, set[int]] = {}

        def fault() -> None:
            wait_for(lambda: "I check: gateway: pass: first batch stored" in n.console_text(), 120, "an ack at home")
            reg.wait_virtual(NODE, T0)
            seen["before"] = reg.virtual_s(NODE)
            reg.gateways["ut-1"].destroy()
            # what the region held of the node when ut-1 died (nothing forwards it until ut-2 does)
            snap["ts"] = {ts for (_, ts) in region_samples(reg.vm, [NODE])[NODE]}
            wait_for(lambda: [t for t in _times(n.console_text(), r" W gateway database changed ") if t >= seen["before"]],
                  300, "an acknowledgement from ut-2")

        caught = reg.run(fault, timeout=300)
        text = n.console_text()
        t_felt = min(t for t in _times(text, r" W mqtt: .*failed ") if t >= seen["before"])
        t_over = min(t for t in _times(text, r" W mqtt: .* failing over to ") if t >= t_felt)
        t_conn = min(t for t in _times(text, r" I mqtt: connected to ") if t >= t_over)
        t_ack = min(t for t in _times(text, r" W gateway database changed ") if t >= t_over)
        resent = [int(m) for m in re.findall(r"gateway database changed \(\w+ -> \w+\): sending again (\d+) records",
                                             text)]
        made_before = len([t for t in _times(text, r" I record \d+: ") if t <= t_felt])
        # ut-2's records of the node made before the kill are the ones sent again
        at_ut2 = {ts * 1000 for n, _, _, ts, up in db_rows(reg.gateways["ut-2"].db) if n == NODE and ts is not None}
        out = reg.judge("bench: gateway destroyed, node fails over", central_timeout=10)
        return {"failover_s": t_ack - t_felt, "felt_to_failing_over_s": t_over - t_felt,
                "failing_over_to_connected_s": t_conn - t_over, "connected_to_acknowledged_s": t_ack - t_conn,
                "from_last_console_line_before_kill_s": t_ack - seen["before"],
                "resent_records": resent[-1] if resent else None, "records_made_before_kill": made_before,
                "resent_already_in_region": len(at_ut2 & snap["ts"]),
                "lost": out.lost, "duplicated": out.duplicated, "generated": out.generated, "caught_up": caught}
    finally:
        reg.close()


def run() -> None:
    runs = []
    for i in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="bench-region-failover-") as tmp:
            runs.append(one_run(Path(tmp)))
    figures = [r["failover_s"] for r in runs]
    record("region_failover_s", median(figures), "s", "lower", {
        "runs": runs, "min": min(figures), "max": max(figures), "failover_after_s": FAILOVER_AFTER_S,
        "node_speed": SPEED, "destroyed_at_node_s": T0, "time": "the node's simulated seconds (its console)",
        "board": "esp32-devkitc-air", "broker_list": "ut-1 (home), ut-2, zs-1",
    })


    resent = [r["resent_records"] for r in runs]
    record("region_resent_records_per_failover", median(resent), "records", "lower", {
        "runs": [{k: r[k] for k in ("resent_records", "records_made_before_kill", "resent_already_in_region")}
                 for r in runs],
        "max": max(resent), "records_made_before_kill_median": median([r["records_made_before_kill"] for r in runs]),
        "goal": "only what the region lacks: resent_already_in_region 0 (records ut-1 forwarded whose "
                "confirmation had not come back when it died are the exception)",
        "time": "the node's records, one a simulated minute (AIR board)", "destroyed_at_node_s": T0,
    })


if __name__ == "__main__":
    run()
