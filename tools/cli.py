"""`meetkit`: the technician's and developer's command line."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from meetkit_tools.paths import BUILD


def _broker(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected HOST:PORT")
    return host, int(port)


def cmd_sim_run(args: argparse.Namespace) -> int:
    from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

    host, port = args.broker
    spec = NodeSpec(node_id=args.node_id, scenario=load_scenario(args.scenario),
                    workdir=args.workdir or BUILD / "sim" / args.node_id, board=args.board,
                    broker_host=host, broker_port=port, interval_s=args.interval,
                    until_s=None if args.hours is None else args.hours * 3600, speed=args.speed,
                    heapsize=args.heapsize)
    node = SimNode(spec)
    node.prepare()
    node.start()
    print(f"node {spec.node_id}: scenario {spec.scenario['name']}, console {node.console}")
    sent = 0
    try:
        while node.running:
            text = node.console_text()
            sys.stdout.write(text[sent:])
            sys.stdout.flush()
            sent = len(text)
            time.sleep(0.2)
    except KeyboardInterrupt:
        node.stop()
    sys.stdout.write(node.console_text()[sent:])
    print(f"node {spec.node_id}: stopped (exit {node.exit_code}, {node.boots} boot(s)); state {node.last_state.get('stats')}")
    return 0 if node.exit_code in (0, None) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from meetkit_tools.demo import run_demo

    return run_demo(workdir=args.workdir, speed=args.speed, hours=args.hours)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="meetkit", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    sim = sub.add_parser("sim", help="the hardware simulator").add_subparsers(dest="sim_cmd", required=True)
    run = sim.add_parser("run", help="run one simulated node against a broker")
    run.add_argument("--scenario", default="busy-road", help="scenario name or JSON file")
    run.add_argument("--node-id", default="sim-001")
    run.add_argument("--board", default="esp32-devkitc")
    run.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883), help="HOST:PORT")
    run.add_argument("--interval", type=int, default=60, help="interval in seconds")
    run.add_argument("--hours", type=float, default=1.0, help="simulated hours to run")
    run.add_argument("--speed", type=float, default=0, help="times real time (0: as fast as possible)")
    run.add_argument("--heapsize", default="112K", help="MicroPython heap, as on a board")
    run.add_argument("--workdir", type=Path)
    run.set_defaults(func=cmd_sim_run)

    demo = sub.add_parser("demo", help="a broker, the gateway and three simulated nodes, live")
    demo.add_argument("--workdir", type=Path, default=BUILD / "demo")
    demo.add_argument("--speed", type=float, default=60, help="times real time (default 60: a minute a second)")
    demo.add_argument("--hours", type=float, default=None, help="stop after this many simulated hours")
    demo.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
