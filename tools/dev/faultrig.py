"""The fault suite's rig and its bookkeeping: tests/faults/ asserts with it, bench/hostile.py
measures with it (through meetkit_tools.dev.hostile).

The ground truth is each simulated node's ledger: every record it stored in its flash spool, as
it printed it on its serial console. After a scenario's faults are over and the nodes have had
time to drain, every ledger record must be in the gateway's database exactly once, with its
timestamp: the node's own where it had one, else (a record made before NTP) the true start of its
interval within TS_TOLERANCE_S. Records the spool dropped for space, as it logged, are
"dropped by policy", not lost.

The rig's waits have deadlines and raise TimeoutError (RuntimeError when something stopped); it
judges, it does not assert: the tests do, on the Outcome.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.dev.fleetsim import OFFER_HEAP
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario, scenario_epoch

AIR = "esp32-devkitc-air"   # the nodes' board: no microphone, so an hour simulates in seconds
H = 3600
TS_TOLERANCE_S = 2.5   # the grid snapping of _align (< 2 s) plus rounding
TAIL_S = 30
RESULTS: list["Outcome"] = []   # for the table `make faults` prints

_BOOT = re.compile(r" I node (\S+), boot (\d+),")
_RECORD = re.compile(r" I record (\d+): (\{.*\})$")
# the node's line for records it dropped for space (firmware/lib/spool.py); "unacknowledged
# records" before the safe position (issue 16) made it "records not yet safe"
_DROPPED = re.compile(r" W spool: full, dropped (\d+) (?:unacknowledged records|records not yet safe) of boot (\d+): "
                      r"seq (\d+)\.\.(\d+)")
_RESET = re.compile(r"^--- .*\bat t=(\d+) ms")


@dataclass
class Ledger:
    records: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)   # (boot, seq) -> rec
    boot_t0: dict[int, float] = field(default_factory=dict)   # boot -> virtual seconds at its start
    dropped: list[tuple[int, int, int, int]] = field(default_factory=list)   # (count, boot, first, last)

    def dropped_keys(self) -> set[tuple[int, int]]:
        return {(b, s) for _, b, a, z in self.dropped for s in range(a, z + 1)}


def read_ledger(console: str) -> Ledger:
    led = Ledger()
    boot = None
    t_reset = 0.0
    for line in console.splitlines():
        m = _RESET.search(line)
        if m:
            t_reset = int(m.group(1)) / 1000
            continue
        m = _BOOT.search(line)
        if m:
            boot = int(m.group(2))
            led.boot_t0[boot] = t_reset
            continue
        m = _RECORD.search(line)
        if m:
            rec = json.loads(m.group(2))
            led.records[(boot, rec["seq"])] = rec
            continue
        m = _DROPPED.search(line)
        if m:
            led.dropped.append(tuple(int(g) for g in m.groups()))  # type: ignore[arg-type]
    return led


@dataclass
class Outcome:
    scenario: str
    generated: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    dropped: int = 0
    wrong_time: int = 0
    untimed: int = 0
    crashes: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return asdict(self)


def db_rows(db: Path) -> list[tuple[str, int, int, int | None, int]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT node, boot, seq, ts, up FROM records").fetchall()
    finally:
        con.close()


def judge(name: str, nodes: dict[str, tuple[Ledger, int]], rows: list[tuple[str, int, int, int | None, int]],
          reported_dropped: dict[str, int] | None = None) -> Outcome:
    """nodes: node id -> (ledger, the scenario's start epoch). Compares the ledgers with the db."""
    out = Outcome(name)
    seen: dict[tuple[str, int, int], list[tuple[int | None, int]]] = {}
    for node, boot, seq, ts, up in rows:
        seen.setdefault((node, boot, seq), []).append((ts, up))
    for node_id, (led, epoch) in nodes.items():
        dropped = led.dropped_keys()
        for (boot, seq), rec in led.records.items():
            out.generated += 1
            got = seen.get((node_id, boot, seq))
            if not got:
                if (boot, seq) in dropped:
                    out.dropped += 1
                else:
                    out.lost += 1
                    if len(out.problems) < 10:
                        out.problems.append(f"lost {node_id} boot {boot} seq {seq}")
                continue
            out.delivered += 1
            out.duplicated += len(got) - 1
            ts, _ = got[0]
            if rec["ts"] is not None:
                ok = ts == rec["ts"]
            elif ts is None:
                out.untimed += 1
                ok = True
            else:
                truth = epoch + led.boot_t0.get(boot, 0.0) + rec["up"]
                ok = abs(ts - truth) <= TS_TOLERANCE_S
            if not ok:
                out.wrong_time += 1
                if len(out.problems) < 10:
                    out.problems.append(f"time {node_id} boot {boot} seq {seq}: db {ts}, ledger {rec['ts']}")
        if reported_dropped is not None:
            logged = sum(c for c, *_ in led.dropped)
            if reported_dropped.get(node_id, 0) < logged:
                out.problems.append(f"{node_id}: dropped {logged} but reported {reported_dropped.get(node_id)}")
    ledger_keys = {(n, b, s) for n, (led, _) in nodes.items() for (b, s) in led.records}
    extra = [k for k in seen if k not in ledger_keys]
    out.notes["stored_not_in_ledger"] = len(extra)
    RESULTS.append(out)
    return out


def virtual_s(console: Path, at: str | None = None) -> float:
    """How far a node's simulated time has got, from its console: its last uptime, after its last
    reset (the runner's marker carries the virtual clock). With `at`: where it was when the console
    first showed that text (0.0 while it has not)."""
    t0 = 0.0
    up = 0.0
    try:
        text = console.read_text(errors="replace")
    except FileNotFoundError:
        return 0.0
    if at is not None:
        if at not in text:
            return 0.0
        text = text[:text.index(at)]
    for line in text.splitlines()[-400:]:
        m = _RESET.search(line)
        if m:
            t0, up = int(m.group(1)) / 1000, 0.0
            continue
        head = line[:8].strip()
        if head.isdigit():
            up = float(head)
    if "--- " in text and t0 == 0.0:  # the last reset is further back than 400 lines
        for line in text.splitlines():
            m = _RESET.search(line)
            if m:
                t0 = int(m.group(1)) / 1000
    return t0 + up


def crashes(console: str, expected: tuple[str, ...] = ()) -> int:
    """The tracebacks in a node's console, but those whose exception line (the first line after it
    that is not indented) holds one of `expected`, and the simulator's power cuts (the flash's EIO
    that stops the firmware at the cut, the line "--- power cut" next)."""
    n = 0
    for part in console.split("Traceback (most recent call last)")[1:]:
        lines = part.splitlines()[1:]
        at = next((i for i, l in enumerate(lines) if l and not l[0].isspace()), len(lines))
        line, after = (lines[at:at + 2] + ["", ""])[:2]
        n += not (any(e in line for e in expected) or after.startswith("--- power cut"))
    return n


class Rig:
    """A real Mosquitto, the gateway as its own process, and simulated nodes, in one folder.

    `ota`: the gateway also runs the fleet over the air ([fleet] node_keys, [ota] with these keys,
    e.g. {"offer_every_s": 5}); see Fleet. Nodes made with `rig.node(..., fleet=True)` then run
    the firmware as release OLD, with a node key the gateway signs with."""

    def __init__(self, workdir: Path, gateway_dir: Path | None = None, store_toml: str = "",
                 ota: dict[str, float] | None = None) -> None:
        self.dir = Path(workdir)
        self.broker = Mosquitto(self.dir / "broker").start()
        self.fleet = Fleet(self, self.dir / "fleet", ota) if ota is not None else None
        self.gateway = GatewayProcess(gateway_dir or self.dir / "gateway", self.broker.host, self.broker.port,
                                      client_id="meetkit-gateway-faults", store_toml=store_toml,
                                      extra_toml=self.fleet.toml() if self.fleet else "").start()
        self._wait_subscribed()
        self.nodes: dict[str, SimNode] = {}
        self.epochs: dict[str, int] = {}
        self.cutoff: dict[str, set[tuple[int, int]]] | None = None
        if self.fleet:
            self.fleet.watch()

    def _wait_subscribed(self, timeout: float = 30) -> None:
        # Until the gateway's first subscription, the broker keeps nothing for it: a node that
        # published earlier would lose its first batch to the rig, not to a fault.
        end = time.monotonic() + timeout
        while "subscribed to" not in (self.gateway.log.read_text() if self.gateway.log.exists() else ""):
            if time.monotonic() > end:
                raise TimeoutError("the gateway did not subscribe")
            time.sleep(0.05)  # waits on: the gateway's log

    def node(self, node_id: str, scenario: str | dict[str, Any] = "quiet-street", fleet: bool = False,
             **spec: Any) -> SimNode:
        """A node; it runs TAIL_S past `until_s`, so the record it closes last has time to go.
        `fleet`: run over the air (the rig made with `ota`): release OLD as .mpy, a node key."""
        sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
        if spec.get("until_s") is not None:
            spec["until_s"] += TAIL_S
        if fleet:
            if self.fleet is None:
                raise RuntimeError("a fleet node needs a rig made with ota=")
            spec.setdefault("firmware", self.fleet.old_firmware())
            spec.setdefault("heapsize", OTA_HEAP)
            spec["files"] = dict(spec.get("files") or {}, **{"node.key": self.fleet.add_node(node_id)})
        n = SimNode(NodeSpec(node_id=node_id, scenario=sc, workdir=self.dir / node_id,
                             broker_host=self.broker.host, broker_port=self.broker.port, **spec))
        n.prepare()
        self.nodes[node_id] = n
        self.epochs[node_id] = scenario_epoch(sc)
        return n

    def virtual_s(self, node_id: str) -> float:
        """How far a node's simulated time has got: its console's last uptime, after its last reset."""
        return virtual_s(self.nodes[node_id].console)

    def wait_virtual(self, node_id: str, t_s: float, timeout: float = 300) -> None:
        wait_virtual(node_id, self.nodes[node_id], t_s, timeout)

    def start(self) -> None:
        for n in self.nodes.values():
            n.start()

    def running(self) -> bool:
        return any(n.running for n in self.nodes.values())

    def run(self, while_running: Callable[[], None] | None = None, timeout: float = 900) -> None:
        """Start the nodes, call `while_running` (the faults), then let everything recover.

        With faults driven from here (wall-clock actions: a broker stopped, a gateway killed), the
        nodes' simulated time runs on at full speed meanwhile, so their `until_s` is generous and
        they are stopped as soon as every record they made is stored: that is "after recovery".
        Without, the nodes run to their `until_s` (their faults are in the scenario)."""
        self.start()
        end = time.monotonic() + timeout
        if while_running:
            while_running()
            while self.running and time.monotonic() < end and not self.caught_up():
                time.sleep(0.5)  # waits on: every record the nodes made to be stored
            for n in self.nodes.values():
                n.stop()
        for n in self.nodes.values():
            n.wait(max(1.0, end - time.monotonic()))
            if n.running:
                raise TimeoutError(f"{n.spec.node_id} did not finish in {timeout} s")

    def caught_up(self) -> bool:
        seen = self._stored_all(self.cutoff)
        if seen is None:
            return False
        self.cutoff = seen  # what recovered; records the nodes make after this are in transit
        return True

    def _stored_all(self, within: dict[str, set[tuple[int, int]]] | None) -> dict[str, set[tuple[int, int]]] | None:
        """What the nodes' ledgers name, if the gateway stored all of it (only what is `within`,
        if given) but what they dropped; None if something is not stored (yet)."""
        try:
            stored = {(node, boot, seq) for node, boot, seq, _, _ in db_rows(self.gateway.db)}
        except sqlite3.Error:
            return None
        seen = {}
        for nid, n in self.nodes.items():
            led = read_ledger(n.console.read_text(errors="replace"))
            dropped = led.dropped_keys()
            if any((nid, b, s) not in stored for (b, s) in led.records
                   if (b, s) not in dropped and (within is None or (b, s) in within[nid])):
                return None
            seen[nid] = set(led.records)
        return seen

    def settle(self, timeout: float = 60) -> None:
        """Wait until the gateway has stored what the nodes made (up to the cut-off, if the run
        stopped them after recovery), or `timeout`: the judge then names what is missing."""
        end = time.monotonic() + timeout
        while self._stored_all(self.cutoff) is None and time.monotonic() < end:
            time.sleep(0.2)  # waits on: the store to hold what the ledgers name

    def judge(self, name: str, extra: dict[str, tuple[Ledger, int]] | None = None,
              expected: tuple[str, ...] = ()) -> Outcome:
        """Every node's ledger against the store; `extra`: more ledgers (node id -> (ledger, start
        epoch)) to hold the store to, e.g. the valid records an attacker sent; `expected`: the
        exception lines (parts of them) of crashes the scenario causes on purpose (a broken
        release's), not counted."""
        consoles = {nid: n.console.read_text(errors="replace") for nid, n in self.nodes.items()}
        nodes = {nid: (read_ledger(text), self.epochs[nid]) for nid, text in consoles.items()}
        in_transit = 0
        if self.cutoff is not None:  # stopped after recovery: what came later was still on its way
            for nid, (led, _) in nodes.items():
                late = [k for k in led.records if k not in self.cutoff[nid]]
                in_transit += len(late)
                for k in late:
                    del led.records[k]
        nodes |= extra or {}
        out = judge(name, nodes, db_rows(self.gateway.db), self.reported_dropped())
        out.notes["in_transit_at_stop"] = in_transit
        # A firmware exception (it resets the node) is a bug even when nothing was lost: crash.py prints its
        # traceback, a crash at the start (main.py) and an error in the loop (node.py) alike.
        out.crashes = sum(crashes(text, expected) for text in consoles.values())
        return out

    def stored(self) -> int:
        """How many records the store holds (0 before it exists)."""
        try:
            return len(db_rows(self.gateway.db))
        except sqlite3.Error:
            return 0

    def counter(self, name: str) -> int:
        """One of the gateway's counters (store.py), from its database."""
        con = sqlite3.connect(f"file:{self.gateway.db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            return row[0] if row else 0
        finally:
            con.close()

    def reported_dropped(self) -> dict[str, int]:
        con = sqlite3.connect(f"file:{self.gateway.db}?mode=ro", uri=True)
        try:
            cols = [r[1] for r in con.execute("PRAGMA table_info(nodes)")]
            col = next((c for c in cols if "dropped" in c), None)
            if col is None:
                return {}
            return {n: d or 0 for n, d in con.execute(f"SELECT node, {col} FROM nodes")}
        finally:
            con.close()

    def close(self) -> None:
        for n in self.nodes.values():
            n.stop()
        if self.fleet:
            self.fleet.close()
        self.gateway.stop()
        self.broker.stop()


OLD = "0.1.9"   # the release fleet nodes run at first; firmware/ is a newer one (FW_VERSION)
OTA_HEAP = OFFER_HEAP   # a release offer's manifest needs it
APP = ("lib", "boot.py", "main.py", "appswap.py")   # the app on a node's flash (appswap.py)


class Fleet:
    """What a rollout needs of the rig: a release key, the node keys the gateway signs with,
    releases built with `meetkit release build`'s builder (for the simulator's MicroPython) from
    firmware/ or a broken copy of it, the operator's CLI (`meetkit-gateway release add`, `fleet
    update`, `fleet status`), the rollout as the gateway's store has it, and every piece each
    node asked for (a watcher on `<prefix>/+/ota/get`)."""

    def __init__(self, rig: Rig, workdir: Path, ota: dict[str, float]) -> None:
        from meetkit_tools import release

        self.rig = rig
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key, self.pub = release.keygen(self.dir / "release-key")
        self.node_keys = self.dir / "node-keys.json"
        self.keys: dict[str, str] = {}
        self.node_keys.write_text(json.dumps({"nodes": {}}))
        self.kept = self.dir / "kept"
        self.built: dict[str, Path] = {}   # version -> the release's folder
        self.ota = ota
        self.gets: dict[str, list[tuple[str, int, int]]] = {}   # node -> (release, file, off) asked
        self._old: Path | None = None
        self._lock = threading.Lock()
        self._watcher: Any = None

    def toml(self) -> str:
        ota = "".join(f"{k} = {v}\n" for k, v in self.ota.items())
        return (f'\n[fleet]\nnode_keys = "{self.node_keys}"\n\n'
                f'[ota]\nrelease_keys = ["{self.pub}"]\nreleases = "{self.kept}"\n{ota}')

    def add_node(self, node_id: str) -> bytes:
        """A new key for `node_id`, in the gateway's node-keys.json (it reads it again when it
        changes); the node.key file for its flash."""
        self.keys[node_id] = secrets.token_hex(32)
        tmp = self.node_keys.with_suffix(".tmp")
        tmp.write_text(json.dumps({"nodes": self.keys}))
        tmp.replace(self.node_keys)
        return self.keys[node_id].encode()

    def source(self, version: str, patch: dict[str, Callable[[str], str]] | None = None) -> Path:
        """firmware/ as release `version`, with `patch` (path -> a function of the source) applied."""
        from meetkit_tools.dev import fleetsim
        from meetkit_tools.paths import FIRMWARE

        out = self.dir / "src" / version
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(FIRMWARE, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        now = fleetsim.fw_version()
        patch = dict(patch or {})
        cfg = patch.get("lib/config.py")
        patch["lib/config.py"] = lambda s: (cfg(s) if cfg else s).replace(f'FW_VERSION = "{now}"',
                                                                             f'FW_VERSION = "{version}"')
        for rel, f in patch.items():
            p = out / rel
            text = f(p.read_text())
            if rel != "lib/config.py" and text == p.read_text():
                raise ValueError(f"the patch of {rel} changed nothing")
            p.write_text(text)
        return out

    def old_firmware(self) -> Path:
        """Release OLD as a technician's copy puts it on a board (lib/ as .mpy), made once."""
        from meetkit_tools.dev import fleetsim

        if self._old is None:
            self._old = fleetsim.mpy_firmware(self.dir / "firmware-old", firmware=self.source(OLD))
        return self._old

    def release(self, version: str, patch: dict[str, Callable[[str], str]] | None = None) -> dict[str, Any]:
        """Build and sign release `version` (firmware/, patched), keep it with `release add`; its manifest."""
        from meetkit_tools import release

        out = self.dir / "releases" / version
        manifest = release.build(self.key, out, firmware=self.source(version, patch), arch=release.SIM_ARCH)
        self.cli("release", "add", str(out))
        self.built[version] = out
        return manifest

    def files(self, version: str) -> dict[str, bytes]:
        """The files of a release built here, by path."""
        from meetkit_gateway.releases import FILES

        root = self.built[version] / FILES
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def old_files(self) -> dict[str, bytes]:
        root = self.old_firmware()
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.relative_to(root).parts[0] in APP}

    def app_of(self, node_id: str) -> str:
        """Which whole app the stopped node's flash holds: OLD, a release built here, or "mixed"
        (what differs), "bricked" (no main.py or boot.py)."""
        app = self.rig.nodes[node_id].flash_files(*APP)
        if "main.py" not in app or "boot.py" not in app:
            return "bricked"
        if app == self.old_files():
            return OLD
        for v in self.built:
            if app == self.files(v):
                return v
        want = self.files(max(self.built, key=_vkey)) if self.built else self.old_files()
        diff = sorted(p for p in set(app) | set(want) if app.get(p) != want.get(p))
        return "mixed: " + ", ".join(diff[:8])

    # -- the operator's CLI --------------------------------------------------------------------
    def cli(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("meetkit-gateway")
        r = subprocess.run([str(exe), *args, "--config", str(self.rig.gateway.conf)], capture_output=True,
                           text=True, timeout=timeout)
        if (r.returncode == 0) != ok:
            raise RuntimeError(f"meetkit-gateway {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def wait_running(self, nodes: list[str], fw: str, timeout: float = 120) -> None:
        """Until the gateway's store has each of `nodes` running `fw` (their status)."""
        wait_for(lambda: all((n := self.nodes().get(x)) is not None and n.fw == fw for x in nodes), timeout,
                 f"{nodes} running {fw}, as the gateway has it")

    def update(self, version: str, nodes: list[str], canary: int = 1, wave: int = 10) -> None:
        """`meetkit-gateway fleet update`, once the gateway has heard every node (it plans from them)."""
        wait_for(lambda: all(x in self.nodes() for x in nodes), 120, f"the gateway to know {nodes}")
        self.cli("fleet", "update", "--release", version, "--nodes", ",".join(nodes), "--canary", str(canary),
                 "--wave", str(wave))

    def status(self) -> str:
        return self.cli("fleet", "status").stdout

    # -- what the gateway's store says -----------------------------------------------------------
    def rollout(self) -> tuple[Any, list[Any]]:
        """The newest rollout and its nodes (RolloutRow, [RolloutNodeRow]); (None, []) before one."""
        from meetkit_gateway.store import Store

        with Store(self.rig.gateway.db, readonly=True) as s:
            rows = s.rollouts(limit=1)
            return (rows[0], s.rollout_nodes(rows[0].id)) if rows else (None, [])

    def wait_rollout(self, *states: str, timeout: float = 600, on_wait: Callable[[], None] | None = None) -> Any:
        """The newest rollout once it is in one of `states` (TimeoutError naming where it stood)."""
        end = time.monotonic() + timeout
        while True:
            r, nodes = self.rollout()
            if r is not None and r.state in states:
                return r
            if time.monotonic() > end:
                raise TimeoutError(f"the rollout is not {states}: {r}; {[(n.node, n.state) for n in nodes]}")
            if on_wait:
                on_wait()
            time.sleep(0.5)  # waits on: the rollout in the gateway's store

    def nodes(self) -> dict[str, Any]:
        """The gateway's view of each node (fw, mode from its status)."""
        from meetkit_gateway.store import Store

        with Store(self.rig.gateway.db, readonly=True) as s:
            return {n.node: n for n in s.nodes()}

    def events(self, kind: str, node: str | None = None) -> list[dict[str, Any]]:
        from meetkit_gateway.store import Store

        with Store(self.rig.gateway.db, readonly=True) as s:
            return [dict(e.body, node=e.node, at=e.at) for e in s.events(kind, node=node)]

    def alarms(self) -> list[Any]:
        from meetkit_gateway.store import Store

        with Store(self.rig.gateway.db, readonly=True) as s:
            return list(s.active_alarms())

    # -- the pieces asked -------------------------------------------------------------------------
    def watch(self) -> None:
        import paho.mqtt.client as mqtt

        ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"faults-ota-watch-{id(self)}")

        def on_message(client: Any, u: Any, m: Any) -> None:
            try:
                d = json.loads(m.payload)
                g = (str(d["release"]), int(d["file"]), int(d["off"]))
            except (ValueError, KeyError, TypeError):
                return
            with self._lock:
                self.gets.setdefault(m.topic.split("/")[-3], []).append(g)

        c.on_message = on_message
        c.on_connect = lambda client, *a: client.subscribe(f"meetkit/+/ota/get", qos=0)
        c.on_subscribe = lambda *a: ready.set()
        c.connect(self.rig.broker.host, self.rig.broker.port)
        c.loop_start()
        if not ready.wait(15):
            raise RuntimeError("the piece watcher did not subscribe")
        self._watcher = c

    def pieces_asked(self, node_id: str, version: str) -> tuple[int, int]:
        """(requests, distinct pieces) `node_id` asked of release `version`."""
        with self._lock:
            g = [x for x in self.gets.get(node_id, []) if x[0] == version]
        return len(g), len(set(g))

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.loop_stop()
            self._watcher.disconnect()
            self._watcher = None


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def wait_virtual(node_id: str, node: SimNode, t_s: float, timeout: float = 300) -> None:
    """Until `node`'s simulated time reaches `t_s`; TimeoutError after `timeout` s, RuntimeError when
    it stopped first."""
    end = time.monotonic() + timeout
    while virtual_s(node.console) < t_s:
        if time.monotonic() > end:
            raise TimeoutError(f"{node_id} did not reach {t_s} s of simulated time")
        if not node.running:
            raise RuntimeError(f"{node_id} stopped before {t_s} s")
        time.sleep(0.05)  # waits on: the node's console


def scenario(base: str = "quiet-street", **faults: list[tuple[float, float]]) -> dict[str, Any]:
    """A stock scenario with more faults, e.g. scenario(wifi_down=[(3600, 25200)])."""
    sc = json.loads(json.dumps(load_scenario(base)))
    sc["faults"] = list(sc.get("faults") or [])
    for kind, windows in faults.items():
        sc["faults"] += [{"kind": kind, "from": a, "to": b} for a, b in windows]
    return sc
