"""A day of steady load on the real gateway process (`make soak`): its memory and its open
descriptors stay bounded, and everything is stored and acknowledged.

100 nodes each publish a batch a minute (QoS 1), one in fifty is published twice (a node that
missed its ack) and one message in a thousand is garbage (a dead letter); a status page refreshes
every 10 s (/api/nodes, /api/series of one node, /metrics). The gateway's VmRSS and its open
descriptors are sampled 40 times an hour. MEETKIT_SOAK_HOURS sets the length (default 24)."""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from meetkit_tools.services import GatewayProcess, Mosquitto
from tests.gateway.conftest import Listener, Publisher, batch, seqs_of, wait_for

pytestmark = pytest.mark.soak

NODES = 100
PERIOD_S = 60.0          # each node's batch interval
HOURS = float(os.environ.get("MEETKIT_SOAK_HOURS", "24"))
RSS_GROWTH_MIB = 8       # the last quarter's median RSS over the first quarter's, after the warm-up
RSS_MAX_MIB = 120        # the gateway's memory goal (docs/developer.md, bench/flood.py)
FD_GROWTH = 4            # descriptors beyond the most seen in the warm-up


def proc_status(pid: int) -> tuple[float, int]:
    """VmRSS (MiB) and open descriptors of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def acked(acks: Listener) -> set[tuple[str, int]]:
    """(ack topic, seq) of every seq acknowledged."""
    return {(t, s) for t, doc, _ in list(acks.messages) for s in seqs_of([doc])}


def test_a_day_of_steady_load_keeps_memory_and_descriptors_bounded(tmp_path: Path) -> None:
    duration = HOURS * 3600
    sample_s = min(90.0, duration / 40)
    warmup = max(60.0, duration / 10)
    rng = random.Random(24)
    broker = Mosquitto(tmp_path / "broker").start()
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port).start()
    url = gw.status_url()
    gw.wait_log("subscribed to")
    assert gw.proc is not None
    pid = gw.proc.pid
    acks = Listener(broker.host, broker.port, "meetkit/+/ack")
    node = Publisher(broker.host, broker.port)
    samples: list[tuple[float, float, int]] = []
    page_errors: list[str] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def page() -> None:
        while not stop.wait(10):   # waits on: the page's refresh interval (or the end)
            for path in ("/api/nodes", "/api/series?node=soak-001&hours=24", "/metrics"):
                try:
                    with urllib.request.urlopen(url + path, timeout=30) as r:
                        r.read()
                except OSError as e:
                    page_errors.append(f"{time.monotonic() - t0:.0f} s {path}: {e}")

    def sample() -> None:
        while True:
            samples.append((time.monotonic() - t0, *proc_status(pid)))
            if stop.wait(sample_s):   # waits on: the sampling interval (or the end)
                return

    threads = [threading.Thread(target=f, daemon=True) for f in (page, sample)]
    for t in threads:
        t.start()
    sent = garbage = twice = 0
    try:
        rounds = int(duration / PERIOD_S)
        for k in range(rounds):
            for i in range(NODES):
                # each node at its own moment of the minute
                at = t0 + k * PERIOD_S + i * PERIOD_S / NODES
                time.sleep(max(0.0, at - time.monotonic()))   # waits on: the load's pace
                name = f"soak-{i + 1:03d}"
                doc = batch(node=name, boot=1, seqs=[k], ts0=1795510800)
                node.publish(f"meetkit/{name}/up", doc)
                sent += 1
                if rng.random() < 0.02:
                    node.publish(f"meetkit/{name}/up", doc)
                    twice += 1
                if rng.random() < 0.001:
                    node.publish(f"meetkit/{name}/up", b"\x00garbage")
                    garbage += 1
        # every batch acknowledged (one sent twice may share its commit, and so its ack, with the first)
        wait_for(lambda: len(acked(acks)) >= sent, 300, "every batch acknowledged")
        assert gw.running, gw.log_text()[-3000:]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        node.close()
        acks.close()
        code = gw.stop()
        broker.stop()
    assert code == 0, gw.log_text()[-3000:]

    import sqlite3
    with sqlite3.connect(gw.db) as db:
        assert db.execute("SELECT count(*) FROM records").fetchone()[0] == sent
        assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == garbage
    assert page_errors == [], page_errors[:10]

    after = [(t, rss, fds) for t, rss, fds in samples if t >= warmup]
    before = [(t, rss, fds) for t, rss, fds in samples if t < warmup]
    assert len(after) >= 8 and before, samples
    q = max(2, len(after) // 4)
    first, last = statistics.median(r for _, r, _ in after[:q]), statistics.median(r for _, r, _ in after[-q:])
    print(f"{HOURS:g} h, {sent} batches ({twice} twice, {garbage} garbage): RSS {first:.1f} -> {last:.1f} MiB "
          f"(max {max(r for _, r, _ in samples):.1f}), descriptors {max(f for *_, f in before)} in the warm-up, "
          f"at most {max(f for *_, f in after)} after")
    assert last - first < RSS_GROWTH_MIB, samples
    assert max(r for _, r, _ in samples) < RSS_MAX_MIB, samples
    assert max(f for *_, f in after) <= max(f for *_, f in before) + FD_GROWTH, samples
