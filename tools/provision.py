"""`meetkit provision`: one board, from MicroPython to measuring, with a checklist at the end.

The steps, and what a failure at each leaves on the board (docs/technician.md):
  1. inputs: the board file, the node id, the config (checked by the firmware's own rules), the
     broker account (made in the `meetkit broker init` folder when new): nothing touched yet.
  2. the board: the port, MicroPython answering, its chip against the board file, the .mpy it
     loads, free flash for the whole new app: nothing touched yet.
  3. copy into new/, each file checked by sha256 on the board, then new/.ready: until then the
     old app is intact and runs (an unfinished new/ is removed at the next boot).
  4. install: firmware/appswap.py moves new/ into place; a cut in the middle is finished by
     boot.py at the next start. The spool (sp/) and boot.count stay.
  5. reset, then the node's self-test from its console, and the gateway's first stored batch.
Exit status: 0 every check passed; 1 provisioned but a check failed; 2 nothing was changed.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from meetkit_tools import appbuild, nodeconfig, selftest
from meetkit_tools.boardlink import BoardError, BoardInfo, BoardLink, FlashFull
from meetkit_tools.paths import BOARDS, FIRMWARE

EXIT_OK, EXIT_CHECKS, EXIT_UNCHANGED = 0, 1, 2


class InputError(Exception):
    """Bad input, found before the board is touched."""


@dataclass
class Options:
    port: str
    board: str
    node_id: str
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    broker: str | None = None          # HOST or HOST:PORT
    broker_dir: Path | None = None     # `meetkit broker init --out` folder
    tls: bool | None = None            # None: TLS when a broker folder gives the CA
    broker_user: str | None = None
    broker_password: str | None = None
    broker_reload: str | None = None   # a command that makes the running broker read its password file
    neighbours: list[str] = field(default_factory=list)   # HOST[:PORT] of the brokers it fails over to, in order
    interval_s: int | None = None     # None: the board's own, else 60
    settings: dict[str, Any] = field(default_factory=dict)   # --set key=value
    source: bool = False
    reassign: bool = False             # the board was another node: delete its spool
    fleet: Path | None = None
    fleet_fields: dict[str, Any] = field(default_factory=dict)
    gateway: str | None = None         # the gateway's status server, http://host:port
    timeout_s: float = 180
    settle_s: float = 20   # with every item decided, how long to wait for a change


def load_board(name: str) -> dict[str, Any]:
    """The board file, refused here when the firmware would refuse it (nothing measured)."""
    path = BOARDS / f"{name}.json"
    known = sorted(p.stem for p in BOARDS.glob("*.json") if not p.stem.endswith(".schema"))
    if name not in known:
        raise InputError(f"--board {name}: unknown board (known: {', '.join(known)})")
    try:
        board = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON: {e}") from None
    problems = nodeconfig.board_problems(path)
    if problems:
        raise InputError(f"{path}: the firmware would not use it as it is: " + "; ".join(problems))
    return board


def wired(board: dict[str, Any]) -> bool:
    return (board.get("net") or {}).get("type") == "lan"


def _split_host(s: str) -> tuple[str, int | None]:
    host, sep, port = s.rpartition(":")
    if sep and port.isdigit() and host:
        return host, int(port)
    return s, None


def broker_section(o: Options, say: Callable[[str, str], None],
                   precheck: bool = False) -> tuple[dict[str, Any] | list[dict[str, Any]] | None, bytes | None]:
    """config.json's broker section and the CA for the node; a new account when the broker
    folder has none for the node (`precheck`: none is made, a placeholder stands in). With
    neighbours, a list: the gateway's broker first, then each neighbour's with the same account,
    TLS and CA (a region has one lab CA, and `meetkit region accounts` gives the neighbours the
    node's account)."""
    if not o.broker:
        if o.neighbours:
            raise InputError("--neighbour: needs --broker (the node's own gateway's broker comes first in its list)")
        if o.broker_dir:
            raise InputError("--broker HOST[:PORT]: required with --broker-dir (the address the node reaches "
                             "the broker at: an --ip or the --hostname given to meetkit broker init)")
        return None, None
    host, port = _split_host(o.broker)
    ca = None
    user, password = o.broker_user, o.broker_password
    tls = o.tls
    if o.broker_dir:
        from meetkit_tools import broker

        try:
            secrets_doc = broker.load_secrets(o.broker_dir)
        except (OSError, ValueError, broker.BrokerError) as e:
            raise InputError(f"--broker-dir {o.broker_dir}: no usable secrets.json ({e}): run meetkit broker init "
                             "there first") from None
        if precheck:
            secrets_doc.setdefault("nodes", {}).setdefault(o.node_id, "placeholder")
        elif o.node_id not in secrets_doc.get("nodes", {}):
            try:
                broker.add_node(o.broker_dir, o.node_id)
            except broker.BrokerError as e:
                raise InputError(f"--broker-dir: {e}") from None
            say("broker", f"new account {o.node_id} in {o.broker_dir} (password in {broker.SECRETS}, not shown)")
            _reload_broker(o, say)
        else:
            say("broker", f"account {o.node_id} exists in {o.broker_dir}; its password is kept")
            if o.broker_reload:   # a reload that failed last time is tried again
                _reload_broker(o, say)
        user = o.node_id
        password = secrets_doc["nodes"][o.node_id] if precheck else broker.load_secrets(o.broker_dir)["nodes"][o.node_id]
        der = Path(o.broker_dir) / "ca" / "ca.der"
        if tls is not False:
            if not der.exists():
                raise InputError(f"{der}: missing: run meetkit broker init --out {o.broker_dir} again")
            ca, tls = der.read_bytes(), True
    sec: dict[str, Any] = {"host": host, "tls": bool(tls)}
    if port is not None:
        sec["port"] = port
    if user:
        sec["user"] = user
    if password:
        sec["password"] = password
    if not o.neighbours:
        return sec, ca
    brokers = [sec]
    for n in o.neighbours:
        h, p = _split_host(n)
        entry = {k: v for k, v in sec.items() if k != "port"} | {"host": h}
        if p is not None:
            entry["port"] = p
        brokers.append(entry)
    say("broker", "fails over to " + ", ".join(o.neighbours) + " (docs/technician.md, \"A list of brokers\")")
    return brokers, ca


def _reload_broker(o: Options, say: Callable[[str, str], None]) -> None:
    if not o.broker_reload:
        say("broker", "the running broker reads the new account once it reloads its password file: copy "
                      "mosquitto/passwd to the broker if it runs elsewhere, then `sudo systemctl reload mosquitto` "
                      "(or give --broker-reload CMD)")
        return
    # Through /bin/sh, as typed: a compound command (`install ... && kill -HUP PID`) works as in a terminal
    res = subprocess.run(o.broker_reload, shell=True, capture_output=True, text=True)
    if res.returncode:
        raise InputError(f"--broker-reload {o.broker_reload!r} failed ({res.returncode}): "
                         f"{(res.stderr or res.stdout).strip()[:200]}")
    say("broker", f"reloaded ({o.broker_reload})")


def make_config(o: Options, board: dict[str, Any], info: BoardInfo | None,
                say: Callable[[str, str], None], precheck: bool = False) -> tuple[dict[str, Any], bytes | None]:
    """The node's config.json and CA. `precheck` (before the board is read): what was given is
    checked, what may still come from the board's own config is not asked for, no account is made."""
    old = info.config if info and isinstance(info.config, dict) and info.config.get("node_id") == o.node_id else None
    wifi = None
    if o.wifi_ssid:
        if o.wifi_password is None:
            raise InputError("--wifi: no password given (MEETKIT_WIFI_PASSWORD, --wifi-password-file, or the prompt)")
        wifi = (o.wifi_ssid, o.wifi_password)
    elif old and isinstance(old.get("wifi"), dict):
        wifi = (old["wifi"].get("ssid"), old["wifi"].get("password", ""))
        say("wifi", f"kept from the board: {wifi[0]}")
    elif old and isinstance(old.get("wifi"), list) and old["wifi"]:   # networks the gateway set: kept as they are
        wifi = old["wifi"]
        say("wifi", "kept from the board: " + ", ".join(str(w.get("ssid")) for w in wifi if isinstance(w, dict)))
    elif not wired(board) and not precheck:
        raise InputError("--wifi SSID: required for a Wi-Fi board (the node would measure but never send)")
    brk, ca = broker_section(o, say, precheck)
    if brk is None and old and isinstance(old.get("broker"), (dict, list)) and old["broker"]:
        brk = old["broker"]
        say("broker", "kept from the board: " + ", ".join(
            str(b.get("host")) for b in (brk if isinstance(brk, list) else [brk]) if isinstance(b, dict)))
    if brk is None and not precheck:
        raise InputError("--broker HOST[:PORT]: required (where the node sends its data)")
    # An update keeps what this node had (its interval, calibration, topic prefix...) unless given anew.
    extra = {k: v for k, v in (old or {}).items() if k not in ("node_id", "wifi", "broker", "interval_s")}
    if old and extra:
        say("config", "kept from the board: " + ", ".join(sorted(extra)))
    extra.update(o.settings)
    interval = o.interval_s or (old or {}).get("interval_s") or 60
    reg = _fleet_entry(o)
    if reg and "noise_offset_db" in reg and "noise_offset_db" not in o.settings:
        extra["noise_offset_db"] = reg["noise_offset_db"]
        say("calibration", f"noise_offset_db {reg['noise_offset_db']:+g} dB from the fleet register")
    cfg = nodeconfig.build(o.node_id, interval, wifi, brk, extra)
    try:
        nodeconfig.check(cfg, wired=wired(board) or (precheck and wifi is None),
                         broker_optional=precheck and brk is None)
    except nodeconfig.ConfigError as e:
        raise InputError("the node would refuse this config: " + "; ".join(e.problems)) from None
    if ca is None and any(isinstance(b, dict) and b.get("tls") for b in (brk if isinstance(brk, list) else [brk])) \
            and info and "ca.der" in info.files:
        say("tls", "the board's ca.der is kept")
    return cfg, ca


def _node_key(o: Options, info: BoardInfo, say: Callable[[str, str], None]) -> bytes | None:
    """The node's key from the broker folder (made there if it has none yet), for node.key on the
    flash: what authenticates the gateway's configuration, releases and commands to this node."""
    if not o.broker_dir:
        if "node.key" in info.files:
            say("node key", "the board's node.key is kept")
        else:
            say("node key", "none (no --broker-dir): the node will take no configuration, release or command "
                            "over the air")
        return None
    from meetkit_tools import broker

    try:
        key, made = broker.ensure_node_key(o.broker_dir, o.node_id)
    except broker.BrokerError as e:
        raise InputError(f"--broker-dir: {e}") from None
    say("node key", f"{'new, ' if made else ''}from {Path(o.broker_dir) / broker.NODE_KEYS} (not shown), "
                    "written as node.key")
    return key


def _fleet_entry(o: Options) -> dict[str, Any] | None:
    if not o.fleet or not o.fleet.exists():
        return None
    from meetkit_gateway.fleet import FleetError
    from meetkit_tools import fleetfile

    try:
        return fleetfile.get(o.fleet, o.node_id)
    except FleetError as e:
        raise InputError(f"--fleet: {e}") from None


def _check_fleet_fields(o: Options) -> None:
    """The register's fields as the gateway will check them, before the board is touched."""
    if not o.fleet:
        return
    from meetkit_gateway.fleet import FleetError, parse

    fields = dict(o.fleet_fields, board=o.board)
    try:
        parse({"nodes": {o.node_id: fields}}, o.fleet)
    except FleetError as e:
        raise InputError("the fleet register would refuse: " + "; ".join(e.errors)) from None


def provision(o: Options, out: Callable[[str], None] = print) -> int:
    started = time.time()

    def say(what: str, text: str) -> None:
        out(f"  {what:11} {text}")

    out(f"meetkit provision: node {o.node_id}, board {o.board}, port {o.port}")
    try:
        board = load_board(o.board)
        if not nodeconfig.firmware_config()._valid_id(o.node_id):
            raise InputError(f"--node-id {o.node_id!r}: 1-32 of a-z, 0-9 and '-'")
        make_config(o, board, None, lambda *a: None, precheck=True)  # every input checked before the board is touched
        if not (FIRMWARE / "appswap.py").exists():
            raise InputError(f"{FIRMWARE / 'appswap.py'}: missing from this meetkit")
        unknown = sorted(set(o.settings) - set(nodeconfig.settable()))
        if unknown:
            raise InputError(f"--set {', '.join(unknown)}: not a config.json key provision leaves to --set "
                             f"(those are: {', '.join(nodeconfig.settable())}; the others have options)")
        _check_fleet_fields(o)
    except InputError as e:
        out(f"error: {e}\nnothing was changed on the board.")
        return EXIT_UNCHANGED

    try:
        link = BoardLink.open(o.port)
    except BoardError as e:
        out(f"error: {e}\nnothing was changed on the board.")
        return EXIT_UNCHANGED
    try:
        return _on_board(o, board, link, say, out, started)
    except KeyboardInterrupt:
        out("\ninterrupted: the board has its old app, or the new one complete (boot.py finishes an "
            "install at the next start); run provision again to see the checklist")
        return EXIT_CHECKS
    finally:
        link.close()


def _on_board(o: Options, board: dict[str, Any], link: BoardLink, say: Callable[[str, str], None],
              out: Callable[[str], None], started: float) -> int:
    installed = False
    try:
        info = link.probe()
        say("board", f"{info.machine}, MicroPython {info.release}, chip {info.unique_id}")
        want = board.get("mcu", "esp32")
        if info.mcu and info.mcu != want:
            raise InputError(f"--board {o.board} is for an {want.upper()}, but the board is an "
                             f"{info.mcu.upper()} ({info.machine}): pick its board file (meetkit ports)")
        if info.app:
            say("installed", f"meetkit {info.app.get('fw')} as node {info.app.get('node')} "
                             f"(provisioned {info.app.get('built')})")
        was = (info.app or {}).get("node")
        if was and was != o.node_id and "sp" in info.files and not o.reassign:
            # Its spool holds records of the old node that nobody else can deliver.
            raise InputError(f"this board is node {was}, with its spool (sp/) of records not yet delivered: to make it "
                             f"{o.node_id}, run again with --reassign (the records of {was} still on it are deleted)")
        cfg, ca = make_config(o, board, info, say)
        key = _node_key(o, info, say)
        target = None if o.source else appbuild.Target.from_sys_mpy(info.mpy)
        if target is not None:
            try:
                appbuild.check_target(target)
            except appbuild.BuildError as e:
                raise InputError(str(e)) from None
        with tempfile.TemporaryDirectory(prefix="meetkit-app-") as tmp:
            app = Path(tmp) / "app"
            meta = {"fw": nodeconfig.fw_version(), "board": o.board, "node": o.node_id}
            try:
                manifest = appbuild.build(app, target, board, cfg, meta, ca_der=ca, node_key=key)
            except appbuild.BuildError as e:
                raise InputError(str(e)) from None
            files = list(manifest["files"])
            size = sum((app / f).stat().st_size for f in files)
            say("app", f"meetkit {meta['fw']}, {len(files)} files, {size / 1024:.0f} KB "
                       f"({'sources' if target is None else '.mpy for ' + str(target.arch)})")
            link.remove_tree("new")  # what an interrupted provisioning left
            info = link.probe()
            need = appbuild.size_on_flash(app, info.block_size)
            say("flash", f"{info.free_bytes / 1024:.0f} KB free of {info.blocks * info.block_size / 1024:.0f} KB; "
                         f"the new app needs {need / 1024:.0f} KB beside the old one")
            if need > info.free_bytes:
                raise FlashFull(f"the new app needs {need / 1024:.0f} KB, {info.free_bytes / 1024:.0f} KB are free")
            t0 = time.monotonic()
            link.mkdir("new")
            link.mkdir("new/lib")
            for f in files + ["app.json"]:
                link.put(app / f, "new/" + f)
            for f in files:
                if link.sha256("new/" + f) != manifest["files"][f]:
                    raise BoardError(f"new/{f}: its sha256 on the board differs from the file sent: the "
                                     "connection corrupts data; try another USB cable or port")
            say("copy", f"{len(files)} files in {time.monotonic() - t0:.1f} s, each checked (sha256) on the board")
            link.exec("open('new/.ready', 'w').close()", "marking the new app complete")
            # From here the board installs the new app even if we stop: boot.py finishes the swap.
            installed = True
            res = link.exec((FIRMWARE / "appswap.py").read_text() + "\nprint('installed', finish())\n",
                            "installing the new app")
            if "installed True" not in res:
                raise BoardError(f"installing the new app: appswap said {res.strip()[-120:]!r}")
            after = link.probe()
            if not after.app or after.app.get("built") != manifest["built"]:
                raise BoardError("installing the new app: /app.json on the board is not the new one")
            kept = "sp/ and boot.count kept"
            if was and was != o.node_id and o.reassign and "sp" in info.files:
                link.remove_tree("sp")
                kept = f"the spool of {was} deleted: the board is {o.node_id} from now on"
            say("install", f"done: the new app is in place ({kept})")
    except FlashFull as e:
        _clean(link)
        out(f"error: {e}. Nothing was changed on the board: the old app is in place.\n"
            "  free space: remove files you put on the board yourself (mpremote fs ls), or, if the spool "
            "(sp/) holds undelivered records, let the node deliver them first")
        return EXIT_UNCHANGED
    except (InputError, BoardError) as e:
        if installed:
            out(f"error: {e}\nthe new app is complete on the board and is installed at its next start "
                "(press EN/RST).")
            return EXIT_CHECKS
        _clean(link)
        out(f"error: {e}\nnothing was changed on the board: the old app is in place.")
        return EXIT_UNCHANGED

    _register(o, board, info, manifest, say)
    before = _gateway_records(o.gateway, o.node_id) if o.gateway else None
    link.reset()
    say("reset", f"reading the node's self-test (up to {o.timeout_s:.0f} s)")
    checks = selftest.Checklist(selftest.expected_items(board))
    deadline = time.monotonic() + o.timeout_s
    last_change = time.monotonic()
    for line in link.console(deadline):
        item = checks.feed(line)
        if item:
            r = checks.results[item]
            out(f"    {'pass' if r.ok else 'FAIL'}  {item}: {r.detail}")
            last_change = time.monotonic()
        if checks.passed:
            break
        if checks.settled and time.monotonic() - last_change > o.settle_s:
            break   # a failure the node has given up on for now; the technician takes it from here
    gw_note = ""
    if o.gateway and not checks.blocked_by("gateway"):
        gw_ok, gw_note = _wait_gateway(o.gateway, o.node_id, before, deadline)
        if gw_ok and "gateway" not in checks.results:   # stored, the node's own line not read yet
            checks.results["gateway"] = selftest.Result(True, gw_note)
        elif not gw_ok and checks.results.get("gateway", selftest.Result(False, "")).ok:
            checks.results["gateway"] = selftest.Result(False, gw_note)
    waited = time.time() - started
    out("checklist:")
    out(checks.render(waited))
    if gw_note:
        out(f"  gateway {o.gateway}: {gw_note}")
    if checks.passed:
        out(f"result: PASS: {o.node_id} measures and the gateway stores its data ({waited:.0f} s)")
        return EXIT_OK
    failed = [i for i in checks.items if not (i in checks.results and checks.results[i].ok)]
    out(f"result: FAIL ({', '.join(failed)}): the node is provisioned; fix what the checklist says, then "
        f"`meetkit provision` again or press EN/RST and watch the console (mpremote connect {o.port} repl)")
    return EXIT_CHECKS


def _clean(link: BoardLink) -> None:
    try:
        link.remove_tree("new")
    except BoardError:
        pass  # boot.py removes an unfinished new/ at the next start


def _register(o: Options, board: dict[str, Any], info: BoardInfo, manifest: dict[str, Any],
              say: Callable[[str, str], None]) -> None:
    if not o.fleet:
        return
    from meetkit_tools import fleetfile

    fields = dict(o.fleet_fields, board=o.board, chip=info.unique_id, fw=manifest["fw"],
                  provisioned=datetime.now(timezone.utc).replace(microsecond=0))
    try:
        new = fleetfile.get(o.fleet, o.node_id) is None if o.fleet.exists() else True
        fleetfile.upsert(o.fleet, o.node_id, fields)
    except Exception as e:  # the node is provisioned; the register is the technician's to mend
        say("fleet", f"NOT updated: {e}")
        return
    say("fleet", f"{o.fleet}: {o.node_id} {'added' if new else 'updated'}")


def _gateway_records(url: str, node: str) -> int | None:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/nodes", timeout=5) as r:
            doc = json.load(r)
    except (OSError, ValueError):
        return None
    for n in doc.get("nodes", []):
        if n.get("node") == node:
            return int(n.get("records") or 0)
    return 0


def _wait_gateway(url: str, node: str, before: int | None, deadline: float) -> tuple[bool, str]:
    """Whether the gateway's own page shows new records of the node."""
    if before is None:
        return False, "not reachable (is meetkit-gateway running? its [http] address?)"
    while True:
        now = _gateway_records(url, node)
        if now is not None and now > before:
            return True, f"{now - before} new record(s) of {node} stored"
        if time.monotonic() >= deadline:
            return False, f"no new record of {node} by the deadline"
        time.sleep(1)


def read_secret(env: str, file: Path | None, prompt: str) -> str | None:
    """A secret from a file, the environment or a prompt: never from the command line, where it
    would stay in the shell's history and show in `ps`."""
    if file:
        try:
            return file.read_text().strip("\r\n")
        except OSError as e:
            raise InputError(f"{file}: cannot read it ({e.strerror})") from None
    if os.environ.get(env):
        return os.environ[env]
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return None
