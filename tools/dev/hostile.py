"""The hostile-input scenarios (issue 13) as drivers: real nodes deliver beside an attacker on a
Rig (meetkit_tools.dev.faultrig); once everything has recovered, every record is judged by the
ledgers (Rig.judge): every record of every real node stored once, none lost; the attacker's valid
records, where it sends any, too.

A driver takes a fresh Rig, runs its scenario and returns a `Run`: the ledger's `Outcome` and
what it saw on the way (`seen`). It waits for what the scenario needs next with deadlines and
asserts nothing: tests/faults/test_hostile_*.py assert on the Run (and on the rig, still open),
bench/hostile.py runs every scenario in SCENARIOS and records `hostile_valid_records_lost`
(`record_lost`).
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from meetkit_gateway.store import Store
from meetkit_tools.dev.faultrig import AIR, H, Ledger, Outcome, Rig, db_rows
from meetkit_tools.dev.page_client import PageClient
from meetkit_tools.dev.results import record

EPOCH = 1795510800  # the attacker's records start here (2026-11-23)
MiB = 1024 * 1024


@dataclass
class Run:
    outcome: Outcome
    seen: dict[str, Any] = field(default_factory=dict)


class Attacker:
    """A paho client publishing what no node should, each publish waiting for the broker's PUBACK."""

    def __init__(self, rig: Rig) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(50)
        self.client.connect(rig.broker.host, rig.broker.port)
        self.client.loop_start()

    def publish(self, topic: str, body: bytes) -> None:
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(30)
        if not info.is_published():
            raise RuntimeError(f"the broker did not take {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def counter(rig: Rig, name: str) -> int:
    """A gateway counter; 0 while the store does not exist yet."""
    try:
        return rig.counter(name)
    except sqlite3.Error:
        return 0


def within(cond: Callable[[], bool], timeout: float) -> bool:
    """Whether `cond` came true within `timeout` s (the caller decides what failing means)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)  # waits on: cond
    return True


def record_of(seq: int, **change: Any) -> dict[str, Any]:
    """A valid record of the attacker's (PM and temperature), with `change` applied."""
    r = {"seq": seq, "ts": EPOCH + 60 * seq, "up": 60 * seq, "dur": 60,
         "pm25": [5.0 + seq % 7, 4.0, 9.0 + seq % 7, 58], "temp": [12.5, 12.0, 13.0, 12]}
    r.update(change)
    return r


def envelope(node: str, boot: int, recs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"v": 1, "node": node, "boot": boot, "fw": "0.2.0", "board": "esp32-devkitc",
                       "sensors": {"pm": "pms5003", "climate": "bme280"},
                       "units": {"pm25": "ug/m3", "temp": "degC"}, "recs": recs}, separators=(",", ":")).encode()


def active_alarms(rig: Rig) -> list[str]:
    try:
        con = sqlite3.connect(f"file:{rig.gateway.db}?mode=ro", uri=True)
        try:
            return [r[0] for r in con.execute(
                "SELECT code FROM alarms AS a WHERE id = (SELECT max(id) FROM alarms WHERE code = a.code) AND active")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _query(rig: Rig, sql: str) -> tuple[Any, ...]:
    con = sqlite3.connect(f"file:{rig.gateway.db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchone()
    finally:
        con.close()


# 1 -----------------------------------------------------------------------------------------------
OVERSIZED_STORE_TOML = 'max_bytes = "1 MB"\ndead_letters_node_max_bytes = "1 MB"\n'
OVERSIZED_FLOOD = 400


def oversized_flood(rig: Rig) -> Run:
    """400 messages of 70 KB (28 MB) from one node id, under the smallest store bound (1 MB, which
    the garbage alone would fill twice over; the rig made with OVERSIZED_STORE_TOML): the broker
    here has no size limit (the generated one refuses them: tests/broker), so the gateway meets
    them all. Dead letters have budgets of their own, so no record is pruned for them."""
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H, seed=2)
    seen: dict[str, Any] = {}

    def attack() -> None:
        rig.wait_virtual("air-01", 1 * H)  # the nodes have stored an hour of records
        seen["records_before"] = len(db_rows(rig.gateway.db))
        a = Attacker(rig)
        try:
            for k in range(OVERSIZED_FLOOD):
                a.publish("meetkit/spew-01/up", bytes([65 + k % 26]) * 70_000)
        finally:
            a.close()
        seen["dead_lettered"] = within(lambda: counter(rig, "rejected.oversized") >= OVERSIZED_FLOOD, 120)
        seen["alarm"] = within(lambda: "dead_letter_flood" in active_alarms(rig), 30)
        # the writer holds the node's budget a step (about a second) after the dead letters it stored
        within(lambda: _query(rig, "SELECT coalesce(sum(size), 0) FROM dead_letters WHERE node = 'spew-01'")[0]
               <= 1_000_000, 30)
        seen["records_after"] = len(db_rows(rig.gateway.db))  # not one pruned for the garbage

    rig.run(attack)
    rig.settle()
    out = rig.judge("hostile: oversized flood, 1 MB bound")
    seen["dead_letters_kept"], seen["dead_letters_bytes"] = _query(
        rig, "SELECT count(*), sum(size) FROM dead_letters WHERE node = 'spew-01'")
    out.notes["flood"] = {"messages": OVERSIZED_FLOOD, "bytes_each": 70_000,
                          "dead_letters_kept": seen["dead_letters_kept"]}
    return Run(out, seen)


# 2 -----------------------------------------------------------------------------------------------
POISONED_BATCHES = 20


def poisoned_batches(rig: Rig) -> Run:
    """A node whose every 12-record batch has one broken record (a PM value a sensor cannot send)
    and one impossible one: the 10 others of each batch are stored and acknowledged (the attacker's
    valid records are judged too); real nodes beside it lose nothing."""
    rig.node("air-01", "busy-road", board=AIR, until_s=24 * H)
    poison = Ledger()
    seen: dict[str, Any] = {}

    def attack() -> None:
        rig.wait_virtual("air-01", 0.5 * H)
        a = Attacker(rig)
        try:
            for b in range(POISONED_BATCHES):
                recs = [record_of(12 * b + i) for i in range(12)]
                recs[6]["pm25"] = [-5.0, -9.0, 1.0, 58]  # cannot be: refused, its record kept
                recs[9] = record_of(12 * b + 9, ts=10**13)  # cannot be: the record refused
                for r in recs:
                    if r["seq"] % 12 != 9:
                        poison.records[(1, r["seq"])] = r
                a.publish("meetkit/poison-01/up", envelope("poison-01", 1, recs))
        finally:
            a.close()
        seen["batches_taken"] = within(lambda: counter(rig, "refused_records.implausible") >= POISONED_BATCHES, 60)

    rig.run(attack)
    rig.settle()
    return Run(rig.judge("hostile: a poisoned record per batch", {"poison-01": (poison, EPOCH)}), seen)


# 3 -----------------------------------------------------------------------------------------------
IMPLAUSIBLE = [dict(ts=0), dict(ts=4102444800), dict(ts=2**62), dict(ts=10**13), dict(dur=10**9),
               dict(seq=2**63 - 1), dict(up=2**40)]


def implausible_times(rig: Rig) -> Run:
    """Implausible times, durations and counters beside valid records, each in a batch of three
    (and a boot no node has): each refused alone, the valid ones beside it stored."""
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    good = Ledger()
    seen: dict[str, Any] = {}

    def attack() -> None:
        rig.wait_virtual("air-01", 0.5 * H)
        a = Attacker(rig)
        try:
            for i, bad in enumerate(IMPLAUSIBLE):
                recs = [record_of(10 * i), record_of(10 * i + 1) | bad, record_of(10 * i + 2)]
                if "seq" in bad:
                    recs = [recs[0], recs[2], recs[1]]  # seqs go up: the huge one last
                for r in (recs[0], recs[2]) if "seq" not in bad else recs[:2]:
                    good.records[(2, r["seq"])] = r
                a.publish("meetkit/clock-01/up", envelope("clock-01", 2, recs))
            a.publish("meetkit/clock-02/up", envelope("clock-02", 2**40, [record_of(0)]))  # a boot no node has
        finally:
            a.close()
        seen["batches_taken"] = within(lambda: counter(rig, "rejected.implausible") >= 1, 60)

    rig.run(attack)
    rig.settle()
    return Run(rig.judge("hostile: implausible times and counters", {"clock-01": (good, EPOCH)}), seen)


# 4 -----------------------------------------------------------------------------------------------
FLOOD_BYTES = 1 * MiB
FLOOD_QOS0 = 400   # on the attacker's own topic: the broker does not hold QoS 0 back for acks
FLOOD_QOS1 = 100   # on a node's up topic, a valid batch padded with spaces
BACK_MIB = 8       # after the burst: back within this of the plateau (it stayed 500 MB up before the fix)


def status_mib(pid: int, key: str) -> float:
    """VmRSS or VmHWM of a process, MiB (/proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def settled_rss_mib(pid: int, timeout: float = 30) -> float:
    """VmRSS once it moved less than 1 MiB over 3 s."""
    end = time.monotonic() + timeout
    window: list[tuple[float, float]] = []
    while True:
        now, rss = time.monotonic(), status_mib(pid, "VmRSS")
        window = [(t, r) for t, r in window if now - t <= 3] + [(now, rss)]
        if (now - window[0][0] >= 2.7 and max(r for _, r in window) - min(r for _, r in window) < 1) \
                or now > end:
            return rss
        time.sleep(0.2)  # waits on: the next sample


def padded_batch(node: str) -> bytes:
    """A valid batch of `node` (boot 1, seqs 0..9, 99 degC) padded with spaces to FLOOD_BYTES:
    over the contract only by its size. Stored, its records would show as wrong times."""
    doc = {"v": 1, "node": node, "boot": 1, "fw": "0.2.0", "board": AIR,
           "sensors": {"climate": "bme280"}, "units": {"temp": "degC"},
           "recs": [{"seq": s, "ts": 1795510800 + 60 * s, "up": 60 * s, "dur": 60, "temp": [99.0, 99.0, 99.0, 12]}
                    for s in range(10)]}
    return json.dumps(doc, separators=(",", ":")).encode().ljust(FLOOD_BYTES)


def flood_while_writer_held(rig: Rig) -> Run:
    """A flood of 1 MB messages (FLOOD_QOS0 on the attacker's topic, FLOOD_QOS1 on air-01's up
    topic) into a plain Mosquitto that takes them, while another connection holds the store's
    write lock; then the lock goes. `seen` has the gateway's memory (MiB: plateau_before, held_max,
    peak_hwm, after), whether it came back within BACK_MIB of its plateau, and what was counted."""
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
    flood_file = rig.dir / "flood.bin"
    flood_file.write_bytes(padded_batch("air-01"))
    mem: dict[str, float] = {}
    seen: dict[str, Any] = {"mem": mem}
    samples: list[float] = []
    if rig.gateway.proc is None:
        raise RuntimeError("the gateway is not running")
    pid = rig.gateway.proc.pid

    def faults() -> None:
        rig.wait_virtual("air-01", 1 * H)
        mem["plateau_before"] = settled_rss_mib(pid)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                samples.append(status_mib(pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # The writer held: another connection has the store's write lock; its commits wait.
        lock = sqlite3.connect(rig.gateway.db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        pubs: list[subprocess.Popen] = []
        try:
            pubs += [subprocess.Popen(["mosquitto_pub", "-h", rig.broker.host, "-p", str(rig.broker.port),
                                      "-i", f"attacker-{qos}", "-q", str(qos), "-t", topic, "-f", str(flood_file),
                                      "--repeat", str(n)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for qos, topic, n in ((0, "meetkit/attacker/up", FLOOD_QOS0), (1, "meetkit/air-01/up", FLOOD_QOS1))]
            seen["publishers_exit"] = [p.wait(120) for p in pubs]  # 0: the publishes went through the broker
            # Each held as its first bytes only (KEEP_BYTES): the whole flood takes about 2 MB of the
            # 16 MiB the gateway may hold (tests/gateway/test_backpressure.py fills it).
            seen["oversized_while_held"] = counter(rig, "rejected.oversized")  # nothing committed meanwhile
            at = rig.virtual_s("air-01")
            rig.wait_virtual("air-01", at + 0.5 * H)  # the nodes go on sending meanwhile
            mem["held_max"] = max(samples)
        finally:
            lock.rollback()
            lock.close()
            for p in pubs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        seen["dead_lettered"] = within(lambda: counter(rig, "rejected.oversized") >= FLOOD_QOS0 + FLOOD_QOS1, 120)
        done.set()
        sampler.join()
        mem["peak_hwm"] = status_mib(pid, "VmHWM")
        seen["memory_came_back"] = within(lambda: status_mib(pid, "VmRSS") <= mem["plateau_before"] + BACK_MIB, 60)
        mem["after"] = settled_rss_mib(pid)

    rig.run(faults)
    rig.settle()
    out = rig.judge("hostile: 1 MB flood, writer held")
    out.notes.update({k: round(v, 1) for k, v in mem.items()})
    out.notes["flood"] = f"{FLOOD_QOS0} x 1 MB QoS 0 + {FLOOD_QOS1} x 1 MB QoS 1 on air-01's up topic"
    out.notes["rejected_oversized"] = seen["rejected_oversized"] = counter(rig, "rejected.oversized")
    with Store(rig.gateway.db, readonly=True) as s:
        seen["flood_readings_stored"] = sum(g.avg == 99.0 for g in s.readings(quantity="temp"))
    return Run(out, seen)


# 5 -----------------------------------------------------------------------------------------------
IDLE_CONNECTIONS = 1100


class IdleConnections(threading.Thread):
    """Keeps `n` connections to a port open without sending a byte, opening them at `rate` a
    second; each one the server closes is opened again, so the server never gets rid of them.
    `connected` counts the connections the server's kernel completed (what it then has to hold)."""

    def __init__(self, port: int, n: int, rate: float = 100.0) -> None:
        super().__init__(daemon=True)
        self.port, self.n, self.rate = port, n, rate
        self.opened = 0
        self.connected = 0
        self.closed_by_server = 0
        self.stop_event = threading.Event()
        self.sel = selectors.DefaultSelector()

    def _open(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", self.port))  # in progress: a full backlog makes the kernel retry
        self.sel.register(s, selectors.EVENT_WRITE)
        self.opened += 1

    def _event(self, s: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:  # the handshake is over, one way or the other
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                self.connected += 1
                self.sel.modify(s, selectors.EVENT_READ)
                return
        else:
            try:
                if s.recv(4096):
                    return  # the server said something (a 408, say); its close comes next
            except BlockingIOError:
                return
            except OSError:
                pass
            self.closed_by_server += 1
        self.sel.unregister(s)
        s.close()

    def run(self) -> None:
        # opened `rate` a second from the start too: all at once, most would overflow the listen
        # backlog, and with SYN cookies the client's kernel thinks them connected while the
        # server never heard of them
        budget, at = 0.0, time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            budget, at = min(self.rate, budget + (now - at) * self.rate), now
            for key, mask in self.sel.select(0.05):
                if isinstance(key.fileobj, socket.socket):  # always: only sockets are registered
                    self._event(key.fileobj, mask)
            while len(self.sel.get_map()) < self.n and budget >= 1:
                budget -= 1
                self._open()
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


def pending(port: int) -> int:
    """Connections to `port` the kernel has not handed to the listening process yet: the accept
    queue (a LISTEN socket's rx_queue in /proc/net/tcp) plus handshakes still open (SYN_RECV)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) != port:
            continue
        if f[3] == "0A":
            n += int(f[4].split(":")[1], 16)
        elif f[3] == "03":
            n += 1
    return n


def open_files(pid: int, samples: int = 20) -> list[int]:
    """The process's open descriptors, sampled every 0.1 s."""
    out = []
    for _ in range(samples):
        out.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.1)  # waits on: the next sample
    return out


def healthz(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def idle_connections_then_broker_restart(rig: Rig) -> Run:
    """1,100 idle connections kept open against the status server of a gateway held to systemd's
    1024 open files, then a broker restart under the attack and an hour more of it. `seen`: whether
    the gateway took them all, its open descriptors at most, the connections it closed, whether it
    stored again after the restart and answered /healthz during the attack."""
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
    gw = rig.gateway
    if gw.proc is None:
        raise RuntimeError("the gateway is not running")
    url = gw.status_url()
    # systemd's soft limit, and no hard limit above it to raise it to: only the server's cap helps
    resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the attacker needs its own 1,100
    if soft < IDLE_CONNECTIONS + 200:
        if hard != resource.RLIM_INFINITY and hard < IDLE_CONNECTIONS + 200:
            raise RuntimeError(f"raise `ulimit -Hn` to {IDLE_CONNECTIONS + 200} or more to run this")
        resource.setrlimit(resource.RLIMIT_NOFILE, (IDLE_CONNECTIONS + 200, hard))
    port = urlsplit(url).port or 80
    attacker = IdleConnections(port, IDLE_CONNECTIONS)
    seen: dict[str, Any] = {}

    def faults() -> None:
        rig.wait_virtual("air-01", 1 * H)
        attacker.start()
        # all of them taken by the gateway (the old server held each in a thread of its own until
        # its descriptors ran out; the rest then waited in the kernel for good)
        seen["all_taken"] = within(lambda: attacker.connected >= IDLE_CONNECTIONS and pending(port) == 0, 60)
        fds = open_files(gw.proc.pid)  # type: ignore[union-attr]
        rig.broker.stop()
        gw.wait_log(r"lost the broker", 20)
        before = rig.stored()
        time.sleep(0.5)  # waits on: the broker to stay away a moment, as it does in a restart
        rig.broker.start()
        # the old server: 0 records in 40 s, the gateway out of descriptors for its reconnection
        seen["stored_after_restart"] = within(lambda: rig.stored() > before, 60)
        seen["healthz_under_attack"] = within(lambda: healthz(url) == 200, 30)
        fds += open_files(gw.proc.pid)  # type: ignore[union-attr]
        rig.wait_virtual("air-01", rig.virtual_s("air-01") + 1 * H)  # an hour more under attack
        seen.update(fds_max=max(fds), connections=attacker.connected, closed_by_gateway=attacker.closed_by_server)
        attacker.stop()

    try:
        rig.run(faults)
    finally:
        if attacker.is_alive():
            attacker.stop()
    rig.settle()
    out = rig.judge("hostile: 1,100 idle HTTP connections, broker restarted")
    out.notes.update(seen, log_lines=len(gw.log_text().splitlines()))
    return Run(out, seen)


# 6 -----------------------------------------------------------------------------------------------
PAGE_CLIENTS = 16


def busy_status_pages(rig: Rig) -> Run:
    """16 status pages refreshing as fast as they can (meetkit_tools.dev.page_client) for three
    simulated hours while three nodes deliver. `seen`: the clients' answers by status
    (`responses`) and whether any client was still running after it was told to stop."""
    for i, sc in enumerate(("quiet-street", "busy-road", "quiet-street")):
        rig.node(f"air-0{i + 1}", sc, board=AIR, until_s=24 * H, seed=i + 1)
    url = rig.gateway.status_url()
    stop, lock = threading.Event(), threading.Lock()
    counts: Counter[str] = Counter()
    clients = [PageClient(url, stop, counts, lock) for _ in range(PAGE_CLIENTS)]

    def faults() -> None:
        rig.wait_virtual("air-01", 0.5 * H)
        for c in clients:
            c.start()
        rig.wait_virtual("air-01", rig.virtual_s("air-01") + 3 * H)  # three simulated hours of clients
        stop.set()
        for c in clients:
            c.join(60)

    try:
        rig.run(faults)
    finally:
        stop.set()
    rig.settle()
    out = rig.judge("hostile: 16 busy status pages")
    out.notes["page_responses"] = dict(counts)
    return Run(out, {"responses": counts, "clients_alive": sum(c.is_alive() for c in clients)})


# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    drive: Callable[[Rig], Run]
    store_toml: str = ""   # the gateway's [store] settings on the rig


SCENARIOS = (Scenario(oversized_flood, OVERSIZED_STORE_TOML), Scenario(poisoned_batches),
             Scenario(implausible_times), Scenario(flood_while_writer_held),
             Scenario(idle_connections_then_broker_restart), Scenario(busy_status_pages))


def run_scenario(sc: Scenario, workdir: Path) -> Run:
    """One scenario on a rig of its own in `workdir`, closed after."""
    rig = Rig(workdir, store_toml=sc.store_toml)
    try:
        return sc.drive(rig)
    finally:
        rig.close()


def record_lost(outcomes: list[Outcome], command: str, failed: dict[str, str] | None = None) -> dict[str, Any]:
    """`hostile_valid_records_lost`: the valid records (of the real nodes, and the attackers' valid
    ones) lost over the hostile scenarios judged; `failed`: the scenarios that could not run to
    their end (scenario -> error), not in the count."""
    detail: dict[str, Any] = {
        "scenarios": [r.row() for r in outcomes], "generated": sum(r.generated for r in outcomes),
        "duplicated": sum(r.duplicated for r in outcomes), "command": command,
        "note": "valid records of real nodes (and an attacker's valid ones) lost beside hostile input"}
    if failed:
        detail["failed"] = failed
    return record("hostile_valid_records_lost", sum(r.lost for r in outcomes), "records", "lower", detail)
