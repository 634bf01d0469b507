"""The gateway's memory under a flood of oversized messages while its writer is held (issue 13).

gateway_rss_mb_under_flood: the peak resident memory (VmHWM, /proc/<pid>/status) of the real
`meetkit-gateway run` process while an attacker publishes FLOOD_MESSAGES messages of FLOOD_BYTES
each (`mosquitto_pub --repeat`, half at QoS 0 on a topic of its own, half at QoS 1 on a node's up
topic: each a valid batch padded with spaces, which JSON allows) into a plain Mosquitto that
accepts them (no message size limit), while another connection holds a write lock on the
gateway's SQLite store for HOLD_S seconds. Lower is better; the issue's goal is 120 MB at most.
After the hold, every flood message must be counted as `rejected.oversized` (else the run stops:
a figure for a flood that did not arrive means nothing), then the resident memory is watched
until it settles: the plateau after.

For comparison, the same gateway's peak under the normal ingest load of bench/gateway.py (one
run of its stream: NODES nodes' backlogs published at once).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import gateway as gwbench
from bench.results import median, record
from meetkit_gateway import payload
from meetkit_tools.services import GatewayProcess, Mosquitto, stop_process

FLOOD_MESSAGES = 1000
FLOOD_BYTES = 1 << 20
HOLD_S = 30.0
RUNS = 3
SETTLE_S = 3.0  # the resident memory moved less than SETTLE_MIB over this long: settled
SETTLE_MIB = 1.0
SETTLE_TIMEOUT_S = 60.0


def status_mib(pid: int, key: str) -> float:
    """A memory line of /proc/<pid>/status (VmRSS, VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def settled_rss_mib(pid: int, timeout: float = SETTLE_TIMEOUT_S) -> float:
    """VmRSS once it has stayed within SETTLE_MIB for SETTLE_S (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    window: list[tuple[float, float]] = []
    while True:
        now, rss = time.monotonic(), status_mib(pid, "VmRSS")
        window = [(t, r) for t, r in window if now - t <= SETTLE_S] + [(now, rss)]
        if now - window[0][0] >= SETTLE_S * 0.9 and max(r for _, r in window) - min(r for _, r in window) < SETTLE_MIB:
            return rss
        if now > deadline:
            return rss
        time.sleep(0.2)


def flood_payload(node: str, size: int) -> bytes:
    """A valid batch of `node` padded with spaces to `size` bytes: over the contract's limit only
    by its size (trailing whitespace is valid JSON)."""
    doc = {"v": 1, "node": node, "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc-air",
           "sensors": {"climate": "bme280"}, "units": {"temp": "degC"},
           "recs": [{"seq": s, "ts": 1795510800 + 60 * s, "up": 60 * s, "dur": 60, "temp": [99.0, 99.0, 99.0, 12]}
                    for s in range(10)]}
    head = json.dumps(doc, separators=(",", ":")).encode()
    return head + b" " * (size - len(head))


class Flood:
    """Two `mosquitto_pub` processes: `count // 2` messages at QoS 0 on `meetkit/flood/up`, the
    rest at QoS 1 on `meetkit/<node>/up`."""

    def __init__(self, broker: Mosquitto, workdir: Path, node: str, count: int, size: int) -> None:
        self.file = workdir / "flood.bin"
        self.file.write_bytes(flood_payload(node, size))
        half = count // 2
        self.procs = [
            subprocess.Popen(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-i", f"flood-{qos}",
                              "-q", str(qos), "-t", topic, "-f", str(self.file), "--repeat", str(n)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for qos, topic, n in ((0, "meetkit/flood/up", half), (1, f"meetkit/{node}/up", count - half))]

    def wait(self, timeout: float) -> None:
        for p in self.procs:
            p.wait(timeout)

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)


class Sampler(threading.Thread):
    """VmRSS of a process every `every` seconds, as (seconds since start, MiB)."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            try:
                self.samples.append((time.monotonic() - self.t0, status_mib(self.pid, "VmRSS")))
            except (OSError, RuntimeError):
                return

    def stop(self) -> list[tuple[float, float]]:
        self._done.set()
        self.join()
        return self.samples


def oversized(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        row = con.execute("SELECT value FROM counters WHERE name = ?", (f"rejected.{payload.OVERSIZED}",)).fetchone()
        return row[0] if row else 0
    except sqlite3.Error:
        return 0
    finally:
        con.close()


@dataclass
class FloodRun:
    peak_mib: float
    before_mib: float
    after_mib: float
    held_s: float
    rejected: int
    rss_max_while_held_mib: float
    seconds_to_reject: float
    timeline: list[tuple[float, float]] = field(default_factory=list)


def flood_run(workdir: Path, count: int = FLOOD_MESSAGES, size: int = FLOOD_BYTES, hold_s: float = HOLD_S) -> FloodRun:
    broker = Mosquitto(workdir / "broker").start()
    gw = GatewayProcess(workdir / "gw", broker.host, broker.port, client_id="bench-flood").start()
    flood = sampler = lock = None
    try:
        gw.wait_log("subscribed to", 30)
        assert gw.proc is not None
        pid = gw.proc.pid
        before = settled_rss_mib(pid)
        # Another connection holds the store's write lock: the writer's commits fail after the
        # busy timeout and are retried, so what arrives stays in the gateway meanwhile.
        lock = sqlite3.connect(gw.db, isolation_level=None, timeout=30)
        lock.execute("BEGIN IMMEDIATE")
        sampler = Sampler(pid)
        sampler.start()
        t0 = time.monotonic()
        flood = Flood(broker, workdir, "air-01", count, size)
        flood.wait(gwbench.TIMEOUT_S)
        time.sleep(max(0.0, t0 + hold_s - time.monotonic()))  # waits on the hold: the flood is in
        held_max = max((r for _, r in sampler.samples), default=0.0)
        lock.rollback()
        lock.close()
        lock = None
        held_s = time.monotonic() - t0
        gwbench.wait_until(lambda: oversized(gw.db) >= count or not gw.running, gwbench.TIMEOUT_S,
                           "the flood to be dead-lettered", every=0.5)
        if not gw.running:
            raise SystemExit(f"benchmark: the gateway exited with {gw.proc.returncode}:\n{gwbench.log_tail(gw)}")
        rejected_s = time.monotonic() - t0
        after = settled_rss_mib(pid)
        peak = status_mib(pid, "VmHWM")
        timeline = sampler.stop()
    finally:
        if lock is not None:
            lock.close()
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if flood is not None:
            flood.stop()
        gw.stop()
        broker.stop()
    got = oversized(gw.db)
    if got != count:
        raise SystemExit(f"benchmark: {got} of {count} flood messages counted as oversized")
    return FloodRun(peak, before, after, held_s, got, held_max, rejected_s,
                    [(round(t, 1), round(r, 1)) for t, r in timeline[::10]])


def normal_load_peak_mib(workdir: Path) -> float | None:
    """The gateway's peak under one run of bench/gateway.py's ingest stream."""
    streams, files = gwbench.ingest_stream(workdir)
    return gwbench.gateway_run(workdir / "ingest", streams, files).rss_mib


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        runs = [flood_run(Path(tmp) / f"flood{i}") for i in range(RUNS)]
        normal = normal_load_peak_mib(Path(tmp))
    peaks = [r.peak_mib for r in runs]
    record("gateway_rss_mb_under_flood", round(max(peaks), 1), "MiB", "lower",
           {"what": "VmHWM of the meetkit-gateway run process (/proc/<pid>/status), the largest of the runs",
            "goal_mib": 120, "runs": RUNS, "peak_mib_runs": [round(p, 1) for p in peaks],
            "flood": f"{FLOOD_MESSAGES} messages of {FLOOD_BYTES} bytes: half QoS 0 on meetkit/flood/up, "
                     f"half QoS 1 on meetkit/air-01/up (a valid batch padded with spaces), two mosquitto_pub --repeat",
            "flood_mb": round(FLOOD_MESSAGES * FLOOD_BYTES / 1e6),
            "broker": "mosquitto, no message size limit, max_queued_messages 100000",
            "hold": f"another connection holds BEGIN IMMEDIATE on the store for {HOLD_S:.0f} s from the flood's start",
            "held_s_runs": [round(r.held_s, 1) for r in runs],
            "rss_max_while_held_mib_runs": [round(r.rss_max_while_held_mib, 1) for r in runs],
            "plateau_before_mib_runs": [round(r.before_mib, 1) for r in runs],
            "plateau_after_mib_runs": [round(r.after_mib, 1) for r in runs],
            "plateau": f"VmRSS once it moved less than {SETTLE_MIB} MiB in {SETTLE_S} s",
            "seconds_to_dead_letter_all_runs": [round(r.seconds_to_reject, 1) for r in runs],
            "checked": "every flood message counted as rejected.oversized",
            "normal_ingest_peak_mib": None if normal is None else round(normal, 1),
            "normal_ingest_load": f"one run of bench/gateway.py's stream ({gwbench.NODES} nodes' backlogs at once)",
            "timeline_first_run_s_mib": runs[0].timeline,
            "median_peak_mib": round(median(peaks), 1)})


if __name__ == "__main__":
    run()
