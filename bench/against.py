"""The store's readers against an earlier commit of the gateway, side by side in one run.

    .venv/bin/python -m bench.against <git rev> [--gateway | --ingest]    (e.g. main, or the commit before a change)

The gateway of <rev> is taken out of git (`git archive`) into a temporary folder and put first on
the import path of its subprocesses; this checkout's gateway runs in the others. Both read the same
store: `bench/backlog.py`'s (50 nodes, 12 readings a record), so the comparison holds
only for code that still opens that schema. Each workload runs RUNS times per side, the sides taking
turns, a fresh process each (imports and caches as a user's command has them):

export        `export` of the whole store as CSV to /dev/null (what `meetkit-gateway export` does)
drain         a forwarder from cursor 0 to the newest record, the batches encoded as InfluxDB line
              protocol and taken at once (the store's and the forwarder's share of a drain,
              without a network); a new target name per run, so each starts at 0
readings      `Store.readings` of every node since 6 hours before the newest record (the CLI's
              `readings --since 6h`)
series        the status page's plot of one node: `series_doc` of 24 hours

With `--gateway` also:

drain_vm      bench/gateway.py's drain, side by side: the real `meetkit-gateway run` process
              forwarding a backlog of 3 million readings to a fresh VictoriaMetrics, from process
              start to the cursor at the newest record (`drain_run`); 3 runs a side
ingest_vm     bench/gateway.py's ingest, side by side: the real gateway process taking its stream
              through a fresh Mosquitto into a fresh store (`gateway_run`), first publish to the
              last acknowledgement; 5 runs a side (a new store each: any schema compares)

Each figure `against_<workload>_ratio` is this checkout's median time over <rev>'s: below 1 is
faster now. Never asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from bench import backlog
from bench.results import median, record

ROOT = Path(__file__).resolve().parent.parent
READINGS = 1_200_000
RUNS = 5

WORKLOAD = r"""
import json, os, sys, time
from pathlib import Path
import meetkit_gateway
what, path, tag = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
from meetkit_gateway.store import Store
if what == "export":
    from meetkit_gateway.export import Selection, export
    with Store(path, readonly=True) as s, open(os.devnull, "w") as out:
        t = time.perf_counter()
        n = export(s, Selection(), "csv", None, out).readings
        dt = time.perf_counter() - t
elif what == "drain":
    from meetkit_gateway.forward import Forwarder, Result
    from meetkit_gateway.forward.influx import encode_lines
    class Taken:
        kind = "bench"
        def send(self, rows):
            encode_lines(rows)
            return Result(True)
        def close(self):
            pass
    f = Forwarder("bench-" + tag, path, Taken(), hold_untimed_s=0)
    t = time.perf_counter()
    while f.step() == 0.0:
        pass
    dt = time.perf_counter() - t
    n = f.cursor()
    f.close()
elif what == "readings":
    with Store(path, readonly=True) as s:
        newest = s.db.execute("SELECT max(start) FROM records").fetchone()[0]
        t = time.perf_counter()
        n = len(s.readings(since=newest - 6 * 3600))
        dt = time.perf_counter() - t
elif what == "series":
    from meetkit_gateway.http import series_doc
    with Store(path, readonly=True) as s:
        newest = s.db.execute("SELECT max(start) FROM records").fetchone()[0]
        t = time.perf_counter()
        for _ in range(20):
            doc = series_doc(s, "bench-007", 24, now=newest + 60)
        dt = (time.perf_counter() - t) / 20
        n = len(doc["t"]) if "t" in doc else len(json.dumps(doc))
print(json.dumps({"n": n, "s": dt, "file": meetkit_gateway.__file__}))
"""


def once(what: str, db: Path, tag: str, old: Path | None) -> dict:
    env = {"PYTHONPATH": str(old)} if old is not None else {}
    import os
    r = subprocess.run([sys.executable, "-c", WORKLOAD, what, str(db), tag], capture_output=True, text=True,
                       env={**os.environ, **env}, check=True)
    return json.loads(r.stdout)


def _turns(runs: int, old: Path) -> Iterator[tuple[int, str]]:
    """(run, side) of `runs` runs a side, the sides taking turns (which goes first changing too);
    during an "old" turn the gateway processes started import <rev>'s gateway (PYTHONPATH)."""
    saved = os.environ.get("PYTHONPATH")
    try:
        for k in range(runs):
            for side in ("old", "new") if k % 2 == 0 else ("new", "old"):
                if side == "old":
                    os.environ["PYTHONPATH"] = str(old)
                else:
                    os.environ.pop("PYTHONPATH", None)
                yield k, side
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def _old_gateway(rev: str, work: Path) -> Path:
    """<rev>'s gateway out of git, as an importable meetkit_gateway in work/old; that folder."""
    old = work / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "gateway"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    (old / "gateway").rename(old / "meetkit_gateway")
    return old


def drain_vm(rev: str, old: Path, work: Path) -> None:
    from bench import gateway
    from meetkit_tools.services import Mosquitto

    (work / "drain").mkdir()
    b = backlog.build(work / "drain" / "gateway.db", gateway.DRAIN_READINGS)
    broker = Mosquitto(work / "drain-broker").start()
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    try:
        for k, side in _turns(gateway.DRAIN_RUNS, old):
            r = gateway.drain_run(work, b, broker, 2 * k + (side == "new"))
            times[side].append(r.seconds)
            cpu[side].append(r.gateway_cpu_s)
    finally:
        broker.stop()
    ratio = median(times["new"]) / median(times["old"])
    record("against_drain_vm_ratio", round(ratio, 3), "ratio", "lower", {
        "rev": rev, "new_s": [round(t, 2) for t in times["new"]], "old_s": [round(t, 2) for t in times["old"]],
        "new_gateway_cpu_s": [round(t, 1) for t in cpu["new"]], "old_gateway_cpu_s": [round(t, 1) for t in cpu["old"]],
        "readings": b.readings, "records": b.records, "what": "this checkout's median drain time over rev's"})
    print(f"drain_vm: new/old {ratio:.3f} (new {median(times['new']):.2f} s, old {median(times['old']):.2f} s)",
          flush=True)


def ingest_vm(rev: str, old: Path, work: Path, runs: int = 5) -> None:
    from bench import gateway

    streams, files = gateway.ingest_stream(work)
    messages = sum(len(st.messages) for st in streams)
    times: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    acks: dict[str, list[int | None]] = {"old": [], "new": []}
    for k, side in _turns(runs, old):
        r = gateway.gateway_run(work / f"ingest-{side}-{k}", streams, files)
        times[side].append(r.seconds)
        cpu[side].append((r.cpu_s or 0) / messages * 1e6)
        acks[side].append(r.acks)
    ratio = median(times["new"]) / median(times["old"])
    record("against_ingest_vm_ratio", round(ratio, 3), "ratio", "lower", {
        "rev": rev, "new_s": [round(t, 3) for t in times["new"]], "old_s": [round(t, 3) for t in times["old"]],
        "new_gateway_cpu_us_per_message": [round(c) for c in cpu["new"]],
        "old_gateway_cpu_us_per_message": [round(c) for c in cpu["old"]],
        "new_ack_messages": acks["new"], "old_ack_messages": acks["old"],
        "messages": messages, "what": "this checkout's median ingest time over rev's (bench/gateway.py's stream)"})
    print(f"ingest_vm: new/old {ratio:.3f} (new {median(times['new']):.2f} s, old {median(times['old']):.2f} s; "
          f"CPU per message new {median(cpu['new']):.0f} us, old {median(cpu['old']):.0f} us; "
          f"ack messages for {messages} messages new {acks['new']}, old {acks['old']})", flush=True)


def run(rev: str, with_gateway: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-against-") as tmp:
        work = Path(tmp)
        old = _old_gateway(rev, work)
        b = backlog.build(work / "gateway.db", READINGS)
        for what in ("export", "drain", "readings", "series"):
            times: dict[str, list[float]] = {"old": [], "new": []}
            counts: dict[str, int] = {}
            for k in range(RUNS):
                for side in ("old", "new") if k % 2 == 0 else ("new", "old"):
                    out = once(what, b.path, f"{side}-{k}", old if side == "old" else None)
                    assert (side == "old") == out["file"].startswith(str(old)), out["file"]
                    times[side].append(out["s"])
                    counts[side] = out["n"]
            ratio = median(times["new"]) / median(times["old"])
            record(f"against_{what}_ratio", round(ratio, 3), "ratio", "lower", {
                "rev": rev, "new_s": [round(t, 4) for t in times["new"]], "old_s": [round(t, 4) for t in times["old"]],
                "items": counts, "store_readings": b.readings, "store_records": b.records, "nodes": backlog.NODES,
                "runs": RUNS, "what": "this checkout's median time over rev's"})
            print(f"{what}: new/old {ratio:.3f} (new {median(times['new']):.3f} s, old {median(times['old']):.3f} s, "
                  f"{counts})", flush=True)
        if with_gateway:
            drain_vm(rev, old, work)
            ingest_vm(rev, old, work)


def ingest_only(rev: str) -> None:
    """`ingest_vm` alone (`--ingest`): it needs no store of one schema, so any two revs compare."""
    with tempfile.TemporaryDirectory(prefix="bench-against-") as tmp:
        work = Path(tmp)
        ingest_vm(rev, _old_gateway(rev, work), work)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("--gateway", "--ingest")]
    if "--ingest" in sys.argv[1:]:
        ingest_only(args[0] if args else "HEAD")
    else:
        run(args[0] if args else "HEAD", "--gateway" in sys.argv[1:])
