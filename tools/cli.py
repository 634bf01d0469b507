"""`meetkit`: the technician's and developer's command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import datetime as dt
import signal
import socket
import sys
import time
from pathlib import Path

from meetkit_tools.paths import BUILD


def _broker(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{s!r}: expected HOST:PORT")
    return host, int(port)


# A connection attempt the node repeats with backoff: shown once, then counted (a refused password
# would otherwise fill the console for the whole run).
_RETRY_LINE = re.compile(r"^\s*\d+ [EW] mqtt: (.+?) failed \((.*)\); next try in \d+ s$")


class _Console:
    """The node's console as `sim run` shows it: whole lines, each kind of repeated failure once."""

    def __init__(self, start: int = 0) -> None:
        self.sent = start
        self.repeats: dict[tuple[str, str], int] = {}

    def show(self, text: str, final: bool = False) -> None:
        end = len(text) if final else text.rfind("\n", self.sent) + 1
        if end <= self.sent:
            return
        for line in text[self.sent:end].splitlines():
            m = _RETRY_LINE.match(line)
            if m:
                key = (m[1], m[2])
                self.repeats[key] = self.repeats.get(key, 0) + 1
                if self.repeats[key] == 2:
                    print("  (the node tries again with backoff: more lines like the one above are counted, "
                          "not shown)")
                if self.repeats[key] > 1:
                    continue
            print(line)
        sys.stdout.flush()
        self.sent = end


def _sim_password(args: argparse.Namespace, user: str) -> str | None:
    """The broker password: --password-file (the password, or `meetkit broker init`'s secrets.json:
    the entry of --user), else $MEETKIT_BROKER_PASSWORD, else None."""
    if args.password_file is None:
        return os.environ.get("MEETKIT_BROKER_PASSWORD") or None
    text = args.password_file.read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("nodes"), dict):
        if user not in doc["nodes"]:
            raise ValueError(f"--password-file {args.password_file}: no password for {user} in it "
                             f"(`meetkit broker add-node {user}` makes one)")
        return str(doc["nodes"][user])
    password = text.strip()
    if not password or "\n" in password:
        raise ValueError(f"--password-file {args.password_file}: expected the password alone on one line "
                         "(or the secrets.json of `meetkit broker init`)")
    return password


def _sim_ca(path: Path) -> bytes:
    """The lab CA as DER (the node's ca.der), from a PEM (ca.crt) or DER (ca.der) file."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ValueError(f"--ca {path}: not a certificate (PEM or DER): {e}") from None
    return cert.public_bytes(Encoding.DER)


def cmd_sim_run(args: argparse.Namespace) -> int:
    from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

    # With TLS the node checks the name: by default this machine's, as `meetkit broker init` names the certificate
    host, port = args.broker or ((socket.gethostname(), 8883) if args.tls else ("127.0.0.1", 1883))
    workdir = args.workdir or BUILD / "sim" / args.node_id
    user = args.user or None
    try:
        password = _sim_password(args, user or args.node_id)
        if password is not None and user is None:
            user = args.node_id   # `meetkit broker init` names each node's account by its id
        if user is not None and password is None:
            raise ValueError(f"--user {user}: give its password with --password-file (or $MEETKIT_BROKER_PASSWORD)")
        if args.ca and not args.tls:
            raise ValueError("--ca is the lab CA for --tls: add --tls")
        if args.tls and not args.ca:
            raise ValueError("--tls needs --ca: the lab CA the node checks the broker against (ca/ca.crt or "
                             "ca/ca.der in the folder of `meetkit broker init`)")
        ca = _sim_ca(args.ca) if args.ca else None
    except (OSError, ValueError) as e:
        print(f"meetkit sim run: {e}", file=sys.stderr)
        return 2
    broker: dict = {"host": host, "port": port}
    if user is not None:
        broker.update(user=user, password=password)
    files: dict[str, bytes] = {}
    firmware = None
    if ca is not None:
        broker["tls"] = True
        files["ca.der"] = ca
        # TLS's buffers and compiling the firmware from source do not fit the node's heap together:
        # the firmware goes on as `meetkit provision` puts it on a board, compiled (.mpy)
        firmware = _mpy_firmware(workdir / "firmware.mpy")
    spec = NodeSpec(node_id=args.node_id, scenario=load_scenario(args.scenario), workdir=workdir, board=args.board,
                    broker_host=host, broker_port=port, interval_s=args.interval,
                    until_s=None if args.hours is None else args.hours * 3600, speed=args.speed,
                    heapsize=args.heapsize, extra_config={"broker": broker}, files=files)
    if firmware is not None:
        spec.firmware = firmware
    node = SimNode(spec)
    node.prepare()
    mark = len(node.console_text())   # console.log keeps earlier runs: this run's lines from here
    node.start()
    who = user or "anonymous"
    print(f"node {spec.node_id}: scenario {spec.scenario['name']}, broker {host}:{port}"
          f"{' (tls)' if ca is not None else ''} as {who}, console {node.console}", flush=True)
    console = _Console(mark)
    try:
        while node.running:
            console.show(node.console_text())
            time.sleep(0.2)
    except KeyboardInterrupt:
        node.stop()
    text = node.console_text()
    console.show(text, final=True)
    for (what, why), n in console.repeats.items():
        if n > 1:
            print(f"node {spec.node_id}: {what} failed {n} times ({why})")
    run = text[mark:]
    made = len(re.findall(r" I record \d+: \{", run))
    # the node's own count: each record once, when the gateway's acknowledgement says it is committed
    acked = sum(int(n) for n in re.findall(r" I ack: (\d+) stored by the gateway", run))
    print(f"node {spec.node_id}: stopped (exit {node.exit_code}, {node.boots} boot(s)); state {node.last_state.get('stats')}")
    refused = any("refused the login" in why for _, why in console.repeats)
    why = (f"; the other {made - acked} wait in the node's spool (sent again at its next connection)" if 0 < acked < made
           else "" if acked else "; none: the broker refused the login (check --user and --password-file)" if refused
           else "; none: is a gateway running on that broker, and the node's account right?")
    print(f"node {spec.node_id}: delivered {acked} of {made} records (acknowledged by the gateway: committed to its "
          f"database){why}")
    if node.exit_code not in (0, None):
        return 1
    return 0 if acked else 1


def _mpy_firmware(out: Path) -> Path:
    """firmware/ with lib/ compiled for the simulator's MicroPython (x64), made afresh in `out`."""
    import shutil

    from meetkit_tools.appbuild import Target, build_code, mpy_cross_version

    if out.exists():
        shutil.rmtree(out)
    ver, sub = mpy_cross_version()
    build_code(out, Target(ver, sub, "x64"))
    return out


def cmd_sim_board(args: argparse.Namespace) -> int:
    from meetkit_tools.sim.board import BoardInUse, SimBoard

    ssid, sep, password = args.wifi.partition(":")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", args.name):
        print(f"meetkit sim board: --name {args.name!r}: letters, digits, '.', '_', '-' (a folder under "
              "build/sim-board)", file=sys.stderr)
        return 2
    # Without --name or --workdir: the board design's name, or the first of <board>-2, -3, ... that
    # no running board holds, so boards started side by side get their own flash, console and chip id.
    names = [args.name] if args.name or args.workdir else [args.board] + [f"{args.board}-{i}" for i in range(2, 100)]
    for name in names:
        board = SimBoard(args.workdir or BUILD / "sim-board" / name, board=args.board, flash=args.flash,
                         flash_kb=args.flash_kb, speed=args.speed, scenario=args.scenario, wifi=(ssid, password),
                         blank=args.blank)
        try:
            board.start()
            break
        except BoardInUse as e:
            if len(names) == 1 or args.flash:
                print(f"meetkit sim board: {e}", file=sys.stderr)
                return 1
    else:
        print("meetkit sim board: 99 boards of this design run already: give --name", file=sys.stderr)
        return 1
    print(board.port, flush=True)
    print(f"simulated {args.board} on {board.port}: folder {board.workdir}, flash {board.node.image}, chip id "
          f"{board.chip_id}, console also in {board.console_log}; Ctrl-C (or SIGTERM) powers it off", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from meetkit_tools.demo import run_demo

    return run_demo(workdir=args.workdir, backfill_h=args.backfill, port=args.port, duration=args.duration)


def cmd_broker_init(args: argparse.Namespace) -> int:
    from meetkit_tools import broker

    nodes = list(args.node)
    if args.nodes_file:
        nodes += [ln.split("#", 1)[0].strip() for ln in args.nodes_file.read_text().splitlines()]
        nodes = [n for n in nodes if n]
    fleet = broker.Fleet(prefix=args.prefix, hostname=args.hostname, ips=args.ip, plain_port=args.port,
                         tls_port=args.tls_port, tls_bind_all=args.tls_bind_all,
                         install_dir=args.install_dir, persistence_location=args.persistence_dir)
    try:
        res = broker.init(args.out, fleet, nodes, renew_server_cert=args.renew_server_cert)
    except broker.BrokerError as e:
        print(f"meetkit broker init: {e}", file=sys.stderr)
        return 1
    for p in res.written:
        print(f"wrote {p}")
    for p in res.kept:
        print(f"kept  {p}")
    print(f"nodes: {len(res.nodes_added)} new account(s){': ' + ', '.join(res.nodes_added) if res.nodes_added else ''}")
    print(broker.next_steps(res, args.install_dir, fleet))
    return 0


def cmd_broker_add_node(args: argparse.Namespace) -> int:
    from meetkit_tools import broker

    try:
        res = broker.add_node(args.out, args.node_id, new_password_if_known=args.new_password,
                              new_key_if_known=args.new_key)
    except broker.BrokerError as e:
        print(f"meetkit broker add-node: {e}", file=sys.stderr)
        return 1
    for p in res.written:
        print(f"wrote {p}")
    print(f"node {args.node_id}: its password is in {res.out / broker.SECRETS}, its node key in "
          f"{res.out / broker.NODE_KEYS} (both mode 0600; `meetkit provision --broker-dir {res.out}` puts them on "
          "the node)")
    print("next: copy the passwd file to the broker and `sudo systemctl reload mosquitto` (SIGHUP: it reads the "
          "password file again; connected clients stay)")
    print(f"then the gateway: where it takes {broker.NODE_KEYS} and {broker.SECRETS} as service credentials "
          "(LoadCredential=, docs/operator.md \"Remote configuration\"), `sudo systemctl restart meetkit-gateway` "
          f"(systemd copies a credential when the service starts, and a reload does not renew it: until the restart "
          f"the gateway signs nothing for {args.node_id}); read from their own paths, it sees them within a second")
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    from meetkit_tools import provision as pv

    settings = {}
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            print(f"meetkit provision: --set {kv!r}: expected KEY=VALUE", file=sys.stderr)
            return pv.EXIT_UNCHANGED
        settings[key] = pv.nodeconfig.parse_value(value)
    fleet_fields: dict = {k: v for k, v in (("name", args.name), ("lat", args.lat), ("lon", args.lon),
                                            ("height_m", args.height), ("notes", args.notes)) if v is not None}
    if args.installed:
        fleet_fields["installed"] = args.installed
    if args.serial:
        fleet_fields["serials"] = {role: serial for role, serial in args.serial if serial}
    wifi_password = broker_password = None
    try:
        if args.wifi:
            wifi_password = pv.read_secret("MEETKIT_WIFI_PASSWORD", args.wifi_password_file,
                                           f"Wi-Fi password for {args.wifi}: ")
        if args.broker_user:
            broker_password = pv.read_secret("MEETKIT_BROKER_PASSWORD", args.broker_password_file,
                                             f"broker password for {args.broker_user}: ")
    except pv.InputError as e:
        print(f"error: {e}\nnothing was changed on the board.")
        return pv.EXIT_UNCHANGED
    fleet = args.fleet or (Path(os.environ["MEETKIT_FLEET"]) if os.environ.get("MEETKIT_FLEET") else None)
    o = pv.Options(port=args.port, board=args.board, node_id=args.node_id, wifi_ssid=args.wifi,
                   wifi_password=wifi_password, broker=args.broker, broker_dir=args.broker_dir, tls=args.tls,
                   broker_user=args.broker_user, broker_password=broker_password,
                   broker_reload=args.broker_reload, neighbours=args.neighbour, interval_s=args.interval,
                   settings=settings,
                   source=args.source, fleet=fleet, fleet_fields=fleet_fields, gateway=args.gateway,
                   timeout_s=args.timeout, reassign=args.reassign)
    return pv.provision(o)


def _add_provision(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("provision", help="put meetkit on a board with MicroPython, configure it as a node, "
                       "and check that it measures and delivers",
                       description="Builds the app for the board, writes the node's config (secrets are never "
                       "shown), copies both with mpremote (the old app stays until the new one is complete), "
                       "resets the board and reads its self-test. Exit status: 0 every check passed, 1 "
                       "provisioned but a check failed, 2 nothing was changed on the board.")
    p.add_argument("--port", required=True, help="the board's serial port (meetkit ports lists them)")
    p.add_argument("--board", required=True, help="the board file in boards/, e.g. esp32-devkitc")
    p.add_argument("--node-id", required=True, help="1-32 of a-z, 0-9, '-'; the node's name everywhere")
    net = p.add_argument_group("network and broker (kept from the board when it is this node already)")
    net.add_argument("--wifi", metavar="SSID", help="the Wi-Fi network; its password from $MEETKIT_WIFI_PASSWORD, "
                     "--wifi-password-file or a prompt")
    net.add_argument("--wifi-password-file", type=Path)
    net.add_argument("--broker", metavar="HOST[:PORT]", help="the broker as the node reaches it")
    net.add_argument("--broker-dir", type=Path, help="the folder of `meetkit broker init`: the node's account is made "
                     "there if new, and TLS uses its lab CA (ca/ca.der)")
    net.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                     help="TLS to the broker (default: on with --broker-dir)")
    net.add_argument("--broker-user", help="an account made elsewhere (password from $MEETKIT_BROKER_PASSWORD, "
                     "--broker-password-file or a prompt)")
    net.add_argument("--broker-password-file", type=Path)
    net.add_argument("--broker-reload", metavar="CMD", help="run through the shell (/bin/sh -c) after a new account "
                     "is written, e.g. 'sudo systemctl reload mosquitto' when the broker runs here, or "
                     "'sudo install -m 0640 build/broker/mosquitto/passwd /etc/mosquitto/meetkit/ && sudo kill -HUP PID'")
    net.add_argument("--neighbour", action="append", default=[], metavar="HOST[:PORT]",
                     help="a neighbouring gateway's broker the node fails over to (repeat, in order; the same "
                     "account, TLS and CA as --broker; docs/technician.md \"A list of brokers\")")
    p.add_argument("--interval", type=int, help="seconds per record (10-3600; default: the board's own, else 60)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config.json key (docs/technician.md), e.g. noise_offset_db=-1.2")
    p.add_argument("--source", action="store_true", help="copy the .py sources instead of compiled .mpy")
    p.add_argument("--reassign", action="store_true", help="the board was another node: make it this one and delete "
                   "the old node's records still in its spool")
    reg = p.add_argument_group("the fleet register")
    reg.add_argument("--fleet", type=Path, help="the register (TOML) to add the node to (default $MEETKIT_FLEET)")
    reg.add_argument("--name", help="the place, e.g. 'Dam, lamp post 12'")
    reg.add_argument("--lat", type=float)
    reg.add_argument("--lon", type=float)
    reg.add_argument("--height", type=float, help="mounting height above the ground, metres")
    reg.add_argument("--installed", type=_date, help="the day it was mounted, YYYY-MM-DD or today")
    reg.add_argument("--serial", action="append", type=_serial, metavar="PART=SERIAL", help="e.g. pm=PMS5003-2211-0042 (repeat)")
    reg.add_argument("--notes")
    p.add_argument("--gateway", metavar="URL", help="the gateway's status page (http://pi:8080): wait until it "
                   "shows the node's first records")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the self-test (default 180)")
    p.set_defaults(func=cmd_provision)
# -- meetkit fleet: the fleet register (tools/fleetfile.py) ---------------------------------------------


def _fleet_path(args: argparse.Namespace) -> Path:
    import os

    return args.fleet or Path(os.environ.get("MEETKIT_FLEET") or "fleet.toml")


def _fleet_error(path: Path, e: Exception) -> int:
    errors = getattr(e, "errors", [str(e)])
    print(f"{path}: {len(errors)} error{'s' if len(errors) != 1 else ''}", file=sys.stderr)
    for err in errors:
        print(f"  {err}", file=sys.stderr)
    return 1


def _fleet_value(key: str, v: object) -> str:
    if key == "serials" and isinstance(v, dict):
        return ", ".join(f"{role} {serial}" for role, serial in v.items())
    if key == "config" and isinstance(v, dict):
        return ", ".join(f"{k} {json.dumps(x) if isinstance(x, (dict, list)) else x}" for k, x in v.items())
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat().replace("+00:00", "Z")
    if key == "notes":
        return str(v).replace("\n", " / ")
    return f"{v:g}" if isinstance(v, float) else str(v)


def _fleet_node(node: str, meta: dict) -> None:
    from meetkit_gateway.fleet import KEYS

    print(node)
    for key in KEYS:
        if key in meta:
            print(f"  {key:<16} {_fleet_value(key, meta[key])}")
    if "lat" in meta:
        print(f"  {'map':<16} https://www.openstreetmap.org/?mlat={meta['lat']:.5f}&mlon={meta['lon']:.5f}"
              f"#map=18/{meta['lat']:.5f}/{meta['lon']:.5f}")


def cmd_fleet_show(args: argparse.Namespace) -> int:
    from meetkit_gateway.fleet import FleetError, load

    path = _fleet_path(args)
    if not path.exists():
        print(f"{path}: no such file (`meetkit fleet set ID ...` or `meetkit provision --fleet {path}` "
              "starts it; --fleet FILE or $MEETKIT_FLEET to use another)", file=sys.stderr)
        return 1
    try:
        nodes = load(path)
    except FleetError as e:
        return _fleet_error(path, e)
    if args.node_id:
        if args.node_id not in nodes:
            print(f"{path}: node {args.node_id} is not in the register", file=sys.stderr)
            return 1
        _fleet_node(args.node_id, nodes[args.node_id])
        return 0
    rows = [("node", "board", "name", "position", "installed", "fw")]
    for node, m in nodes.items():
        where = f"{m['lat']:.5f}, {m['lon']:.5f}" if "lat" in m else "-"
        if "height_m" in m:
            where += f" at {m['height_m']:g} m"
        rows.append((node, m.get("board", "-"), m.get("name", "-"), where,
                     m["installed"].isoformat() if "installed" in m else "-", m.get("fw", "-")))
    print(f"{path}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _date(s: str) -> "dt.date":
    if s == "today":
        return dt.date.today()
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: expected a date like 2026-11-24, or today") from None


def _config_key(s: str) -> tuple[str, object]:
    from meetkit_tools.nodeconfig import parse_value

    key, eq, value = s.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{s!r}: expected KEY=VALUE, like interval_s=120 (KEY= removes it)")
    return key, parse_value(value) if value else None


def _serial(s: str) -> tuple[str, str | None]:
    role, eq, serial = s.partition("=")
    if not eq or not role:
        raise argparse.ArgumentTypeError(f"{s!r}: expected ROLE=SERIAL, like pm=PMS5003-2311-0412 (ROLE= removes it)")
    return role, serial or None


def cmd_fleet_set(args: argparse.Namespace) -> int:
    from meetkit_gateway.fleet import FleetError
    from meetkit_tools import fleetfile

    path = _fleet_path(args)
    fields: dict = {k: v for k, v in (("board", args.board), ("name", args.name), ("lat", args.lat),
                                      ("lon", args.lon), ("height_m", args.height), ("installed", args.installed),
                                      ("noise_offset_db", args.noise_offset), ("calibrated", args.calibrated),
                                      ("notes", args.notes)) if v is not None}
    if args.serial:
        fields["serials"] = dict(args.serial)
    config = dict(args.set_config)
    if args.wifi:
        config["wifi"] = {"ssid": args.wifi[0]} if len(args.wifi) == 1 else [{"ssid": w} for w in args.wifi]
    if config:
        fields["config"] = config
    for key in args.unset:
        fields[key] = None
    if not fields:
        print("meetkit fleet set: nothing to set (see --help)", file=sys.stderr)
        return 2
    try:
        fleetfile.upsert(path, args.node_id, fields)
        meta = fleetfile.get(path, args.node_id)
    except FleetError as e:
        print(f"meetkit fleet set: not written, {path} is as it was", file=sys.stderr)
        return _fleet_error(path, e)
    print(f"{path}: {args.node_id} written")
    _fleet_node(args.node_id, meta or {})
    return 0


def cmd_fleet_check(args: argparse.Namespace) -> int:
    from meetkit_gateway.fleet import FleetError, load
    from meetkit_tools.fleetfile import rule_problems

    path = _fleet_path(args)
    try:
        nodes = load(path)
        problems = rule_problems(nodes)  # what the nodes would refuse of their configuration
        if problems:
            raise FleetError(path, problems)
    except FleetError as e:
        return _fleet_error(path, e)
    placed = sum("lat" in m for m in nodes.values())
    print(f"{path}: OK, {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {placed} with a position")
    for node, m in nodes.items():
        if "lat" not in m:
            print(f"  {node}: no position (lat, lon): a sensorthings target refuses its readings")
    return 0


def add_fleet_parser(sub: argparse._SubParsersAction) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--fleet", type=Path, metavar="FILE",
                       help="the register (default: $MEETKIT_FLEET, else ./fleet.toml)")
    fleet = sub.add_parser("fleet", help="the fleet register: where each node is, its sensors' serials, "
                           "calibration").add_subparsers(dest="fleet_cmd", required=True)
    show = fleet.add_parser("show", parents=[where], help="every node, or one node's every key")
    show.add_argument("node_id", nargs="?", metavar="ID")
    show.set_defaults(func=cmd_fleet_show)
    fs = fleet.add_parser("set", parents=[where], help="add a node or change its keys (comments are kept)")
    fs.add_argument("node_id", metavar="ID")
    fs.add_argument("--board", help="the board's name, like esp32-devkitc")
    fs.add_argument("--name", help='where it is, for people: "Dam, lamp post 12"')
    fs.add_argument("--lat", type=float, help="latitude, WGS84 degrees (north positive)")
    fs.add_argument("--lon", type=float, help="longitude, WGS84 degrees (east positive)")
    fs.add_argument("--height", type=float, help="mounting height above the ground, m")
    fs.add_argument("--installed", type=_date, help="installation date: 2026-11-24 or today")
    fs.add_argument("--serial", type=_serial, action="append", default=[], metavar="ROLE=SERIAL",
                    help="a sensor's serial number, ROLE pm, mic or climate (repeat; ROLE= removes it)")
    fs.add_argument("--noise-offset", type=float, metavar="DB", help="the microphone's calibration offset, dB")
    fs.add_argument("--calibrated", type=_date, help="when it was calibrated: 2026-11-20 or today")
    fs.add_argument("--notes", help="free text (never sent upstream)")
    fs.add_argument("--config", dest="set_config", type=_config_key, action="append", default=[], metavar="KEY=VALUE",
                    help="a setting the gateway sends the node ([nodes.\"<id>\".config], checked with the firmware's "
                         "rules): interval_s=120, ntp_host=..., broker='{\"host\": \"gw\", \"tls\": true}' "
                         "(repeat; KEY= removes it; no passwords: docs/operator.md, \"Remote configuration\")")
    fs.add_argument("--wifi", action="append", default=[], metavar="SSID",
                    help="the Wi-Fi network the gateway sends the node (its password: the gateway's secrets file)")
    fs.add_argument("--unset", action="append", default=[], metavar="KEY", help="remove a key (repeat)")
    fs.set_defaults(func=cmd_fleet_set)
    check = fleet.add_parser("check", parents=[where], help="is the register valid, as the gateway reads it")
    check.set_defaults(func=cmd_fleet_check)


# -- meetkit release: the release key and signed releases (tools/release.py) --------------------------------


def cmd_release_keygen(args: argparse.Namespace) -> int:
    from meetkit_tools import release

    try:
        key, pub = release.keygen(args.out)
    except release.ReleaseToolError as e:
        print(f"meetkit release keygen: {e}", file=sys.stderr)
        return 1
    print(f"wrote {key} (the release key, 0600: it signs releases; keep it off the gateway, and keep a copy)")
    print(f"wrote {pub} (the public key: the gateway's [ota] release_keys)")
    return 0


def cmd_release_build(args: argparse.Namespace) -> int:
    from meetkit_tools import release

    try:
        m = release.build(args.key, args.out, args.board, arch=args.arch)
    except release.ReleaseToolError as e:
        print(f"meetkit release build: {e}", file=sys.stderr)
        return 1
    print(f"release {m['version']}: {len(m['files'])} files, {m['bytes']} bytes, .mpy v{m['mpy']} {m['arch']}, "
          f"MicroPython {m['micropython']}, boards {', '.join(m['boards'])}")
    print(f"wrote {Path(args.out).absolute()} (manifest.json, release.sig, files/), signed and checked")
    print(f"next, on the gateway: meetkit-gateway release add {Path(args.out).absolute()} --config gateway.toml")
    return 0


def cmd_release_verify(args: argparse.Namespace) -> int:
    from meetkit_gateway import releases

    try:
        keys = [releases.load_public_key(p) for p in args.pub]
        r = releases.verify(args.dir, keys)
    except releases.ReleaseError as e:
        print(f"meetkit release verify: {e}", file=sys.stderr)
        return 1
    print(f"{args.dir}: release {r.version}, {len(r.files)} files, {r.size} bytes, signed by {r.signed_by}: OK")
    return 0


def add_release_parser(sub: argparse._SubParsersAction) -> None:
    rel = sub.add_parser("release", help="signed app releases for updates over the air (docs/operator.md)"
                         ).add_subparsers(dest="release_cmd", required=True)
    kg = rel.add_parser("keygen", help="a new release key (release.key, 0600) and its public key (release.pub)")
    kg.add_argument("--out", type=Path, required=True, help="the folder for release.key and release.pub")
    kg.set_defaults(func=cmd_release_keygen)
    b = rel.add_parser("build", help="build the app from firmware/ (.mpy), its manifest, and sign it",
                       description="Versions only go up: FW_VERSION in firmware/lib/config.py must be above the "
                       "newest release in --out's parent folder.")
    b.add_argument("--key", type=Path, required=True, help="release.key")
    b.add_argument("--out", type=Path, required=True, help="the release's folder (new), e.g. releases/0.3.0")
    b.add_argument("--board", action="append", default=[], metavar="B",
                   help="a board the release is for (repeat; default: every board in boards/)")
    b.add_argument("--arch", default="xtensawin", choices=["xtensawin", "x64"],
                   help="the .mpy architecture: xtensawin (every ESP32 board; the default) or x64 (the "
                   "simulator's MicroPython, for simulated nodes)")
    b.set_defaults(func=cmd_release_build)
    v = rel.add_parser("verify", help="check a release's signature and files as the gateway does")
    v.add_argument("dir", type=Path)
    v.add_argument("--pub", type=Path, action="append", required=True, help="release.pub (repeat for several)")
    v.set_defaults(func=cmd_release_verify)


# -- meetkit ports, meetkit flash-micropython (tools/ports.py, tools/flashing.py) -----------------------


def cmd_ports(args: argparse.Namespace) -> int:
    from meetkit_tools import ports

    found, stale = ports.list_ports()
    print(ports.as_json(found, stale) if args.json else ports.as_table(found, stale))
    return 0


def cmd_flash_micropython(args: argparse.Namespace) -> int:
    from meetkit_tools.flashing import FlashError, flash_micropython

    try:
        flash_micropython(args.port, args.firmware, args.board, reset=not args.no_reset, baud=args.baud,
                          erase=args.erase, verbose=args.verbose)
    except FlashError as e:
        print(f"meetkit flash-micropython: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("meetkit flash-micropython: interrupted; if it was writing, run it again before unplugging "
              "the board", file=sys.stderr)
        return 130
    return 0


def add_board_parsers(sub: argparse._SubParsersAction) -> None:
    po = sub.add_parser("ports", help="the serial ports that may be ESP32 boards (and simulated boards)")
    po.add_argument("--json", action="store_true", help="machine-readable")
    po.set_defaults(func=cmd_ports)
    fm = sub.add_parser("flash-micropython", help="write MicroPython's .bin onto a board (esptool)",
                        description="Check a MicroPython firmware .bin (from micropython.org) and write it "
                        "onto the board at --port with esptool: at 0x1000 on an ESP32, 0x0 on an ESP32-S3.")
    fm.add_argument("--port", required=True, help="the board's serial port (see `meetkit ports`)")
    fm.add_argument("--firmware", required=True, type=Path, metavar="FILE.bin",
                    help="MicroPython's .bin for the board, e.g. ESP32_GENERIC-20241129-v1.24.1.bin")
    fm.add_argument("--board", help="the board file (boards/NAME.json): its chip must be the file's")
    fm.add_argument("--no-reset", action="store_true",
                    help="do not reset the board through DTR/RTS: it is already waiting in its bootloader "
                    "(hold BOOT, press EN) or cannot be reset that way (a simulated board)")
    fm.add_argument("--baud", type=int, default=460800, help="serial speed while writing (default 460800)")
    fm.add_argument("--erase", action=argparse.BooleanOptionalAction, default=None,
                    help="erase the whole flash first (default: only when the board holds no MicroPython, "
                    "so an update keeps the node's files)")
    fm.add_argument("-v", "--verbose", action="store_true", help="show esptool's own output")
    fm.set_defaults(func=cmd_flash_micropython)



# -- meetkit region ---------------------------------------------------------------------------------

def _plan(args: argparse.Namespace, cmd: str):
    from meetkit_tools import region

    try:
        plan = region.load_plan(args.plan)
    except region.RegionError as e:
        for p in e.problems:
            print(f"meetkit region {cmd}: {p}", file=sys.stderr)
        return None
    return plan


def _region_errors(cmd: str, e: Exception) -> int:
    for p in getattr(e, "problems", [str(e)]):
        print(f"meetkit region {cmd}: {p}", file=sys.stderr)
    return 1


def cmd_region_check(args: argparse.Namespace) -> int:
    plan = _plan(args, "check")
    if plan is None:
        return 1
    for w in plan.warnings():
        print(f"note: {w}")
    for town, gws in plan.towns.items():
        print(f"town {town}: " + ", ".join(
            f"{g} ({plan.gateways[g].host}; fails over to {', '.join(plan.gateways[g].neighbours) or 'none'})"
            for g in gws))
    print(f"region {plan.name}: {len(plan.gateways)} gateway(s) in {len(plan.towns)} town(s), "
          f"prefix {plan.topic_prefix}, central {plan.central}, store {plan.store}: the plan holds")
    return 0


def cmd_region_accounts(args: argparse.Namespace) -> int:
    from meetkit_tools import broker, region

    plan = _plan(args, "accounts")
    if plan is None:
        return 1
    try:
        results = region.accounts(plan)
    except (region.RegionError, broker.BrokerError) as e:
        return _region_errors("accounts", e)
    for r in results:
        g = plan.gateways[r.gateway]
        said = [f"added {n} (of {h})" for n, h in r.added] + [f"changed {n} (of {h})" for n, h in r.changed]
        said += [f"removed {n}" for n in r.removed]
        towns = [f"{n} now of {h} ({t})" for n, h, t in r.moved]
        print(f"gateway {r.gateway}: " + ("; ".join(said + towns) if said or towns else "nothing to do")
              + f" ({r.kept} visiting account(s) as they were)")
        if said:
            print(f"  next: copy {g.broker}/mosquitto/passwd to that broker and `sudo systemctl reload mosquitto`")
        if said or towns:
            # the gateway forwards each visitor under its home town, from this file ([region] visitors)
            print(f"  next: copy {g.broker}/secrets.json to that gateway (its [region] visitors or [fleet] "
                  "broker_secrets) and restart it if it reads it as a credential")
    if not results:
        print("no gateway has neighbours: no accounts to make")
    return 0


def cmd_region_central(args: argparse.Namespace) -> int:
    from meetkit_tools import broker, region

    plan = _plan(args, "central")
    if plan is None:
        return 1
    opts = region.CentralOptions(install_dir=args.install_dir, persistence_location=args.persistence_dir)
    try:
        res = region.central(plan, args.out, opts)
    except (region.RegionError, broker.BrokerError) as e:
        return _region_errors("central", e)
    for p in res.written:
        print(f"wrote {p}")
    for p in res.kept:
        print(f"kept  {p}")
    print(f"accounts: {', '.join(res.accounts)} (passwords in {res.out / region.CENTRAL_SECRETS}, mode 0600)")
    print("next: on the central broker, with mosquitto/ copied there:")
    print(f"  sudo install -d -o root -g mosquitto -m 0750 {args.install_dir}")
    print(f"  sudo install -o root -g mosquitto -m 0640 {res.out}/mosquitto/* {args.install_dir}/")
    print(f"  sudo cp {args.install_dir}/mosquitto.conf /etc/mosquitto/mosquitto.conf && sudo systemctl restart mosquitto")
    print("each gateway: its <account>.password (and ca/ca.crt) beside gateway.toml, and this [[forward]] target:")
    for g in plan.gateways:
        print(f"\n# {g}\n{region.central_forward_toml(plan, g, res.out)}")
    return 0


def cmd_region_prometheus(args: argparse.Namespace) -> int:
    from meetkit_tools import region

    plan = _plan(args, "prometheus")
    if plan is None:
        return 1
    th = region.Thresholds(scrape_interval_s=args.scrape_interval, evaluation_interval_s=args.evaluation_interval,
                           silent_after_s=args.silent_after, for_s=getattr(args, "for"),
                           forward_behind_s=args.forward_behind, backlog_window_s=args.backlog_window,
                           backlog_records=args.backlog_records, store_near=args.store_near,
                           failover_after_s=args.failover_after)
    try:
        paths = region.prometheus(plan, args.out, th, args.alertmanager)
    except region.RegionError as e:
        return _region_errors("prometheus", e)
    for p in paths:
        print(f"wrote {p}")
    print(f"check: promtool check config {paths[0]}")
    print("next: both files into /etc/prometheus/ on the machine that runs Prometheus, and "
          "`sudo systemctl reload prometheus`")
    return 0


def _duration(text: str) -> float:
    from meetkit_tools import region

    try:
        return region.seconds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_region_parser(sub: argparse._SubParsersAction) -> None:
    from meetkit_tools import region

    reg = sub.add_parser("region", help="a region of gateways from its plan (region.toml): accounts for failover, "
                         "the central broker, Prometheus and its alerts").add_subparsers(dest="region_cmd", required=True)

    def plan_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--plan", type=Path, default=Path("region.toml"), help="the region plan (default region.toml)")

    rc = reg.add_parser("check", help="check the plan; every problem names its key")
    plan_arg(rc)
    rc.set_defaults(func=cmd_region_check)
    ra = reg.add_parser("accounts", help="every gateway's Mosquitto accepts the nodes of the gateways that list it "
                        "as a neighbour (their ids and passwords, from their broker folders); idempotent")
    plan_arg(ra)
    ra.set_defaults(func=cmd_region_accounts)
    rz = reg.add_parser("central", help="the central Mosquitto's conf, password file and ACL: a gw-<gateway> account "
                        "per gateway publishing only under <prefix>/<town>/#, a read-only `reader`")
    plan_arg(rz)
    rz.add_argument("--out", type=Path, default=BUILD / "central", help="folder for the files (default build/central)")
    rz.add_argument("--install-dir", type=Path, default=Path("/etc/mosquitto/meetkit"),
                    help="where mosquitto/ goes on the central broker (default /etc/mosquitto/meetkit)")
    rz.add_argument("--persistence-dir", default="/var/lib/mosquitto/")
    rz.set_defaults(func=cmd_region_central)
    d = region.Thresholds()
    rp = reg.add_parser("prometheus", help="prometheus.yml (every gateway's /metrics, labelled town and gateway) "
                        "and meetkit-alerts.yml; durations in seconds or with a unit (10m, 1h)")
    plan_arg(rp)
    rp.add_argument("--out", type=Path, default=BUILD / "prometheus", help="folder (default build/prometheus)")
    rp.add_argument("--scrape-interval", type=_duration, default=d.scrape_interval_s, metavar="DURATION",
                    help="how often every /metrics is read (default 1m)")
    rp.add_argument("--evaluation-interval", type=_duration, default=d.evaluation_interval_s, metavar="DURATION",
                    help="how often the rules are evaluated (default 1m)")
    rp.add_argument("--silent-after", type=_duration, default=d.silent_after_s, metavar="DURATION",
                    help="a node no gateway heard for this long is silent (default 10m: three batches of a "
                    "town's nodes)")
    rp.add_argument("--for", type=_duration, default=d.for_s, metavar="DURATION",
                    help="how long a condition holds before its alert fires (default 5m; a halted rollout at once)")
    rp.add_argument("--forward-behind", type=_duration, default=d.forward_behind_s, metavar="DURATION",
                    help="the oldest record not yet forwarded to a target is older than this (default 15m)")
    rp.add_argument("--backlog-window", type=_duration, default=d.backlog_window_s, metavar="DURATION",
                    help="over this long (default 30m) ...")
    rp.add_argument("--backlog-records", type=int, default=d.backlog_records, metavar="N",
                    help="... a node's records held not yet safe grew by N or more (default 20)")
    rp.add_argument("--store-near", type=float, default=d.store_near, metavar="FRACTION",
                    help="a store fills this much of its bound (default 0.9)")
    rp.add_argument("--failover-after", type=_duration, default=d.failover_after_s, metavar="DURATION",
                    help="a node on a neighbour's broker this long (default 10m)")
    rp.add_argument("--alertmanager", action="append", default=[], metavar="HOST:PORT",
                    help="where Prometheus sends the alerts (repeat; default: nowhere, they show in Prometheus)")
    rp.set_defaults(func=cmd_region_prometheus)

def build_parser() -> argparse.ArgumentParser:
    from meetkit_gateway import __version__

    ap = argparse.ArgumentParser(prog="meetkit", description=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    sim = sub.add_parser("sim", help="the hardware simulator").add_subparsers(dest="sim_cmd", required=True)
    run = sim.add_parser("run", help="run one simulated node against a broker",
                         description="Runs the firmware on one simulated node, its console on stdout, and ends "
                         "with `node ID: delivered N of M records (acknowledged by the gateway ...)`. Exit "
                         "status: 0 some records were acknowledged, 1 none were (or the node crashed), 2 wrong "
                         "options. docs/simulator.md, \"meetkit sim run\".")
    run.add_argument("--scenario", default="busy-road", help="scenario name or JSON file")
    run.add_argument("--node-id", default="sim-001")
    run.add_argument("--board", default="esp32-devkitc")
    run.add_argument("--broker", type=_broker, default=None, help="HOST:PORT (default 127.0.0.1:1883; with --tls this machine's name, as the certificate of "
                     "`meetkit broker init` has it, :8883); with --tls a name or address in the broker's certificate")
    run.add_argument("--user", help="the broker account (default with a password: the node id, as `meetkit broker "
                     "init` names them)")
    run.add_argument("--password-file", type=Path, metavar="FILE", help="its password: a file with the password, or "
                     "the secrets.json of `meetkit broker init` (the entry of --user); else $MEETKIT_BROKER_PASSWORD")
    run.add_argument("--tls", action="store_true", help="TLS to the broker, its certificate checked against --ca "
                     "(the node runs its firmware compiled, .mpy, as provision puts it: TLS needs the heap)")
    run.add_argument("--ca", type=Path, metavar="FILE", help="the lab CA (ca/ca.crt or ca/ca.der of `meetkit broker "
                     "init`): on the node's flash as ca.der")
    run.add_argument("--interval", type=int, default=60, help="interval in seconds")
    run.add_argument("--hours", type=float, default=1.0, help="simulated hours to run")
    run.add_argument("--speed", type=float, default=0, help="times real time (0: as fast as possible)")
    run.add_argument("--heapsize", default="112K", help="MicroPython heap, as on a board")
    run.add_argument("--workdir", type=Path)
    run.set_defaults(func=cmd_sim_run)
    sb = sim.add_parser("board", help="a simulated board on a serial port (a pty) for mpremote and meetkit provision",
                        description="Prints the board's device path on the first line, then runs until Ctrl-C or "
                        "SIGTERM. The board behaves as an ESP32 with MicroPython: its flash is a littlefs image "
                        "that persists, its sensors are the board file's, its Wi-Fi finds one access point.")
    sb.add_argument("--board", default="esp32-devkitc", help="the board design: sensors and chip (boards/)")
    sb.add_argument("--name", help="the board's own name: its folder build/sim-board/NAME (flash image, console.log) "
                    "and its chip id come from it (default: the --board design's name, or NAME-2, -3, ... while "
                    "that one runs); a folder a running board holds is refused")
    sb.add_argument("--flash", type=Path, help="the flash image (default flash.img in the board's folder; "
                    "made empty when missing)")
    sb.add_argument("--flash-kb", type=int, default=2048, help="the filesystem's size (2048: ESP32_GENERIC's vfs)")
    sb.add_argument("--speed", type=float, default=1, help="times real time for the simulated clock (default 1)")
    sb.add_argument("--scenario", default="busy-road", help="what the sensors measure (tools/sim/scenarios)")
    sb.add_argument("--wifi", default="meetkit-lab:simulated", metavar="SSID:PASSWORD",
                    help="the access point the board finds (default meetkit-lab:simulated)")
    sb.add_argument("--blank", action="store_true", help="a board without MicroPython: its port speaks the ESP32 "
                    "ROM bootloader until `meetkit flash-micropython --no-reset` has flashed MicroPython")
    sb.add_argument("--workdir", type=Path, help="the board's folder itself (instead of --name)")
    sb.set_defaults(func=cmd_sim_board)

    demo = sub.add_parser("demo", help="a broker, the gateway and three simulated nodes, live")
    demo.add_argument("--workdir", type=Path, default=BUILD / "demo")
    demo.add_argument("--port", type=int, default=None,
                      help="the status page's port (default: $MEETKIT_DEMO_PORT, else 8470)")
    demo.add_argument("--backfill", type=float, default=24, metavar="HOURS",
                      help="hours of records the nodes fill in, fast, before running live (default 24)")
    demo.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="stop after this many seconds (default: at Ctrl-C or SIGTERM)")
    demo.set_defaults(func=cmd_demo)

    bro = sub.add_parser("broker", help="Mosquitto's configuration, accounts, ACL and TLS for the fleet"
                         ).add_subparsers(dest="broker_cmd", required=True)
    bi = bro.add_parser("init", help="write mosquitto.conf, passwd, acl, the lab CA, the server certificate "
                        "and the secrets (keeps what exists)")
    bi.add_argument("--out", type=Path, default=BUILD / "broker", help="folder for everything (default build/broker)")
    bi.add_argument("--node", action="append", default=[], metavar="ID", help="a node id (repeat)")
    bi.add_argument("--nodes-file", type=Path, help="node ids, one a line")
    bi.add_argument("--prefix", default="meetkit", help="the topic prefix (mqtt.topic_prefix)")
    bi.add_argument("--hostname", default=socket.gethostname(), help="the broker's host name (a SAN)")
    bi.add_argument("--ip", action="append", default=[], help="the broker's LAN address (a SAN and where "
                    "the TLS listener listens; repeat)")
    bi.add_argument("--tls-bind-all", action="store_true", help="the TLS listener on all addresses")
    bi.add_argument("--port", type=int, default=1883, help="the plaintext listener on 127.0.0.1")
    bi.add_argument("--tls-port", type=int, default=8883)
    # Not the output folder itself: Mosquitto reads the files as user mosquitto, which cannot read
    # the 0600/0640 files of whoever ran init.
    bi.add_argument("--install-dir", type=Path, default=Path("/etc/mosquitto/meetkit"),
                    help="where mosquitto/ goes on the broker (default /etc/mosquitto/meetkit)")
    bi.add_argument("--persistence-dir", default="/var/lib/mosquitto/")
    bi.add_argument("--renew-server-cert", action="store_true", help="sign a new server certificate")
    bi.set_defaults(func=cmd_broker_init)
    ba = bro.add_parser("add-node", help="one more node's account (password file and secrets only)")
    ba.add_argument("node_id")
    ba.add_argument("--out", type=Path, default=BUILD / "broker")
    ba.add_argument("--new-password", action="store_true", help="replace the password of a known node")
    ba.add_argument("--new-key", action="store_true", help="replace the node key of a known node (provision it "
                    "again: until then the gateway's messages to it are refused as `bad mac`)")
    ba.set_defaults(func=cmd_broker_add_node)

    add_region_parser(sub)
    _add_provision(sub)
    add_fleet_parser(sub)
    add_release_parser(sub)
    add_board_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
