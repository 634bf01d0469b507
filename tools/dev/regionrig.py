"""The regional rig and its ledger judge (issue 16): the region-sized sibling of faultrig.py, for
tests/region/test_region_faults.py and the region's benchmarks.

A region on loopback: N gateways (default three in two towns, REGION), each with its own
Mosquitto made by the real `meetkit broker init` code (services.FleetBroker, one lab CA for the
region) and the neighbours' nodes' accounts added by `meetkit region accounts` (tools/region.py,
from a plan the rig writes), its own `meetkit-gateway run` with [region] and two [[forward]]
targets: the ONE regional VictoriaMetrics (Debian's, `-dedup.minScrapeInterval=1ms`) and the ONE
central Mosquitto (the files of `meetkit region central`, the gateway's own `gw-<gateway>`
account). Each gateway reaches the region through two TcpProxy's of its own, so that one gateway
alone can be cut off from the region. Simulated nodes run the firmware (AIR boards: hours in
seconds) with their broker LIST in config.json: the home gateway's broker first, then the plan's
neighbours' (each the broker's loopback listener, the node's own account and password).

The ground truth is each node's ledger (faultrig.read_ledger: what it printed as it stored each
record on its flash). The judge holds every ledger record against the region's store, read from
VictoriaMetrics's /api/v1/export: a record is in the region when every quantity it has a value
for has a sample of that node and quantity at the record's timestamp (ms), in any town's series.
It is duplicated when a quantity has more than one sample there: twice in one series (what
VictoriaMetrics's deduplication should merge), or in two series (two towns: what deduplication
cannot merge). Records the spool dropped for space, as the node logged, are "dropped by policy".
What the gateways sent beyond what the store holds is "resent" (their `forward.vm-region.sent`
counters, in readings, against the readings of the nodes the store holds): with deduplication on,
a resend costs traffic, not a duplicate.

Faults: a gateway destroyed (killed, its Mosquitto too, its database deleted for good), its own
Mosquitto stopped and started while the gateway runs, a gateway cut off from the region and back,
the regional VictoriaMetrics restarted, a node moved to another gateway (its config.json's broker
list rewritten on its flash while it is off, then powered on: not re-provisioned, so it keeps its
spool, boot counter and account).

The waits have deadlines and raise TimeoutError; the rig judges, the tests assert on the Outcome
(faultrig.Outcome, appended to faultrig.RESULTS: the table `make faults` and `make test` print).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from meetkit_tools import region
from meetkit_tools.dev.faultrig import (AIR, RESULTS, TAIL_S, TS_TOLERANCE_S, Ledger, Outcome, crashes, read_ledger,
                                        virtual_s, wait_virtual)
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.tcpproxy import TcpProxy
from meetkit_tools.services import (FleetBroker, GatewayProcess, VictoriaMetrics, free_port, hold_port,
                                    kill_process, mosquitto_bin, stop_process, wait_listening)
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario, scenario_epoch

__all__ = ["AIR", "REGION", "Region", "RegionGateway", "Central", "judge_region", "region_samples"]

PREFIX = "meetkit"
VM_TARGET = "vm-region"
#: gateway -> (town, neighbours in order): two towns, ut-1's nodes fail over to ut-2, then zs-1
REGION: dict[str, tuple[str, tuple[str, ...]]] = {
    "ut-1": ("utrecht", ("ut-2", "zs-1")),
    "ut-2": ("utrecht", ("ut-1",)),
    "zs-1": ("zeist", ("ut-1",)),
}
_NOT_QUANTITIES = {"seq", "ts", "up", "dur", "f", "err"}


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


class Central:
    """The central Mosquitto running what `meetkit region central` writes for the plan (plain MQTT
    on a loopback port: the plan's `central` is mqtt://), and a `reader` that keeps every record
    message it gets, to count (node, boot, seq) across gateways."""

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir)
        # held from here to start(): the plan and the gateways need the port long before the
        # broker binds it, and a port merely picked was once taken by another test worker meanwhile
        self._hold: socket.socket | None = hold_port()
        self.port: int = self._hold.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.got: dict[tuple[str, int, int], int] = {}
        self.topics: set[str] = set()
        self._lock = threading.Lock()
        self._reader: Any = None
        self.res: region.Central | None = None

    def write(self, plan: region.Plan) -> None:
        opts = region.CentralOptions(port=self.port, bind="127.0.0.1", persistence_location=f"{self.dir}/",
                                     pid_file=None, log_dest=f"file {self.dir / 'central.log'}", user=_me())
        self.res = region.central(plan, self.dir, opts)

    def password_file(self, gateway: str) -> Path:
        return self.dir / f"{region.CENTRAL_GATEWAY.format(gateway=gateway)}.password"

    def start(self) -> "Central":
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        with (self.dir / "central.out").open("ab") as log:
            self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(self.dir / "mosquitto" / "mosquitto.conf")],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_listening("127.0.0.1", self.port, self.proc, "the central mosquitto")
        self._read()
        return self

    def _read(self) -> None:
        import paho.mqtt.client as mqtt

        pw = json.loads((self.dir / region.CENTRAL_SECRETS).read_text())["accounts"][region.CENTRAL_READER]
        ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=region.CENTRAL_READER)
        c.username_pw_set(region.CENTRAL_READER, pw)

        def on_message(client: Any, u: Any, m: Any) -> None:
            try:
                d = json.loads(m.payload)
                key = (str(d["node"]), int(d["boot"]), int(d["seq"]))
            except (ValueError, KeyError, TypeError):
                return
            with self._lock:
                self.got[key] = self.got.get(key, 0) + 1
                self.topics.add(m.topic.rsplit("/", 2)[0])

        refused: list[Any] = []

        def on_connect(client: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
            if rc.is_failure:
                refused.append(rc)
                ready.set()
            else:
                client.subscribe(f"{PREFIX}/#", qos=1)

        c.on_message = on_message
        c.on_connect = on_connect
        c.on_subscribe = lambda *a: ready.set()
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        ok = ready.wait(15) and not refused
        if not ok:
            c.loop_stop()
            log = self.dir / "central.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            alive = self.proc is not None and self.proc.poll() is None
            raise RuntimeError(f"the central reader did not subscribe (refused: {refused}, "
                               f"our mosquitto running: {alive}); central.log ends:\n{tail}")
        self._reader = c

    def stop(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        if self._reader is not None:
            self._reader.loop_stop()
            self._reader.disconnect()
            self._reader = None
        stop_process(self.proc)
        self.proc = None


class RegionGateway:
    """One gateway of the region: its `meetkit broker init` folder and Mosquitto, its process, and
    its two proxies to the region (VictoriaMetrics, central)."""

    def __init__(self, rig: "Region", name: str, town: str, neighbours: tuple[str, ...], nodes: list[str],
                 ca_from: Path | None) -> None:
        self.rig = rig
        self.name, self.town, self.neighbours = name, town, neighbours
        self.dir = rig.dir / name
        self.broker = FleetBroker(self.dir, nodes, prefix=PREFIX, ca_from=ca_from).init()
        self.vm_proxy = TcpProxy((rig.vm.host, rig.vm.port)).start()
        self.central_proxy = TcpProxy(("127.0.0.1", rig.central.port)).start()
        self.process: GatewayProcess | None = None
        self.destroyed = False
        self.sent_before_destroyed = 0

    def toml(self) -> str:
        """[region] and the two targets: the central one as `meetkit region central` prints it, its
        URL the proxy's and its password file where the rig keeps it."""
        central = []
        for line in region.central_forward_toml(self.rig.plan, self.name, self.rig.central.dir).splitlines():
            if line.startswith("url = "):
                line = f'url = "mqtt://127.0.0.1:{self.central_proxy.port}"'
            elif line.startswith("password_file = "):
                line = f'password_file = "{self.rig.central.password_file(self.name)}"'
            central.append(line)
        # its visitors' home towns: its broker folder's secrets.json, as `meetkit region accounts` left it
        return (f'\n[region]\ntown = "{self.town}"\ngateway = "{self.name}"\nsafe_targets = ["{VM_TARGET}"]\n'
                f'visitors = "{self.broker.out / "secrets.json"}"\n\n'
                f'[[forward]]\nname = "{VM_TARGET}"\ntype = "influx"\nurl = "{self.vm_proxy.url}"\ndb = "meetkit"\n\n'
                + "\n".join(central) + "\n")

    def start(self) -> "RegionGateway":
        self.broker.start()
        self.process = GatewayProcess(self.dir / "gateway", self.broker.host, self.broker.plain_port,
                                      client_id=f"meetkit-gateway-{self.name}", mqtt_toml=self.broker.gateway_toml(),
                                      extra_toml=self.toml(), store_toml=self.rig.store_toml).start()
        # Until its first subscription the broker keeps nothing for it: a node's first batch would
        # be lost to the rig, not to a fault.
        self.process.wait_log("subscribed to ", timeout=30)
        return self

    @property
    def db(self) -> Path:
        return self.dir / "gateway" / "gateway.db"

    def entry(self, node: str, password: str) -> dict[str, Any]:
        """config.json's broker entry for `node` on this gateway's broker (its loopback listener:
        the same accounts and ACL as the TLS one)."""
        return {"host": self.broker.host, "port": self.broker.plain_port, "user": node, "password": password,
                "tls": False}

    # -- faults ----------------------------------------------------------------------------------
    def cut_off(self) -> None:
        """The region (VictoriaMetrics and central) unreachable from this gateway alone."""
        self.vm_proxy.cut()
        self.central_proxy.cut()

    def rejoin(self) -> None:
        self.vm_proxy.mend()
        self.central_proxy.mend()

    def broker_down(self) -> None:
        """Its own Mosquitto stopped (SIGTERM: it saves its persistence), the gateway left running."""
        self.broker.stop()

    def broker_up(self) -> None:
        self.broker.start()

    def destroy(self) -> None:
        """The Pi gone for good: the gateway and its Mosquitto killed, its database deleted (what it
        sent to the region is read first, for the resend count)."""
        if self.process is not None:
            self.process.kill()
        kill_process(self.broker.proc)
        self.broker.proc = None
        self.sent_before_destroyed = self.sent()
        for p in self.db.parent.glob("gateway.db*"):
            p.unlink()
        self.destroyed = True

    # -- what it says ----------------------------------------------------------------------------
    def counter(self, name: str) -> int:
        try:
            con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0
        try:
            row = con.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            return row[0] if row else 0
        except sqlite3.Error:
            return 0
        finally:
            con.close()

    def sent(self) -> int:
        """Readings it sent to the regional VictoriaMetrics (its forwarder's counter)."""
        if self.destroyed:
            return self.sent_before_destroyed
        return self.counter(f"forward.{VM_TARGET}.sent")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.broker.stop()
        self.vm_proxy.cut()
        self.central_proxy.cut()


@dataclass
class Sample:
    town: str
    avg: float


def region_samples(vm: VictoriaMetrics, nodes: list[str]) -> dict[str, dict[tuple[str, int], list[Sample]]]:
    """node -> (quantity, timestamp ms) -> every sample of `meetkit_avg` there, over every town's
    series (a sample twice in one series too, if the store kept it)."""
    out: dict[str, dict[tuple[str, int], list[Sample]]] = {n: {} for n in nodes}
    if not nodes:
        return out
    match = '{__name__="meetkit_avg",node=~"%s"}' % "|".join(nodes)
    for s in vm.export(match):
        m = s["metric"]
        idx = out.setdefault(m.get("node", ""), {})
        for ts, v in zip(s["timestamps"], s["values"]):
            idx.setdefault((m.get("quantity", ""), int(ts)), []).append(Sample(m.get("town", ""), float(v)))
    return out


def _values(rec: dict[str, Any]) -> dict[str, float]:
    """The record's quantities with a value: the average (first of [avg, min, max, n])."""
    out = {}
    for k, v in rec.items():
        if k in _NOT_QUANTITIES:
            continue
        avg = v[0] if isinstance(v, list) and v else v
        if isinstance(avg, (int, float)) and not isinstance(avg, bool):
            out[k] = float(avg)
    return out


def _find(idx: dict[tuple[str, int], list[Sample]], q: str, ts_ms: int | None, near_ms: float | None,
          by_q: dict[str, list[int]]) -> tuple[int | None, list[Sample]]:
    if ts_ms is not None:
        return ts_ms, idx.get((q, ts_ms), [])
    assert near_ms is not None
    best = min(by_q.get(q, []), key=lambda t: abs(t - near_ms), default=None)
    if best is None or abs(best - near_ms) > TS_TOLERANCE_S * 1000:
        return None, []
    return best, idx[(q, best)]


def judge_region(name: str, nodes: dict[str, tuple[Ledger, int]],
                 samples: dict[str, dict[tuple[str, int], list[Sample]]], sent_readings: int | None = None,
                 towns: dict[str, set[str]] | None = None, table: bool = True) -> Outcome:
    """nodes: node id -> (ledger, the scenario's start epoch). Every ledger record against the
    region's store. `sent_readings`: what the gateways sent it (resent = that minus what it holds of
    these nodes). `towns`: node -> the towns its records may carry (a record under another is a
    problem). `table`: a row of the fault table (faultrig.RESULTS)."""
    out = Outcome(name)
    cross_town = value_off = 0
    for node_id, (led, epoch) in nodes.items():
        idx = samples.get(node_id, {})
        by_q: dict[str, list[int]] = {}
        for q, t in idx:
            by_q.setdefault(q, []).append(t)
        dropped = led.dropped_keys()
        for (boot, seq), rec in led.records.items():
            out.generated += 1
            vals = _values(rec)
            if rec.get("ts") is not None:
                ts_ms, near = int(rec["ts"]) * 1000, None
            else:
                ts_ms, near = None, (epoch + led.boot_t0.get(boot, 0.0) + rec["up"]) * 1000
            found = {q: _find(idx, q, ts_ms, near, by_q) for q in vals}
            have = {q: s for q, (t, s) in found.items() if s}
            if not vals or not have:
                if not vals:
                    out.notes["no_values"] = out.notes.get("no_values", 0) + 1
                if (boot, seq) in dropped:
                    out.dropped += 1
                elif vals:
                    out.lost += 1
                    if len(out.problems) < 10:
                        out.problems.append(f"lost {node_id} boot {boot} seq {seq} (ts {rec.get('ts')})")
                continue
            if len(have) < len(vals):
                out.lost += 1
                if len(out.problems) < 10:
                    out.problems.append(f"partly lost {node_id} boot {boot} seq {seq}: "
                                        f"{sorted(set(vals) - set(have))} missing")
                continue
            out.delivered += 1
            if ts_ms is None:
                out.untimed += 1
            copies = max(len(s) for s in have.values())
            out.duplicated += copies - 1
            rec_towns = {x.town for s in have.values() for x in s}
            if len(rec_towns) > 1:
                cross_town += 1
                if len(out.problems) < 10:
                    out.problems.append(f"{node_id} boot {boot} seq {seq} in the series of {sorted(rec_towns)}")
            if towns is not None and not rec_towns <= towns.get(node_id, set()):
                out.notes["wrong_town"] = out.notes.get("wrong_town", 0) + 1
                if len(out.problems) < 10:
                    out.problems.append(f"{node_id} boot {boot} seq {seq} under town {sorted(rec_towns)}, not "
                                        f"{sorted(towns.get(node_id, set()))}")
            if any(abs(x.avg - vals[q]) > 1e-6 * max(1.0, abs(vals[q])) for q, s in have.items() for x in s):
                value_off += 1
                if len(out.problems) < 10:
                    out.problems.append(f"value {node_id} boot {boot} seq {seq}: {have} != {vals}")
    held = sum(len(s) for n in nodes for s in samples.get(n, {}).values())
    out.notes["region_readings"] = held
    out.notes["in_two_towns"] = cross_town
    if value_off:
        out.notes["wrong_values"] = value_off
    if sent_readings is not None:
        out.notes["sent_readings"] = sent_readings
        out.notes["resent_readings"] = sent_readings - held
    if table:
        RESULTS.append(out)
    return out


class Region:
    """The region's engines, its gateways and its nodes, in one folder.

    `nodes`: gateway -> the ids of its nodes (their accounts are made with its broker folder).
    `gateways`: name -> (town, neighbours), default REGION."""

    def __init__(self, workdir: Path, nodes: dict[str, list[str]],
                 gateways: dict[str, tuple[str, tuple[str, ...]]] | None = None, store_toml: str = "") -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._mpy: Path | None = None   # the nodes' firmware as .mpy, made at the first node
        self.spec = dict(gateways or REGION)
        self.store_toml = store_toml
        self.vm = VictoriaMetrics(self.dir / "vm")
        self.central = Central(self.dir / "central")
        self.gateways: dict[str, RegionGateway] = {}
        self.nodes: dict[str, SimNode] = {}
        self.epochs: dict[str, int] = {}
        self.home: dict[str, str] = {}   # node -> the gateway first in its broker list
        self.account: dict[str, str] = {}  # node -> the gateway its account was made at: its home in the plan
        self.cutoff: dict[str, set[tuple[int, int]]] | None = None
        try:
            self.vm.start()
            ca: Path | None = None
            for name, (town, neighbours) in self.spec.items():
                g = RegionGateway(self, name, town, tuple(neighbours), list(nodes.get(name, [])), ca)
                ca = ca or g.broker.out
                self.gateways[name] = g
            self.plan = self.write_plan()
            self.accounts = region.accounts(self.plan)   # `meetkit region accounts --plan`
            self.central.write(self.plan)                # `meetkit region central --plan --out`
            self.central.start()
            for g in self.gateways.values():
                g.start()
        except BaseException:
            self.close()
            raise

    def write_plan(self) -> region.Plan:
        """region.toml as the operator writes it (the gateways' TLS listeners as their `port`)."""
        lines = ["[region]", 'name = "rig-region"', f'topic_prefix = "{PREFIX}"',
                 f'central = "mqtt://127.0.0.1:{self.central.port}"', f'store = "{self.vm.url}"', ""]
        for i, g in enumerate(self.gateways.values()):
            lines += [f'[gateways."{g.name}"]', f'town = "{g.town}"', 'host = "127.0.0.1"',
                      f"port = {g.broker.tls_port}", f"http = {18080 + i}",
                      "neighbours = [" + ", ".join(f'"{n}"' for n in g.neighbours) + "]",
                      f'broker = "{g.broker.out.relative_to(self.dir)}"', ""]
        path = self.dir / "region.toml"
        path.write_text("\n".join(lines))
        return region.load_plan(path)

    # -- nodes -----------------------------------------------------------------------------------
    def password(self, node_id: str, gateway: str) -> str:
        return self.gateways[gateway].broker.password(node_id)

    def broker_list(self, node_id: str, home: str, password: str) -> list[dict[str, Any]]:
        """The node's `broker` list: `home`'s broker first, then its neighbours', in the plan's order."""
        return [self.gateways[g].entry(node_id, password) for g in (home, *self.gateways[home].neighbours)]

    def node(self, node_id: str, gateway: str, scenario: str | dict[str, Any] = "quiet-street",
             **spec: Any) -> SimNode:
        """A node of `gateway` (its account made there); it runs TAIL_S past `until_s`."""
        sc = load_scenario(scenario) if isinstance(scenario, str) else scenario
        if spec.get("until_s") is not None:
            spec["until_s"] += TAIL_S
        spec.setdefault("board", AIR)
        # as `meetkit provision` puts it on a board: lib/ as .mpy (compiling the failover module in
        # a running node's heap, as from source, needs room a board never has to find)
        if "firmware" not in spec:
            if self._mpy is None:
                self._mpy = fleetsim.mpy_firmware(self.dir / "firmware")
            spec["firmware"] = self._mpy
        brokers = self.broker_list(node_id, gateway, self.password(node_id, gateway))
        extra = dict(spec.pop("extra_config", {}), broker=brokers)
        g = self.gateways[gateway]
        n = SimNode(NodeSpec(node_id=node_id, scenario=sc, workdir=self.dir / "nodes" / node_id,
                             broker_host=g.broker.host, broker_port=g.broker.plain_port, extra_config=extra, **spec))
        n.prepare()
        self.nodes[node_id] = n
        self.epochs[node_id] = scenario_epoch(sc)
        self.home[node_id] = gateway
        self.account[node_id] = gateway
        return n

    def move(self, node_id: str, to: str) -> None:
        """The node taken to a gateway of another town: powered off, its config.json's broker list
        rewritten on its flash (`to` first, then `to`'s neighbours; the same account and password:
        the new home takes it as a neighbour's node), powered on again (spool, boot counter and
        account kept: not re-provisioned)."""
        n = self.nodes[node_id]
        n.power_off()
        cfg = json.loads(n.read_flash("config.json") or b"{}")
        cfg["broker"] = self.broker_list(node_id, to, cfg["broker"][0]["password"])
        n.write_flash("config.json", json.dumps(cfg).encode())
        self.home[node_id] = to
        n.power_on()

    def virtual_s(self, node_id: str) -> float:
        return virtual_s(self.nodes[node_id].console)

    def wait_virtual(self, node_id: str, t_s: float, timeout: float = 300) -> None:
        wait_virtual(node_id, self.nodes[node_id], t_s, timeout)

    def start(self) -> None:
        for n in self.nodes.values():
            n.start()

    # -- recovery and the judge ------------------------------------------------------------------
    def run(self, faults: Callable[[], None], timeout: float = 600) -> bool:
        """Start the nodes, call `faults`, then wait until the region's store holds every record the
        nodes made (but what they dropped), stop the nodes. True when it did within `timeout`; the
        judge names what is missing otherwise."""
        self.start()
        end = time.monotonic() + timeout
        faults()
        # What the nodes made up to the faults' end must reach the store; what they make after is
        # in transit when they are stopped (the nodes run on at full speed meanwhile).
        self.cutoff = {nid: set(led.records) for nid, led in self.ledgers().items()}
        caught = False
        while time.monotonic() < end:
            if self.caught_up():
                caught = True
                break
            time.sleep(0.5)  # waits on: every record the nodes made to be in the region's store
        for n in self.nodes.values():
            n.stop()
        return caught

    def ledgers(self) -> dict[str, Ledger]:
        return {nid: read_ledger(n.console_text()) for nid, n in self.nodes.items()}

    def caught_up(self) -> bool:
        try:
            samples = region_samples(self.vm, list(self.nodes))
        except OSError:
            return False  # the store is away
        for nid, led in self.ledgers().items():
            idx = samples[nid]
            dropped = led.dropped_keys()
            for key, rec in led.records.items():
                if key in dropped or (self.cutoff is not None and key not in self.cutoff[nid]):
                    continue
                vals = _values(rec)
                if vals and rec.get("ts") is not None and not all((q, rec["ts"] * 1000) in idx for q in vals):
                    return False
        return True

    def sent(self) -> int:
        return sum(g.sent() for g in self.gateways.values())

    def judge(self, name: str, central_timeout: float = 60) -> Outcome:
        """Every node's ledger (up to the cut-off, when the run caught up) against the region's
        store; and the central feed's copies of them (notes central_missing, central_copies)."""
        consoles = {nid: n.console_text() for nid, n in self.nodes.items()}
        nodes = {nid: (read_ledger(text), self.epochs[nid]) for nid, text in consoles.items()}
        in_transit = 0
        if self.cutoff is not None:
            for nid, (led, _) in nodes.items():
                late = [k for k in led.records if k not in self.cutoff[nid]]
                in_transit += len(late)
                for k in late:
                    del led.records[k]
        # The nodes are stopped, but the gateways may still forward their last batches: read the
        # store between two equal readings of what the gateways sent, so the two agree.
        end = time.monotonic() + 30
        while True:
            before = self.sent()
            samples = region_samples(self.vm, list(self.nodes))
            sent = self.sent()
            if sent == before or time.monotonic() > end:
                break
            time.sleep(0.5)  # waits on: the gateways' forwarders to go idle
        # a node's records carry its home town in the plan, whatever gateway forwarded them (a moved
        # node's plan is not changed by the move: `accounts` made it a visitor of its new gateway)
        towns = {nid: {self.gateways[g].town} for nid, g in self.account.items()}
        out = judge_region(f"region: {name}", nodes, samples, sent, towns=towns)
        out.notes["in_transit_at_stop"] = in_transit
        # The central feed, for the records judged: its forwarder may still be backing off (up to
        # 30 s after the region came back) when the store already holds everything.
        judged = [(nid, b, s) for nid, (led, _) in nodes.items() for (b, s) in led.records]
        end = time.monotonic() + central_timeout
        while True:
            with self.central._lock:
                got = dict(self.central.got)
            if all(k in got for k in judged) or time.monotonic() > end:
                break
            time.sleep(0.2)  # waits on: the central reader to have every record judged
        out.notes["central_missing"] = sum(1 for k in judged if k not in got)
        out.notes["central_copies"] = sum(got[k] - 1 for k in judged if k in got)
        out.crashes = sum(crashes(text) for text in consoles.values())
        return out

    def close(self) -> None:
        for n in self.nodes.values():
            n.stop()
        for g in self.gateways.values():
            g.stop()
        self.central.stop()
        self.vm.stop()
