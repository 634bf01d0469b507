"""`make demo`: a real Mosquitto, the gateway and three simulated nodes, with a live table.

The nodes run on the wall clock: their scenario starts `backfill` hours ago (24 by default), the
simulator runs as fast as it can until each node's virtual clock reaches the real time (a day of
records in a few minutes), then in real time, a record a minute. So the status page shows a full
day and every command the demo suggests (`readings --since 1h`, `export --since 7d`) shows data.

The status page listens on a fixed port, DEMO_PORT, unless `--port` or MEETKIT_DEMO_PORT says
otherwise; a port taken is said before anything starts. Everything else runs on loopback ports of
its own under build/demo. Ctrl-C (or SIGTERM, or the end of `--duration`) stops every process it
started, in the order that loses nothing: nodes, then the gateway (it commits what it received),
then the broker.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

#: the status page's port unless --port or $MEETKIT_DEMO_PORT: not 8080, which an installed gateway
#: (or many a development server) takes
DEMO_PORT = 8470
PORT_ENV = "MEETKIT_DEMO_PORT"
BACKFILL_H = 24.0
DAY = 86400

NODES = (("street-01", "quiet-street", "esp32-devkitc"),
         ("road-01", "busy-road", "esp32-devkitc"),
         ("site-01", "construction-site", "esp32-devkitc-sds011"))
COLUMNS = (("PM2.5", "pm25"), ("PM10", "pm10"), ("T degC", "temp"), ("RH %", "rh"),
           ("hPa", "press"), ("LAeq dB", "LAeq"), ("LA90 dB", "LA90"))
#: a day in the city, laid over each scenario's hour: (amplitude, hour of the peak, UTC)
DIURNAL = {"temp": (3.0, 13), "rh": (-8.0, 13), "press": (0.8, 10), "pm25": (3.0, 8), "pm10": (4.0, 8),
           "pm1": (2.0, 8), "noise_dbspl": (6.0, 13)}


class DemoError(Exception):
    """What stops the demo before it starts (a port taken), said in one line."""


def on_the_wall_clock(scenario: dict[str, Any], start: float) -> dict[str, Any]:
    """The scenario starting at `start` (unix s), with a daily swing on its quantities (warmer and
    louder by day, PM peaking in the morning rush) so that a day of it looks like one."""
    s = copy.deepcopy(scenario)
    s["start"] = datetime.fromtimestamp(int(start), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    start_tod = int(start) % DAY
    for q, (amp, peak_h) in DIURNAL.items():
        spec = s.get("truth", {}).get(q)
        if spec is None:
            continue
        waves = spec.get("wave") or []
        waves = [waves] if isinstance(waves, dict) else list(waves)
        # amp * sin(2 pi (t + phase) / DAY) peaks where the time of day is peak_h
        phase = (DAY / 4 - peak_h * 3600 + start_tod) % DAY
        waves.append({"amp": amp, "period": DAY, "phase": phase})
        spec["wave"] = waves
    return s


def demo_port(port: int | None) -> int:
    """--port, else $MEETKIT_DEMO_PORT, else DEMO_PORT."""
    if port is not None:
        return port
    env = os.environ.get(PORT_ENV, "").strip()
    if not env:
        return DEMO_PORT
    if not env.isdigit() or not 1 <= int(env) <= 65535:
        raise DemoError(f"{PORT_ENV}={env!r}: must be a port number from 1 to 65535")
    return int(env)


def check_port(port: int) -> None:
    """DemoError when 127.0.0.1:`port` cannot be listened on (taken by another program)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the gateway's server binds: a port left in TIME_WAIT by the last run is not taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            why = "taken by another program" if e.errno == errno.EADDRINUSE else e.strerror
            raise DemoError(f"port {port} for the status page is {why}: run the demo on another one with "
                            f"`meetkit demo --port N` (or {PORT_ENV}=N make demo)") from None


def commands(conf: Path) -> list[str]:
    """What the demo suggests trying, each with data to show while it runs."""
    c = shlex.quote(_shown(conf))
    return [f"meetkit-gateway readings --config {c} --since 1h",
            f"meetkit-gateway nodes --config {c}",
            f"meetkit-gateway export --config {c} --since 7d --node road-01 --quantity LAeq"]


def _shown(p: Path) -> str:
    """`p` relative to the working directory when it is under it (build/demo/gateway.toml)."""
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def render(db: Path, nodes: list[SimNode], started: float) -> str:
    from meetkit_gateway.store import Store
    from meetkit_gateway.timefmt import start_text

    lines = []
    now = time.time()
    try:
        with Store(db, readonly=True) as store:
            latest = {l.node: l for l in store.latest()}
            counts = store.counts()
    except Exception as e:  # the gateway has not created the file yet
        return f"waiting for the gateway's store ({e})"
    head = (f"{'node':10s} {'scenario':18s} {'interval (UTC)':17s} {'behind':>7s} "
            + " ".join(f"{c:>8s}" for c, _ in COLUMNS) + "  flags")
    lines.append(head)
    lines.append("-" * len(head))
    for node in nodes:
        l = latest.get(node.spec.node_id)
        if l is None:
            lines.append(f"{node.spec.node_id:10s} {node.spec.scenario['name']:18s} (no record yet)")
            continue
        # an older store's implausible start is shown as its raw number, never a crash of the table
        when = "clock unknown" if l.start is None else start_text(l.start, now)
        when = when[:16].replace("T", " ") if when.endswith("Z") else when
        behind = "-" if not isinstance(l.start, (int, float)) else _behind(now - l.start - (l.dur or 60))
        cells, flags = [], set()
        for _, q in COLUMNS:
            r = l.readings.get(q)
            cells.append(f"{r.avg:8.1f}" if r is not None and r.avg is not None else f"{'-':>8s}")
            if r is not None:
                flags.update(r.flag_names)
        lines.append(f"{node.spec.node_id:10s} {node.spec.scenario['name']:18s} {when:17s} {behind:>7s} "
                     + " ".join(cells) + "  " + ",".join(sorted(flags)))
    lines.append("")
    lines.append(f"stored: {counts.records} records, {counts.readings} readings from {counts.nodes} nodes; "
                 f"rejected {counts.dead_letters}, duplicates {counts.duplicates}")
    lines.append(f"logs:   {_shown(db.parent)}/gateway.log, {_shown(db.parent)}/<node>/console.log   "
                 f"wall time {time.monotonic() - started:.0f} s   Ctrl-C stops everything")
    return "\n".join(lines)


def _behind(s: float) -> str:
    """How far a node's newest record lags the wall clock: 'live' within two records."""
    if s < 150:
        return "live"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{math.ceil(s / 60):.0f} min"


def banner(url: str, port: int, conf: Path, backfill_h: float) -> str:
    lines = [f"status page: {url}/",
             f"  (another port: `meetkit demo --port N`, or {PORT_ENV}=N make demo; default {DEMO_PORT})",
             f"the nodes fill in the last {backfill_h:g} h as fast as they can, then run live on the wall clock;",
             "try, in another terminal:"]
    lines += [f"  {c}" for c in commands(conf)]
    lines.append("(the last hour's readings are there once every node's `behind` says live)")
    return "\n".join(lines)


def run_demo(workdir: Path, backfill_h: float = BACKFILL_H, port: int | None = None,
             duration: float | None = None, refresh: float = 1.0) -> int:
    """Run until Ctrl-C, SIGTERM or `duration` wall seconds; 0 when no node crashed."""
    try:
        port = demo_port(port)
        check_port(port)
    except DemoError as e:
        print(f"meetkit demo: {e}", file=sys.stderr)
        return 2
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    tty = sys.stdout.isatty()
    # SIGTERM stops the demo as Ctrl-C does: nodes, gateway, broker, nothing left behind
    previous = signal.signal(signal.SIGTERM, _interrupt)
    broker = Mosquitto(workdir).start()
    gateway = GatewayProcess(workdir, broker.host, broker.port, client_id="meetkit-demo-gateway",
                             http_port=port).start()
    db = gateway.db
    nodes: list[SimNode] = []
    started = time.monotonic()
    start = time.time() - backfill_h * 3600
    try:
        try:
            url = gateway.status_url(timeout=30)
        except RuntimeError:
            raise SystemExit(f"the gateway's status page did not start: see {workdir / 'gateway.log'}\n"
                             + gateway.log_text()[-1500:])
        for i, (node_id, scenario, board) in enumerate(NODES):
            spec = NodeSpec(node_id=node_id, scenario=on_the_wall_clock(load_scenario(scenario), start),
                            workdir=workdir / node_id, board=board, broker_port=broker.port, seed=i + 1,
                            until_s=None, live=True)
            nodes.append(SimNode(spec).start())
        head = (f"broker 127.0.0.1:{broker.port}, gateway store {_shown(db)}, {len(nodes)} simulated nodes\n"
                + banner(url, port, gateway.conf, backfill_h))
        print(head, flush=True)
        while any(n.running for n in nodes):
            if duration is not None and time.monotonic() - started >= duration:
                break
            time.sleep(refresh)
            out = render(db, nodes, started)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + head + "\n\n" + out + "\n")
            else:
                print(out + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("\nstopping: nodes, gateway, broker")
    finally:
        signal.signal(signal.SIGTERM, previous)
        for n in nodes:
            n.stop()
        time.sleep(0.5)  # let the gateway take the last messages in flight
        gateway.stop()
        broker.stop()
    print(render(db, nodes, started), flush=True)
    crashed = [n.spec.node_id for n in nodes if n.exit_code not in (None, 0, 130) and n.exit_code >= 0]
    if crashed:
        print(f"nodes that crashed: {', '.join(crashed)} (see their console.log)")
        return 1
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
