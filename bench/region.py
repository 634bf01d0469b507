"""What the safe pair costs ingest (issue 16, docs/payload.md "Safe in the region").

region_safe_pair_ingest_ratio: messages per second the writer's path takes WITH [region] (the
commit of a one-batch group, then the safe pair of its node in one query, store/safe.py, and the
acknowledgement with `safe`) over the same WITHOUT [region] (the commit and the plain
acknowledgement), measured alternately on the same store, each the median of RUNS runs of
MESSAGES messages. Groups of one message: a region of nodes each acknowledged about once a second
is what the writer sees (one batch per commit), and the worst case for a per-commit query.

The store holds what a region away for 6 hours leaves: NODES nodes with BACKLOG records each
after the region target's cursor (36,000 unforwarded records), behind HISTORY records each that
were forwarded (so a query that read a node's forwarded records would show). Higher is better;
1.0 means the pair costs nothing measurable. `detail` has the absolute rates, the query's own time
for one node and for a group of all NODES nodes, and where the store lives (an fsync on tmpfs is
free, which makes the query's share look larger than on an SD card).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.results import median, record
from meetkit_gateway.acks import Ack
from meetkit_gateway.ingest import Inbound, ingest_group
from meetkit_gateway.payload import parse_batch
from meetkit_gateway.store import Store
from meetkit_gateway.topics import Topics

NODES = 100
BACKLOG = 360  # records per node unforwarded: 6 hours at one a minute
HISTORY = 1000  # records per node forwarded before the region went away
PER_BATCH = 20
MESSAGES = 300
RUNS = 5
T0 = 1795510800
TARGETS = ("vm-region",)
RECORD = {"dur": 60, "pm25": [5.2, 4, 7, 58], "temp": [12.34, 12.3, 12.4, 12]}
ENVELOPE = {"v": 1, "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc",
            "sensors": {"pm": "pms5003", "climate": "bme280"}, "units": {"pm25": "ug/m3", "temp": "degC"}}


def doc(node: str, seqs: range) -> bytes:
    recs = [dict(RECORD, seq=s, ts=T0 + 60 * s, up=60 * s) for s in seqs]
    return json.dumps(ENVELOPE | {"node": node, "recs": recs}, separators=(",", ":")).encode()


def fill(store: Store, first: int, count: int) -> None:
    """Records first..first+count-1 of every node, in batches of PER_BATCH, nodes round robin."""
    for k in range(first, first + count, PER_BATCH):
        group = [(parse_batch(doc(f"n{i:03d}", range(k, min(k + PER_BATCH, first + count))), f"n{i:03d}"), T0)
                 for i in range(NODES)]
        with store.transaction():
            store.add_batches(group)


def one_run(store: Store, topics: Topics, seq0: int, region: bool) -> float:
    """MESSAGES one-record batches, nodes round robin, each committed alone and acknowledged;
    messages per second."""
    msgs = [Inbound(f"meetkit/n{k % NODES:03d}/up", doc(f"n{k % NODES:03d}", range(seq0 + k // NODES,
                                                                                  seq0 + k // NODES + 1)), T0)
            for k in range(MESSAGES)]
    started = time.perf_counter()
    for msg in msgs:
        with store.transaction():
            acks = ingest_group(store, topics, [msg])
        done = [a for a in acks if a is not None]
        if region:
            pairs = store.safe_pairs(TARGETS, {a.node for a in done})
            out = [a.payload(store.db_id, pairs.get(a.node)) for a in done]
        else:
            out = [a.payload(store.db_id) for a in done]
        assert len(out) == 1
    return MESSAGES / (time.perf_counter() - started)


def query_s(store: Store, nodes: list[str], repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        store.safe_pairs(TARGETS, nodes)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-region-") as tmp:
        path = Path(tmp) / "gateway.db"
        topics = Topics("meetkit")
        with Store(path) as store:
            fill(store, 0, HISTORY)
            store.add_cursor(TARGETS[0], T0)
            store.set_cursor(TARGETS[0], store.newest_record_id(), T0)  # the history is in the region's store
            fill(store, HISTORY, BACKLOG)
            unforwarded = store.newest_record_id() - store.safe_cursor(TARGETS)
            plain, region = [], []
            seq = HISTORY + BACKLOG
            for _ in range(RUNS):  # alternately, so that the machine's noise hits both alike
                plain.append(one_run(store, topics, seq, region=False))
                seq += MESSAGES // NODES
                region.append(one_run(store, topics, seq, region=True))
                seq += MESSAGES // NODES
            one, every = query_s(store, ["n000"]), query_s(store, [f"n{i:03d}" for i in range(NODES)])
            pair = store.safe_pairs(TARGETS, ["n000"])["n000"]
        fs = os.popen(f"stat -f -c %T {tmp}").read().strip()
    record("region_safe_pair_ingest_ratio", median(region) / median(plain), "ratio", "higher", {
        "with_region_msgs_per_s": median(region), "without_region_msgs_per_s": median(plain),
        "runs": RUNS, "messages_per_run": MESSAGES, "group": "one batch of one record per commit",
        "unforwarded_records": unforwarded, "nodes": NODES, "forwarded_records_per_node": HISTORY,
        "safe_pair_query_one_node_ms": one * 1000, "safe_pair_query_all_nodes_ms": every * 1000,
        "safe_pair_of_n000": pair, "store_filesystem": fs, "synchronous": "FULL",
        "with_region_all": region, "without_region_all": plain,
    })


if __name__ == "__main__":
    run()
