"""Hostile input (issue 13): a flood of 1 MB messages while the gateway's writer is held costs
no valid reading, and the gateway's memory stays bounded and comes back down after it.

Real parts as in test_faults.py: a plain Mosquitto that takes 1 MB messages (no size limit, as on
the test rig), the gateway as its own process, SQLite, simulated nodes running the firmware.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.ingest import MAX_QUEUE_BYTES

from tests.faults.harness import Rig
from tests.faults.test_faults import AIR, H, assert_clean, wait_for

MiB = 1024 * 1024
FLOOD_BYTES = 1 * MiB
FLOOD_QOS0 = 400   # on the attacker's own topic: the broker does not hold QoS 0 back for acks
FLOOD_QOS1 = 100   # on a node's up topic, a valid batch padded with spaces
# What the gateway may take on top of its plateau while flooded: what it holds (MAX_QUEUE_BYTES),
# paho's buffers for the message it is reading (a few times its size) and room for SQLite's page
# cache and Python's allocator. The unbounded gateway held every QoS 0 message: +400 MB here.
HELD_MIB = MAX_QUEUE_BYTES / MiB + 32
# After the burst: back within this of the plateau (it stayed 500 MB up before the fix).
BACK_MIB = 8


def status_mib(pid: int, key: str) -> float:
    """VmRSS or VmHWM of a process, MiB (/proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} for process {pid}")


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
        time.sleep(0.2)


def padded_batch(node: str) -> bytes:
    """A valid batch of `node` (boot 1, seqs 0..9, 99 degC) padded with spaces to FLOOD_BYTES:
    over the contract only by its size. Stored, its records would show as wrong times."""
    doc = {"v": 1, "node": node, "boot": 1, "fw": "0.2.0", "board": AIR,
           "sensors": {"climate": "bme280"}, "units": {"temp": "degC"},
           "recs": [{"seq": s, "ts": 1795510800 + 60 * s, "up": 60 * s, "dur": 60, "temp": [99.0, 99.0, 99.0, 12]}
                    for s in range(10)]}
    return json.dumps(doc, separators=(",", ":")).encode().ljust(FLOOD_BYTES)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_hostile_1mb_flood_while_the_writer_is_held(rig: Rig, tmp_path: Path) -> None:
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
    flood_file = tmp_path / "flood.bin"
    flood_file.write_bytes(padded_batch("air-01"))
    mem: dict[str, float] = {}
    samples: list[float] = []

    def oversized() -> int:
        try:
            return rig.counter("rejected.oversized")
        except sqlite3.Error:
            return 0

    def faults() -> None:
        rig.wait_virtual("air-01", 1 * H)
        assert rig.gateway.proc is not None
        pid = rig.gateway.proc.pid
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
            for p in pubs:
                assert p.wait(120) == 0, "the attacker's publishes went through the broker"
            # Each held as its first bytes only (KEEP_BYTES): the whole flood takes about 2 MB of the
            # 16 MiB the gateway may hold (tests/gateway/test_backpressure.py fills it).
            wait_for(lambda: oversized() == 0, 5, "nothing committed while the writer is held")
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
        wait_for(lambda: oversized() >= FLOOD_QOS0 + FLOOD_QOS1, 120, "the flood to be dead-lettered")
        done.set()
        sampler.join()
        mem["peak_hwm"] = status_mib(pid, "VmHWM")
        wait_for(lambda: status_mib(pid, "VmRSS") <= mem["plateau_before"] + BACK_MIB, 60,
                 f"the gateway's memory to come back within {BACK_MIB} MiB of its plateau")
        mem["after"] = settled_rss_mib(pid)

    rig.run(faults)
    rig.settle()
    out = rig.judge("hostile: 1 MB flood, writer held")
    out.notes.update({k: round(v, 1) for k, v in mem.items()})
    out.notes["flood"] = f"{FLOOD_QOS0} x 1 MB QoS 0 + {FLOOD_QOS1} x 1 MB QoS 1 on air-01's up topic"
    out.notes["rejected_oversized"] = oversized()
    assert_clean(out)
    assert out.notes["rejected_oversized"] == FLOOD_QOS0 + FLOOD_QOS1
    con = sqlite3.connect(f"file:{rig.gateway.db}?mode=ro", uri=True)
    try:
        flood_readings = con.execute("SELECT count(*) FROM readings WHERE quantity = 'temp' AND avg = 99.0").fetchone()[0]
    finally:
        con.close()
    assert flood_readings == 0, "nothing of the flood was stored"
    assert mem["peak_hwm"] <= mem["plateau_before"] + HELD_MIB, mem
