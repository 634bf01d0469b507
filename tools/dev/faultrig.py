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
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario, scenario_epoch

AIR = "esp32-devkitc-air"   # the nodes' board: no microphone, so an hour simulates in seconds
H = 3600
TS_TOLERANCE_S = 2.5   # the grid snapping of _align (< 2 s) plus rounding
TAIL_S = 30
RESULTS: list["Outcome"] = []   # for the table `make faults` prints

_BOOT = re.compile(r" I node (\S+), boot (\d+),")
_RECORD = re.compile(r" I record (\d+): (\{.*\})$")
_DROPPED = re.compile(r" W spool: full, dropped (\d+) unacknowledged records of boot (\d+): seq (\d+)\.\.(\d+)")
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


class Rig:
    """A real Mosquitto, the gateway as its own process, and simulated nodes, in one folder."""

    def __init__(self, workdir: Path, gateway_dir: Path | None = None, store_toml: str = "") -> None:
        self.dir = Path(workdir)
        self.broker = Mosquitto(self.dir / "broker").start()
        self.gateway = GatewayProcess(gateway_dir or self.dir / "gateway", self.broker.host, self.broker.port,
                                      client_id="meetkit-gateway-faults", store_toml=store_toml).start()
        self._wait_subscribed()
        self.nodes: dict[str, SimNode] = {}
        self.epochs: dict[str, int] = {}
        self.cutoff: dict[str, set[tuple[int, int]]] | None = None

    def _wait_subscribed(self, timeout: float = 30) -> None:
        # Until the gateway's first subscription, the broker keeps nothing for it: a node that
        # published earlier would lose its first batch to the rig, not to a fault.
        end = time.monotonic() + timeout
        while "subscribed to" not in (self.gateway.log.read_text() if self.gateway.log.exists() else ""):
            if time.monotonic() > end:
                raise TimeoutError("the gateway did not subscribe")
            time.sleep(0.05)  # waits on: the gateway's log

    def node(self, node_id: str, scenario: str | dict[str, Any] = "quiet-street", **spec: Any) -> SimNode:
        """A node; it runs TAIL_S past `until_s`, so the record it closes last has time to go."""
        sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
        if spec.get("until_s") is not None:
            spec["until_s"] += TAIL_S
        n = SimNode(NodeSpec(node_id=node_id, scenario=sc, workdir=self.dir / node_id,
                             broker_host=self.broker.host, broker_port=self.broker.port, **spec))
        n.prepare()
        self.nodes[node_id] = n
        self.epochs[node_id] = scenario_epoch(sc)
        return n

    def virtual_s(self, node_id: str) -> float:
        """How far a node's simulated time has got: its console's last uptime, after its last reset."""
        t0 = 0.0
        up = 0.0
        try:
            text = self.nodes[node_id].console.read_text(errors="replace")
        except FileNotFoundError:
            return 0.0
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

    def wait_virtual(self, node_id: str, t_s: float, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while self.virtual_s(node_id) < t_s:
            if time.monotonic() > end:
                raise TimeoutError(f"{node_id} did not reach {t_s} s of simulated time")
            if not self.nodes[node_id].running:
                raise RuntimeError(f"{node_id} stopped before {t_s} s")
            time.sleep(0.05)  # waits on: the node's console

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

    def judge(self, name: str, extra: dict[str, tuple[Ledger, int]] | None = None) -> Outcome:
        """Every node's ledger against the store; `extra`: more ledgers (node id -> (ledger, start
        epoch)) to hold the store to, e.g. the valid records an attacker sent."""
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
        # A firmware exception (it resets the node) is a bug even when nothing was lost.
        out.crashes = sum(text.count(" E unexpected error") for text in consoles.values())
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
        self.gateway.stop()
        self.broker.stop()


def scenario(base: str = "quiet-street", **faults: list[tuple[float, float]]) -> dict[str, Any]:
    """A stock scenario with more faults, e.g. scenario(wifi_down=[(3600, 25200)])."""
    sc = json.loads(json.dumps(load_scenario(base)))
    sc["faults"] = list(sc.get("faults") or [])
    for kind, windows in faults.items():
        sc["faults"] += [{"kind": kind, "from": a, "to": b} for a, b in windows]
    return sc


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> None:
    """Until `cond()` is true; TimeoutError naming `what` after `timeout` s."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(step)  # waits on: cond
