"""The store writer's CPU per message, alone and in process: ingest's limit.

gateway_writer_cpu_us_per_message: the CPU time (time.process_time) the writer's path takes per
node message: `ingest_group` over bench/gateway.py's ingest stream (20 nodes' backlogs of 1000
one-minute records, bench/batches.py: about 4 900 payload v1 batches of about 4 records, 49
readings), the nodes' messages interleaved as they arrive, in groups of G messages each in one
transaction, into a fresh store in a temporary folder (SQLite as the gateway runs it), and each
acknowledgement's payload made as the service makes it after the commit. No broker, no network
thread: only what the writer thread does.

gateway_writer_cpu_vs_rev_ratio: the same against another commit's gateway side by side (`main`
unless given): its gateway taken out of git (bench/against.py) and imported in the other runs, the
two taking turns, RUNS runs each, a fresh process each (both in the same one would not be fair:
two gateways' objects weigh on the garbage collector, more on the one that makes more of them);
this checkout's median over rev's. Below 1 is less CPU now.

    .venv/bin/python bench/ingest_writer.py [G] [-p]           one run, G messages a group (100)
    .venv/bin/python -m bench.ingest_writer [rev]              the figures (about 1.5 minutes)

`-p`: a cProfile of the run, the 25 functions that take most time themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = 100  # the writer's groups under load: `Writer`'s max_group takes what queued meanwhile
NODES, RECORDS = 20, 1000
RUNS = 7


def stream() -> list:
    """The ingest benchmark's messages as the writer gets them: each node's next one in turn."""
    from meetkit_gateway.ingest import Inbound
    from meetkit_tools.dev import batches

    t0 = int(time.time()) // 60 * 60 - 14 * 86400
    streams = batches.streams(NODES, RECORDS, t0)
    msgs = []
    for i in range(max(len(s.messages) for s in streams)):
        for s in streams:
            if i < len(s.messages):
                msgs.append(Inbound(f"meetkit/{s.node}/up", s.messages[i], time.time(), False, 1, 1, 1))
    return msgs


def writer_run(msgs: list, group: int, db: Path, profile: bool = False) -> float:
    """CPU seconds of `ingest_group` over `msgs`, `group` at a time, into a new store at `db`."""
    from meetkit_gateway.ingest import ingest_group
    from meetkit_gateway.store import Store
    from meetkit_gateway.topics import Topics

    store = Store(db)
    topics = Topics("meetkit")

    def run() -> None:
        for k in range(0, len(msgs), group):
            with store.transaction():
                acks = ingest_group(store, topics, msgs[k:k + group])
            for a in acks:
                if a is not None:
                    a.payload(store.db_id)

    if profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0.0
    c0 = time.process_time()
    run()
    return time.process_time() - c0


def main(argv: list[str]) -> None:
    """One run in this process: CPU µs per message (as JSON with `--json`)."""
    group = int(next((a for a in argv if a.isdigit()), GROUP))
    msgs = stream()
    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        cpu = writer_run(msgs, group, Path(tmp) / "gateway.db", profile="-p" in argv)
    import meetkit_gateway
    us = cpu / len(msgs) * 1e6
    if "--json" in argv:
        print(json.dumps({"us": us, "messages": len(msgs), "file": meetkit_gateway.__file__}))
    elif "-p" not in argv:
        print(f"{us:.0f} us/msg cpu, {len(msgs)} messages, groups of {group}")


def _once(old: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if old is not None:
        env["PYTHONPATH"] = str(old)
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(GROUP), "--json"], capture_output=True,
                       text=True, env=env, check=True, cwd=ROOT)
    return json.loads(r.stdout)


def run(rev: str = "main") -> None:
    from bench.against import _old_gateway
    from bench.results import median, record

    with tempfile.TemporaryDirectory(prefix="bench-writer-") as tmp:
        old = _old_gateway(rev, Path(tmp))
        us: dict[str, list[float]] = {"old": [], "new": []}
        messages = 0
        for k in range(RUNS):
            for side in ("old", "new") if k % 2 == 0 else ("new", "old"):
                out = _once(old if side == "old" else None)
                assert (side == "old") == out["file"].startswith(str(old)), out["file"]
                us[side].append(out["us"])
                messages = out["messages"]
    new, was = median(us["new"]), median(us["old"])
    detail = {"messages": messages, "group": GROUP, "runs": RUNS, "rev": rev,
              "new_us": [round(u) for u in us["new"]], "old_us": [round(u) for u in us["old"]],
              "stream": f"bench/batches.py: {NODES} nodes x {RECORDS} one-minute records, payload v1, interleaved",
              "what": "CPU (process_time) of ingest_group + ack payloads per message, in process, fresh store"}
    record("gateway_writer_cpu_us_per_message", round(new, 1), "us/message", "lower", detail)
    record("gateway_writer_cpu_vs_rev_ratio", round(new / was, 3), "ratio", "lower",
           dict(detail, reference=f"{rev}'s gateway, same stream, runs alternating"))


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a file: one run in this process
        sys.path.insert(0, str(ROOT))
        main(sys.argv[1:])
    else:
        run(*sys.argv[1:2])
