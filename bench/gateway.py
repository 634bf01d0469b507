"""The gateway's figures (issue 5): ingest through a real broker, draining a backlog upstream, memory.

gateway_ingest_readings_per_s: readings the real `meetkit-gateway run` process committed AND
acknowledged per wall second. A fixed stream (tools/dev/batches.py: NODES nodes, firmware-made batches
of about 60 readings) is published by one `mosquitto_pub` per node (QoS 1) into a real Mosquitto;
the clock runs from the first publish to the acknowledgement received on meetkit/<node>/ack (by
`mosquitto_sub`, which stamps each arrival) that completes the acknowledged seqs: the gateway sends
one per node and boot for a commit's batches, so fewer acknowledgements than messages (the figure's
detail says how many). Every record must be in the store and every seq acknowledged with the
store's db id, else the benchmark stops: a figure for data refused means nothing. Median of RUNS.
gateway_ingest_vs_mosquitto_sub_ratio: that rate over the rate at which `mosquitto_sub` alone
receives the same stream from the same publishers (the broker's and the publishers' own limit),
the two run alternately, each on a fresh broker. Higher is better; the issue asks for 0.8.

backlog_drain_s_3m: seconds from starting the gateway process on a store holding 3 million readings
(bench/backlog.py) with one [[forward]] target, a real VictoriaMetrics, until its cursor reaches the
newest record; then VictoriaMetrics must hold every point (counted through its query API). Median
of DRAIN_RUNS, each with a fresh VictoriaMetrics and the cursor set back. Lower is better; the
issue asks for 60 s at most on this machine.

gateway_disk_write_bytes_per_reading: in the same gateway runs, the bytes the gateway process wrote
to disk (/proc/PID/io write_bytes: database, WAL and checkpoints, log) per reading stored, median of
RUNS (issue 17: what an SD card wears by).

gateway_rss_mb: the gateway process's peak resident memory (VmHWM) under either load, the larger.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench import backlog
from bench.results import median, record
from meetkit_gateway.store import Store, StoreError
from meetkit_tools.dev import batches
from meetkit_tools.services import GatewayProcess, Mosquitto, VictoriaMetrics, stop_process

NODES = 20
RECORDS_PER_NODE = 1000  # 20 000 records, 240 000 readings, about 4 400 messages
RUNS = 5
DRAIN_READINGS = 3_000_000
DRAIN_RUNS = 3
READY_TOPIC = "bench/ready"  # retained: a subscriber that got it is subscribed to the rest too
TIMEOUT_S = 600.0
FIRMWARE_BACKLOG_GAP_MS = 2000  # firmware/lib/node.py: a node's backlog drains one batch per this


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a running process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def disk_write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to the storage layer (/proc/PID/io write_bytes: the
    database, its WAL and checkpoints, logs; not sockets), as the kernel counts them when a page is
    dirtied."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def log_tail(gw: GatewayProcess, lines: int = 30) -> str:
    """The end of the gateway's log, for a benchmark that stops (its folder is deleted)."""
    return "\n".join(gw.log_text().splitlines()[-lines:])


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- ingest -----------------------------------------------------------------------------------------


class Subscriber:
    """`mosquitto_sub` taking `count` messages of `topic` (QoS 1; None: until stopped), one line
    each: '<Unix time of arrival, ns> <topic> <payload or length>'."""

    def __init__(self, broker: Mosquitto, topic: str, count: int | None, out: Path, payload: bool) -> None:
        self.out = out
        take = [] if count is None else ["-C", str(count + 1)]
        with out.open("wb") as f:
            self.proc = subprocess.Popen(
                ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-i", f"bench-{out.stem}",
                 "-t", topic, "-t", READY_TOPIC, *take, "-F", "%U %t " + ("%p" if payload else "%l")],
                stdout=f, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: out.stat().st_size > 0, 10, f"mosquitto_sub on {topic} to subscribe")
        except BaseException:
            self.stop()
            raise

    def wait(self, timeout: float) -> list[tuple[float, str, str]]:
        """What arrived, once `count` messages did or after `timeout`."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        lines = [line.split(" ", 2) for line in self.out.read_text().splitlines()]
        return [(float(t), topic, rest) for t, topic, rest in lines if topic != READY_TOPIC]

    def wait_acked(self, streams: list[batches.NodeStream], timeout: float,
                   every: float = 0.005) -> list[tuple[float, str, str]]:
        """The acknowledgements (`payload=True` on meetkit/+/ack) that arrived until they named
        every seq of every stream, the one that completed them last; those so far after `timeout`
        (check_ingested then says what is missing). Reads only what mosquitto_sub wrote since the
        last look, every `every` s: the clock is the arrival stamp of each line, not this poll."""
        missing = {s.node: set(range(s.records)) for s in streams}
        left = sum(len(m) for m in missing.values())
        got: list[tuple[float, str, str]] = []
        deadline = time.monotonic() + timeout
        rest = b""
        with self.out.open("rb") as f:
            while left:
                chunk = f.read()
                if not chunk:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        break
                    time.sleep(every)
                    continue
                *lines, rest = (rest + chunk).split(b"\n")  # a line cut short waits for its end
                for line in lines:
                    t, topic, text = line.decode().split(" ", 2)
                    if topic == READY_TOPIC:
                        continue
                    got.append((float(t), topic, text))
                    seqs = missing.get(topic.split("/")[1])
                    if seqs:
                        before = len(seqs)
                        seqs.difference_update(ack_seqs(json.loads(text)))
                        left -= before - len(seqs)
        return got

    def stop(self) -> None:
        stop_process(self.proc)


def ack_seqs(ack: dict[str, Any]) -> list[int]:
    """The seqs an acknowledgement names: `[first, last]` ranges, or a lone seq (the compact form)."""
    return [s for r in ack.get("seq", ()) for s in ([r] if isinstance(r, int) else range(r[0], r[1] + 1))]


def publish(broker: Mosquitto, streams: list[batches.NodeStream], files: dict[str, Path]) -> float:
    """Every node's batches, one `mosquitto_pub` per node at once; returns when all are through."""
    t0 = time.time()
    pubs = []
    for s in streams:
        with files[s.node].open("rb") as lines:
            pubs.append(subprocess.Popen(
                ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-M", "100",
                 "-i", f"bench-pub-{s.node}", "-t", f"meetkit/{s.node}/up", "-l"],
                stdin=lines, stderr=subprocess.DEVNULL))
    try:
        for p in pubs:
            if p.wait(TIMEOUT_S) != 0:
                raise SystemExit(f"benchmark: mosquitto_pub exited with {p.returncode}")
    finally:
        for p in pubs:
            stop_process(p)
    return time.time() - t0


def new_broker(workdir: Path) -> Mosquitto:
    broker = Mosquitto(workdir).start()
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-r",
                    "-t", READY_TOPIC, "-m", "ready"], check=True)
    return broker


@dataclass
class IngestRun:
    seconds: float  # first publish to the last message received (acknowledgement, or the batch itself)
    publish_s: float  # until every publisher had its messages through the broker
    rss_mib: float | None = None  # the gateway's peak
    cpu_s: float | None = None  # the gateway's CPU time (user + system) on the stream
    disk_write_bytes: int | None = None  # what the gateway process wrote to disk on the stream
    acks: int | None = None  # acknowledgement messages the gateway sent for the stream


def mosquitto_sub_run(workdir: Path, streams: list[batches.NodeStream], files: dict[str, Path]) -> IngestRun:
    messages = sum(len(s.messages) for s in streams)
    broker = new_broker(workdir)
    sub = None
    try:
        sub = Subscriber(broker, "meetkit/+/up", messages, workdir / "received.txt", payload=False)
        t0 = time.time()
        publish_s = publish(broker, streams, files)
        got = sub.wait(TIMEOUT_S)
    finally:
        if sub is not None:
            sub.stop()
        broker.stop()
    sent_bytes = sum(len(m) for s in streams for m in s.messages)
    if len(got) != messages or sum(int(n) for _, _, n in got) != sent_bytes:
        raise SystemExit(f"benchmark: mosquitto_sub received {len(got)} of {messages} messages")
    return IngestRun(got[-1][0] - t0, publish_s)


def gateway_run(workdir: Path, streams: list[batches.NodeStream], files: dict[str, Path],
                load: Callable[[GatewayProcess], AbstractContextManager[object]] | None = None,
                extra_toml: str = "") -> IngestRun:
    """`load`: something more to run against the gateway from just before the first publish to the
    last acknowledgement (bench/http_clients.py: busy status-page clients; bench/ota.py: nodes
    fetching a release). `extra_toml`: more of gateway.toml ([ota], say)."""
    broker = new_broker(workdir)
    gw = GatewayProcess(workdir / "gw", broker.host, broker.port, client_id="bench-gateway",
                        extra_toml=extra_toml).start()
    acks = None
    try:
        gw.wait_log("subscribed to", 30)
        # until stopped: the gateway acknowledges a commit's batches of a node in one message
        acks = Subscriber(broker, "meetkit/+/ack", None, workdir / "acks.txt", payload=True)
        assert gw.proc is not None
        with load(gw) if load is not None else nullcontext():
            cpu0, disk0 = cpu_s(gw.proc.pid), disk_write_bytes(gw.proc.pid)
            t0 = time.time()
            publish_s = publish(broker, streams, files)
            got = acks.wait_acked(streams, TIMEOUT_S)
        if not gw.running:
            raise SystemExit(f"benchmark: the gateway exited with {gw.proc.returncode}:\n{log_tail(gw)}")
        rss, cpu = peak_rss_mib(gw.proc.pid), cpu_s(gw.proc.pid) - cpu0
        disk = disk_write_bytes(gw.proc.pid) - disk0
    finally:
        if acks is not None:
            acks.stop()
        gw.stop()
        broker.stop()
    check_ingested(gw, streams, got)
    return IngestRun(got[-1][0] - t0, publish_s, rss, cpu, disk, acks=len(got))


def check_ingested(gw: GatewayProcess, streams: list[batches.NodeStream], acks: list[tuple[float, str, str]]) -> None:
    """Every record committed, none refused or rejected, every seq acknowledged with this store's id."""
    try:
        with Store(gw.db, readonly=True) as store:
            counts, db_id = store.counts(), store.db_id
    except StoreError:  # an older gateway's store (bench/against.py --ingest): read a copy, migrated
        copy = gw.db.with_name("checked.db")
        src = sqlite3.connect(gw.db)
        try:
            src.execute(f"VACUUM INTO '{copy}'")
        finally:
            src.close()
        with Store(copy) as store:
            counts, db_id = store.counts(), store.db_id
    records = sum(s.records for s in streams)
    readings = sum(s.readings for s in streams)
    problems = []
    if (counts.records, counts.readings) != (records, readings):
        problems.append(f"stored {counts.records} records, {counts.readings} readings; sent {records}, {readings}")
    if counts.dead_letters or counts.rejected:
        problems.append(f"{counts.dead_letters} dead letters: {counts.rejected}")
    acked: dict[str, set[int]] = {}
    for _, topic, text in acks:
        ack = json.loads(text)
        if ack["db"] != db_id:
            problems.append(f"an acknowledgement with db {ack['db']}, the store is {db_id}")
        acked.setdefault(topic.split("/")[1], set()).update(ack_seqs(ack))
    for s in streams:
        if acked.get(s.node) != set(range(s.records)):
            problems.append(f"{s.node}: {len(acked.get(s.node, ()))} of {s.records} records acknowledged")
    if problems:
        raise SystemExit("benchmark: the gateway did not take the stream:\n  " + "\n  ".join(problems[:10])
                         + f"\n{log_tail(gw)}")


def ingest_stream(workdir: Path) -> tuple[list[batches.NodeStream], dict[str, Path]]:
    """The ingest stream (NODES nodes' RECORDS_PER_NODE records, ending two weeks ago) and a file
    of each node's messages, a line each, in `workdir`, for `publish`."""
    t0 = int(time.time()) // 60 * 60 - 14 * 86400
    streams = batches.streams(NODES, RECORDS_PER_NODE, t0)
    files = {}
    for s in streams:
        files[s.node] = workdir / f"{s.node}.lines"
        files[s.node].write_bytes(b"\n".join(s.messages) + b"\n")  # compact JSON: no newline inside
    return streams, files


def measure_ingest(tmp: Path) -> float | None:
    """Records the two ingest figures; returns the gateway's peak RSS, MiB."""
    streams, files = ingest_stream(tmp)
    readings = sum(s.readings for s in streams)
    messages = sum(len(s.messages) for s in streams)
    gw_runs: list[IngestRun] = []
    sub_runs: list[IngestRun] = []
    for i in range(RUNS):  # alternately, which goes first changing too: the machine is shared
        pair = [("sub", mosquitto_sub_run), ("gw", gateway_run)]
        for kind, fn in pair if i % 2 == 0 else reversed(pair):
            run = fn(tmp / f"{kind}{i}", streams, files)
            (gw_runs if kind == "gw" else sub_runs).append(run)
    gw_rate = [readings / r.seconds for r in gw_runs]
    sub_rate = [readings / r.seconds for r in sub_runs]
    common = {"nodes": NODES, "records": readings // batches.QUANTITIES_PER_RECORD, "readings": readings,
              "messages": messages, "readings_per_message": round(readings / messages, 1), "runs": RUNS,
              "publisher": "one mosquitto_pub -l -q 1 -M 100 per node, all at once",
              "broker": "mosquitto (fresh per run), persistence on, autosave_interval 1"}
    record("gateway_ingest_readings_per_s", round(median(gw_rate)), "readings/s", "higher",
           dict(common, readings_per_s_runs=[round(r) for r in gw_rate],
                seconds_runs=[round(r.seconds, 3) for r in gw_runs],
                publish_s_runs=[round(r.publish_s, 3) for r in gw_runs],
                gateway_cpu_us_per_message_runs=[round(r.cpu_s / messages * 1e6) for r in gw_runs if r.cpu_s],
                # one per node and boot for a commit's batches: fewer than the `messages` taken
                ack_messages_runs=[r.acks for r in gw_runs],
                clock="first publish to the acknowledgement on meetkit/<node>/ack that completes every seq",
                # A node drains its backlog at one batch per BACKLOG_GAP_MS (firmware/lib/node.py):
                nodes_draining_backlogs_at_once_kept_up_with=round(
                    median(gw_rate) / (readings / messages / (FIRMWARE_BACKLOG_GAP_MS / 1000))),
                checked="every record in the store, none rejected, every seq acknowledged with the store's db id"))
    ratios = [g / s for g, s in zip(gw_rate, sub_rate)]
    record("gateway_ingest_vs_mosquitto_sub_ratio", round(median(gw_rate) / median(sub_rate), 3), "ratio", "higher",
           dict(common, gateway_readings_per_s=round(median(gw_rate)), mosquitto_sub_readings_per_s=round(median(sub_rate)),
                mosquitto_sub_readings_per_s_runs=[round(r) for r in sub_rate],
                mosquitto_sub_seconds_runs=[round(r.seconds, 3) for r in sub_runs],
                mosquitto_sub_publish_s_runs=[round(r.publish_s, 3) for r in sub_runs],
                pair_ratios=[round(r, 3) for r in ratios], goal=0.5,  # issue 17 (issue 5 asked 0.8)
                reference="mosquitto_sub -q 1 receiving the same stream from the same publishers, "
                          "first publish to the last message received"))
    per_reading = [r.disk_write_bytes / readings for r in gw_runs if r.disk_write_bytes is not None]
    record("gateway_disk_write_bytes_per_reading", round(median(per_reading), 1), "bytes", "lower",
           dict(common, runs=[round(x, 1) for x in per_reading],
                counted="/proc/<gateway pid>/io write_bytes from the first publish to the last acknowledgement: "
                        "the database, its WAL and the checkpoints in that time (the one at close not counted), "
                        "the log; on ext4 (the bench's temporary folder)",
                sd_card="a 32 GB card's life scales with bytes written: see docs/operator.md"))
    rss = [r.rss_mib for r in gw_runs if r.rss_mib is not None]
    return max(rss) if rss else None


# -- draining a backlog upstream -------------------------------------------------------------------------


_FORWARD = '\n[[forward]]\nname = "vm"\ntype = "influx"\nurl = "{url}"\ndb = "bench"\n'


def vm_count(vm: VictoriaMetrics, metric: str, b: backlog.Backlog) -> int:
    """Points VictoriaMetrics holds for `metric` of the backlog's time span."""
    urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=30).read()
    span = b.last_start - b.first_start + 60
    q = urllib.parse.urlencode({"query": f'sum(count_over_time({metric}{{db="bench"}}[{span}s]))',
                                "time": str(b.last_start + 1)})
    with urllib.request.urlopen(f"{vm.url}/api/v1/query?{q}", timeout=120) as r:
        result = json.load(r)["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


@dataclass
class DrainRun:
    seconds: float
    rss_mib: float
    counters: dict[str, int]
    gateway_cpu_s: float
    vm_cpu_s: float


def drain_run(workdir: Path, b: backlog.Backlog, broker: Mosquitto, i: int) -> DrainRun:
    with sqlite3.connect(b.path) as con:  # the cursor back to the start: the whole backlog again
        con.execute("DELETE FROM forward_cursors")
        con.execute("DELETE FROM counters WHERE name LIKE 'forward.%'")
    con.close()
    vm = VictoriaMetrics(workdir / f"vm{i}").start()
    gw = GatewayProcess(b.path.parent, broker.host, broker.port, client_id=f"bench-drain-{i}",
                        extra_toml=_FORWARD.format(url=vm.url))
    watch = sqlite3.connect(f"file:{b.path}?mode=ro", uri=True, isolation_level=None)
    try:
        t0 = time.monotonic()
        gw.start()

        def cursor() -> int:
            if not gw.running:
                raise SystemExit(f"benchmark: the gateway exited with {gw.proc.returncode if gw.proc else None}:\n"
                                 f"{log_tail(gw)}")
            row = watch.execute("SELECT last_id FROM forward_cursors WHERE target = 'vm'").fetchone()
            return row[0] if row else 0

        wait_until(lambda: cursor() >= b.records, TIMEOUT_S, "the backlog to drain", every=0.1)
        seconds = time.monotonic() - t0
        assert gw.proc is not None and vm.proc is not None
        rss, gw_cpu, vm_cpu = peak_rss_mib(gw.proc.pid), cpu_s(gw.proc.pid), cpu_s(vm.proc.pid)
        gw.stop()
        counters = dict(watch.execute("SELECT name, value FROM counters WHERE name LIKE 'forward.%'"))
        points = {m: vm_count(vm, m, b) for m in ("meetkit_avg", "meetkit_min", "meetkit_max", "meetkit_n")}
    finally:
        watch.close()
        gw.stop()
        vm.stop()
    want = {"meetkit_avg": b.readings, "meetkit_min": b.summaries, "meetkit_max": b.summaries, "meetkit_n": b.summaries}
    if points != want or counters.get("forward.vm.sent") != b.readings:
        raise SystemExit(f"benchmark: VictoriaMetrics holds {points}, expected {want}; counters {counters}")
    return DrainRun(seconds, rss, counters, gw_cpu, vm_cpu)


def measure_drain(tmp: Path) -> float:
    """Records backlog_drain_s_3m; returns the gateway's peak RSS, MiB."""
    gwdir = tmp / "drain"
    gwdir.mkdir()
    t = time.monotonic()
    b = backlog.build(gwdir / "gateway.db", DRAIN_READINGS)
    build_s = time.monotonic() - t
    broker = Mosquitto(tmp / "drain-broker").start()  # the gateway's broker: idle, as after an outage upstream
    try:
        runs = [drain_run(tmp, b, broker, i) for i in range(DRAIN_RUNS)]
    finally:
        broker.stop()
    secs = [r.seconds for r in runs]
    record("backlog_drain_s_3m", round(median(secs), 2), "s", "lower",
           {"readings": b.readings, "records": b.records, "nodes": backlog.NODES,
            "points_checked": "VictoriaMetrics holds every avg, min, max and n (count_over_time)",
            "seconds_runs": [round(s, 2) for s in secs],
            "readings_per_s": round(b.readings / median(secs)), "runs": DRAIN_RUNS, "goal_s": 60,
            "target": "VictoriaMetrics (influx v1 /write, dedup 1 ms), fresh per run, loopback",
            "gateway_cpu_s_runs": [round(r.gateway_cpu_s, 1) for r in runs],
            "victoria_metrics_cpu_s_runs": [round(r.vm_cpu_s, 1) for r in runs],
            "batch_readings": 5000, "retries": [r.counters.get("forward.vm.retries", 0) for r in runs],
            "clock": "gateway process start to the cursor at the newest record",
            "store_build_s": round(build_s, 1), "store_mb": round(b.path.stat().st_size / 1e6)})
    return max(r.rss_mib for r in runs)


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        ingest_rss = measure_ingest(Path(tmp))
        drain_rss = measure_drain(Path(tmp))
    record("gateway_rss_mb", round(max(drain_rss, ingest_rss or 0.0), 1), "MiB", "lower",
           {"ingest_peak_mib": None if ingest_rss is None else round(ingest_rss, 1),
            "drain_peak_mib": round(drain_rss, 1),
            "what": "VmHWM of the meetkit-gateway run process (/proc/<pid>/status), the larger of the two loads",
            "ingest_load": f"{NODES} nodes' backlogs published at once, {RUNS} runs",
            "drain_load": f"{DRAIN_READINGS} readings forwarded to VictoriaMetrics, {DRAIN_RUNS} runs"})


if __name__ == "__main__":
    run()
