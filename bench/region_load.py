"""How far one VictoriaMetrics carries a region (issue 16): region_ingest_readings_per_s.

1, 4 and 8 gateways, each with its own Mosquitto and its own `meetkit-gateway run` with [region]
and the regional VictoriaMetrics as its safe target (Debian's, `-dedup.minScrapeInterval=1ms`, one
per gateway count, fresh). A load generator replays firmware-made batches (tools/dev/batches.py:
12 quantities a record, about 5 records a message) of NODES nodes per gateway with RECORDS records
each, every gateway's share published QoS 1 to its own Mosquitto at once, one thread per gateway.
The time runs from the first publish until every gateway's region target has taken every record
it stored (its forwarding cursor at its newest record): the readings it sent
(`forward.vm-region.sent`) over that time, the median of RUNS runs (fresh node ids each run, so
nothing is a duplicate).

Everything shares this machine's CPUs: the gateways, their Mosquittos and the load generator
compete with VictoriaMetrics, so the figure is what this one machine carries, not what one
VictoriaMetrics on a machine of its own takes (on a Pi each gateway has its own CPU). `detail` says
how much of it was VictoriaMetrics's: its CPU seconds over the run, and readings per
VictoriaMetrics CPU second, the capacity one VictoriaMetrics core would have. The reference beside
it: the same readings written straight to the same VictoriaMetrics by one client
(`region_ingest_vs_direct_ratio`: the region's path over the bare write, each the median of RUNS).

Alone: `.venv/bin/python -m bench.region_load` (about 2 minutes).
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.results import median, record
from meetkit_gateway.store import Store
from meetkit_tools.dev.batches import NodeStream, node_stream
from meetkit_tools.services import GatewayProcess, Mosquitto, VictoriaMetrics

GATEWAYS = (1, 4, 8)
NODES = 20   # per gateway
RECORDS = 180   # per node: three hours of one record a minute
RUNS = 3
T0 = 1795510800
TARGET = "vm-region"
CHUNK = 5000   # readings per direct write: the influx target's default batch


def region_toml(vm: VictoriaMetrics, gateway: str) -> str:
    return (f'\n[region]\ntown = "bench"\ngateway = "{gateway}"\nsafe_targets = ["{TARGET}"]\n\n'
            f'[[forward]]\nname = "{TARGET}"\ntype = "influx"\nurl = "{vm.url}"\ndb = "meetkit"\n')


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def publish(broker: Mosquitto, streams: list[NodeStream], started: threading.Event) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"load-{broker.port}-{time.monotonic_ns()}")
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    started.wait()
    infos = [c.publish(f"meetkit/{s.node}/up", m, qos=1) for s in streams for m in s.messages]
    for i in infos:
        i.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def done(db: Path, records: int) -> tuple[bool, int]:
    """(every record stored and taken by the region target, readings sent to it)."""
    try:
        with Store(db, readonly=True) as s:
            newest = s.newest_record_id()
            return newest >= records and s.safe_cursor((TARGET,)) >= newest, s.counters().get(f"forward.{TARGET}.sent", 0)
    except Exception:
        return False, 0


def one_run(vm: VictoriaMetrics, brokers: list[Mosquitto], gateways: list[GatewayProcess], run: int,
            stored: list[int]) -> tuple[float, int, float]:
    """(readings per second, readings, VictoriaMetrics CPU seconds) of one replay."""
    streams = [[node_stream(f"g{g}-r{run}-{i:02d}", RECORDS, T0, seed=1000 * run + 10 * g + i) for i in range(NODES)]
               for g in range(len(gateways))]
    before = [done(gw.db, 0)[1] for gw in gateways]
    go = threading.Event()
    threads = [threading.Thread(target=publish, args=(b, s, go)) for b, s in zip(brokers, streams)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # waits on: the load generator's connections (not part of the time)
    vm_cpu = cpu_s(vm.proc.pid)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    go.set()
    want = [stored[g] + NODES * RECORDS for g in range(len(gateways))]
    sent = before
    while True:
        state = [done(gw.db, w) for gw, w in zip(gateways, want)]
        if all(ok for ok, _ in state):
            sent = [n for _, n in state]
            break
        if time.perf_counter() - t0 > 600:
            raise TimeoutError("the region did not take the replay in 10 minutes")
        time.sleep(0.05)  # waits on: every gateway's region target to take what it stored
    dt = time.perf_counter() - t0
    vm_cpu = cpu_s(vm.proc.pid) - vm_cpu  # type: ignore[union-attr]
    for t in threads:
        t.join()
    for g in range(len(gateways)):
        stored[g] = want[g]
    readings = sum(sent) - sum(before)
    return readings / dt, readings, vm_cpu


def lines(streams: list[NodeStream]) -> list[bytes]:
    """The replay's readings as the influx target writes them, in bodies of CHUNK readings."""
    out: list[str] = []
    for s in streams:
        for m in s.messages:
            for r in json.loads(m)["recs"]:
                for q, v in r.items():
                    if q in ("seq", "ts", "up", "dur", "f", "err") or v is None:
                        continue
                    a, lo, hi, n = (v + [None] * 4)[:4] if isinstance(v, list) else (v, None, None, None)
                    fields = [f"{k}={float(x)!r}" for k, x in (("avg", a), ("min", lo), ("max", hi)) if x is not None]
                    fields += [f"n={int(n)}i"] if n is not None else []
                    if fields:
                        out.append(f"meetkit,town=direct,node={s.node},quantity={q} {','.join(fields)} {r['ts']}")
    return [("\n".join(out[k:k + CHUNK]) + "\n").encode() for k in range(0, len(out), CHUNK)]


def direct(vm: VictoriaMetrics, run: int, nodes: int) -> tuple[float, int]:
    """The same amount of readings written straight to VictoriaMetrics by one client, one body
    after the other (as one forwarder does): (readings per second, readings)."""
    streams = [node_stream(f"d{run}-{i:03d}", RECORDS, T0, seed=1000 * run + i) for i in range(nodes)]
    bodies = lines(streams)
    n = sum(b.count(b"\n") for b in bodies)
    conn = http.client.HTTPConnection(vm.host, vm.port, timeout=30)
    t0 = time.perf_counter()
    for body in bodies:
        conn.request("POST", "/write?db=meetkit&precision=s", body, {"Content-Type": "text/plain"})
        r = conn.getresponse()
        r.read()
        if r.status // 100 != 2:
            raise RuntimeError(f"VictoriaMetrics answered {r.status}")
    dt = time.perf_counter() - t0
    conn.close()
    return n / dt, n


def measure(n: int, work: Path) -> dict:
    vm = VictoriaMetrics(work / "vm").start()
    brokers: list[Mosquitto] = []
    gateways: list[GatewayProcess] = []
    try:
        for g in range(n):
            b = Mosquitto(work / f"gw{g}" / "broker").start()
            brokers.append(b)
            gw = GatewayProcess(work / f"gw{g}" / "gateway", b.host, b.port, client_id=f"meetkit-gateway-gw{g}",
                                extra_toml=region_toml(vm, f"gw-{g}")).start()
            gateways.append(gw)
        for gw in gateways:
            gw.wait_log("subscribed to ", timeout=60)
        stored = [0] * n
        rates, vm_cpu, readings, ref = [], [], [], []
        for run in range(RUNS):
            rate, count, cpu = one_run(vm, brokers, gateways, run, stored)
            rates.append(rate)
            readings.append(count)
            vm_cpu.append(cpu)
            ref.append(direct(vm, run, n * NODES)[0])
        held = sum(len(s["values"]) for s in vm.export('{__name__="meetkit_avg",town="bench"}'))
        return {"gateways": n, "rates": rates, "readings": readings, "vm_cpu_s": vm_cpu, "direct": ref,
                "vm_avg_samples_held": held}
    finally:
        for gw in gateways:
            gw.stop()
        for b in brokers:
            b.stop()
        vm.stop()


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-region-load-") as tmp:
        fs = os.popen(f"stat -f -c %T {tmp}").read().strip()
        for n in GATEWAYS:
            m = measure(n, Path(tmp) / f"n{n}")
            rate = median(m["rates"])
            per_cpu = [r / c for r, c in zip(m["readings"], m["vm_cpu_s"]) if c > 0]
            detail = {
                "gateways": n, "nodes_per_gateway": NODES, "records_per_node": RECORDS, "readings_per_record": 12,
                "readings_per_run": m["readings"], "runs": RUNS, "all_readings_per_s": m["rates"],
                "vm_cpu_seconds": m["vm_cpu_s"],
                "readings_per_vm_cpu_s": median(per_cpu) if per_cpu else None,
                "direct_readings_per_s": m["direct"], "direct": "the same amount of readings, one client, "
                "bodies of 5000 readings, straight to the same VictoriaMetrics",
                "vm_avg_samples_held": m["vm_avg_samples_held"],
                "path": "load generator -> each gateway's Mosquitto (QoS 1) -> meetkit-gateway run (SQLite, ack "
                        "with safe) -> influx target -> one VictoriaMetrics (-dedup.minScrapeInterval=1ms)",
                "machine": f"{os.cpu_count()} CPUs shared by everything", "store_filesystem": fs,
                "command": ".venv/bin/python -m bench.region_load",
            }
            record("region_ingest_readings_per_s", rate, "readings/s", "higher", detail)
            record("region_ingest_vs_direct_ratio", rate / median(m["direct"]), "ratio", "higher",
                   {"gateways": n, "region_readings_per_s": rate, "direct_readings_per_s": median(m["direct"]),
                    "note": "the region's whole path (MQTT, SQLite, acks, forwarding) over VictoriaMetrics's own "
                            "intake from one client, side by side on the same machine"})


if __name__ == "__main__":
    run()
