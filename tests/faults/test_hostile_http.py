"""Hostile clients of the gateway's status server (issue 13), judged by the nodes' ledgers.

Real parts as in tests/faults/test_faults.py (Mosquitto, the gateway process, SQLite, simulated
nodes running the unmodified firmware); an attacker beside them on the status server's port. Every
record the nodes made must be in the store exactly once, with its time, whatever the attacker does.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from bench.http_clients import PageClient
from tests.faults.harness import Rig, db_rows
from tests.faults.test_faults import AIR, H, assert_clean, stored, wait_for

IDLE_CONNECTIONS = 1100
LOG_LINES_MAX = 200  # the whole gateway log of a scenario; the old server wrote 52,000 traceback lines


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


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
                assert isinstance(key.fileobj, socket.socket)
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


def within(cond: Callable[[], bool], timeout: float) -> bool:
    """Whether `cond` came true within `timeout` s (the caller decides what failing means)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.1)  # waits on: cond
    return True


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


def test_idle_http_connections_then_a_broker_restart(rig: Rig) -> None:
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
    gw = rig.gateway
    assert gw.proc is not None
    url = gw.status_url()
    # systemd's soft limit, and no hard limit above it to raise it to: only the server's cap helps
    resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the attacker needs its own 1,100
    if soft < IDLE_CONNECTIONS + 200:
        assert hard == resource.RLIM_INFINITY or hard >= IDLE_CONNECTIONS + 200, "raise `ulimit -Hn` to run this"
        resource.setrlimit(resource.RLIMIT_NOFILE, (IDLE_CONNECTIONS + 200, hard))
    port = urlsplit(url).port or 80
    attacker = IdleConnections(port, IDLE_CONNECTIONS)
    seen: dict[str, object] = {}

    def faults() -> None:
        rig.wait_virtual("air-01", 1 * H)
        attacker.start()
        # all of them taken by the gateway (the old server held each in a thread of its own until
        # its descriptors ran out; the rest then waited in the kernel for good): asserted at the end
        seen["all_taken"] = within(lambda: attacker.connected >= IDLE_CONNECTIONS and pending(port) == 0, 60)
        fds = open_files(gw.proc.pid)
        rig.broker.stop()
        gw.wait_log(r"lost the broker", 20)
        before = stored(rig)
        time.sleep(0.5)  # waits on: the broker to stay away a moment, as it does in a restart
        rig.broker.start()
        # the old server: 0 records in 40 s, the gateway out of descriptors for its reconnection
        wait_for(lambda: stored(rig) > before, 60, "records stored again after the broker restart")
        wait_for(lambda: healthz(url) == 200, 30, "/healthz answering with 1,100 connections at it")
        fds += open_files(gw.proc.pid)
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
    log = gw.log_text()
    out.notes.update(seen, log_lines=len(log.splitlines()))
    assert_clean(out)
    assert seen["all_taken"], "the gateway did not take every connection"
    assert "Max open files            1024                 1024" in Path(f"/proc/{gw.proc.pid}/limits").read_text()
    assert int(seen["fds_max"]) < 200, seen  # at most 64 for HTTP, the rest for MQTT, SQLite, Python
    assert int(seen["closed_by_gateway"]) > IDLE_CONNECTIONS - 64, seen  # it let go of the idle ones
    assert "Traceback" not in log and len(log.splitlines()) <= LOG_LINES_MAX, log[-3000:]
    assert healthz(url) == 200


def test_sixteen_busy_status_pages_while_nodes_deliver(rig: Rig) -> None:
    for i, sc in enumerate(("quiet-street", "busy-road", "quiet-street")):
        rig.node(f"air-0{i + 1}", sc, board=AIR, until_s=24 * H, seed=i + 1)
    url = rig.gateway.status_url()
    stop, lock = threading.Event(), threading.Lock()
    counts: Counter[str] = Counter()
    clients = [PageClient(url, stop, counts, lock) for _ in range(16)]

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
    assert_clean(out)
    assert not any(c.is_alive() for c in clients)
    assert counts["200"] >= 16 * 20 and set(counts) == {"200"}, counts  # slowed down, never refused
    # and the page tells the truth: each node's records as the store has them (once the cache let go)
    def page_agrees() -> bool:
        with urllib.request.urlopen(url + "/api/nodes", timeout=10) as r:
            doc = json.load(r)
        per_node = Counter(node for node, *_ in db_rows(rig.gateway.db))
        return {n["node"]: n["records"] for n in doc["nodes"]} == dict(per_node)

    wait_for(page_agrees, 30, "the page's record counts to match the store")
    log = rig.gateway.log_text()
    assert "Traceback" not in log and len(log.splitlines()) <= LOG_LINES_MAX, log[-3000:]
