"""`make demo`: a real Mosquitto, the gateway and three simulated nodes, with a live table.

Everything runs on loopback ports of its own under build/demo; Ctrl-C stops every process it
started, in the order that loses nothing: nodes, then the gateway (it commits what it received),
then the broker.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

NODES = (("street-01", "quiet-street", "esp32-devkitc"),
         ("road-01", "busy-road", "esp32-devkitc"),
         ("site-01", "construction-site", "esp32-devkitc-sds011"))
COLUMNS = (("PM2.5", "pm25"), ("PM10", "pm10"), ("T degC", "temp"), ("RH %", "rh"),
           ("hPa", "press"), ("LAeq dB", "LAeq"), ("LA90 dB", "LA90"))


def render(db: Path, nodes: list[SimNode], started: float) -> str:
    from meetkit_gateway.store import Store
    from meetkit_gateway.timefmt import start_text

    lines = []
    try:
        with Store(db, readonly=True) as store:
            latest = {l.node: l for l in store.latest()}
            counts = store.counts()
    except Exception as e:  # the gateway has not created the file yet
        return f"waiting for the gateway's store ({e})"
    head = f"{'node':10s} {'scenario':18s} {'interval (UTC)':17s} " + " ".join(f"{c:>8s}" for c, _ in COLUMNS) + "  flags"
    lines.append(head)
    lines.append("-" * len(head))
    for node in nodes:
        l = latest.get(node.spec.node_id)
        if l is None:
            lines.append(f"{node.spec.node_id:10s} {node.spec.scenario['name']:18s} (no record yet)")
            continue
        # an older store's implausible start is shown as its raw number, never a crash of the table
        when = "clock unknown" if l.start is None else start_text(l.start, time.time())
        when = when[:16].replace("T", " ") if when.endswith("Z") else when
        cells, flags = [], set()
        for _, q in COLUMNS:
            r = l.readings.get(q)
            cells.append(f"{r.avg:8.1f}" if r is not None and r.avg is not None else f"{'-':>8s}")
            if r is not None:
                flags.update(r.flag_names)
        lines.append(f"{node.spec.node_id:10s} {node.spec.scenario['name']:18s} {when:17s} "
                     + " ".join(cells) + "  " + ",".join(sorted(flags)))
    lines.append("")
    lines.append(f"stored: {counts.records} records, {counts.readings} readings from {counts.nodes} nodes; "
                 f"rejected {counts.dead_letters}, duplicates {counts.duplicates}")
    lines.append(f"store:  {db}  (meetkit-gateway readings --config {db.parent / 'gateway.toml'} --since 1h)")
    lines.append(f"logs:   {db.parent}/gateway.log, {db.parent}/<node>/console.log   "
                 f"wall time {time.monotonic() - started:.0f} s   Ctrl-C stops everything")
    return "\n".join(lines)


def run_demo(workdir: Path, speed: float, hours: float | None, refresh: float = 1.0) -> int:
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    tty = sys.stdout.isatty()
    broker = Mosquitto(workdir).start()
    gateway = GatewayProcess(workdir, broker.host, broker.port, client_id="meetkit-demo-gateway").start()
    db = gateway.db
    nodes: list[SimNode] = []
    started = time.monotonic()
    try:
        time.sleep(0.5)
        if gateway.proc.poll() is not None:
            raise SystemExit(f"the gateway exited: see {workdir / 'gateway.log'}")
        for i, (node_id, scenario, board) in enumerate(NODES):
            spec = NodeSpec(node_id=node_id, scenario=load_scenario(scenario), workdir=workdir / node_id,
                            board=board, broker_port=broker.port, speed=speed, seed=i + 1,
                            until_s=None if hours is None else hours * 3600)
            nodes.append(SimNode(spec).start())
        print(f"broker 127.0.0.1:{broker.port}, gateway store {db}, {len(nodes)} simulated nodes at {speed:g}x real time")
        while any(n.running for n in nodes):
            time.sleep(refresh)
            out = render(db, nodes, started)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + out + "\n")
            else:
                print(out + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("\nstopping: nodes, gateway, broker")
    finally:
        for n in nodes:
            n.stop()
        time.sleep(0.5)  # let the gateway take the last messages in flight
        gateway.stop()
        broker.stop()
    print(render(db, nodes, started))
    crashed = [n.spec.node_id for n in nodes if n.exit_code not in (None, 0, 130) and n.exit_code >= 0]
    if crashed:
        print(f"nodes that crashed: {', '.join(crashed)} (see their console.log)")
        return 1
    return 0
