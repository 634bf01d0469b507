"""Busy status-page clients beside ingest (issue 13).

ingest_ratio_with_16_page_clients: the gateway's ingest rate (readings committed and acknowledged
per wall second, the machinery of bench/gateway.py: NODES nodes' backlogs published at once by
`mosquitto_pub`, the clock stops at the last acknowledgement) while CLIENTS status pages refresh as
fast as they can, over the same rate without them. The two kinds of run alternate (which goes first
alternating too), each on a fresh broker and gateway; medians of RUNS each. Higher is better; the
issue asks for 0.8.

A page client (tools/dev/page_client.py) does what gateway/static/app.js does on each refresh, with
no pause between refreshes: GET /api/nodes, then /api/series?node=<id>&hours=24 for every node
heard, one request at a time over one keep-alive connection; it loads the page and its files (/,
app.js, style.css, uPlot) at its start and every RELOAD_EVERY refreshes. The clients are threads of
this process (one core at most: on a 2-core machine, 16 processes would take the CPU from the
gateway by themselves, which says nothing about the gateway).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.gateway import IngestRun, gateway_run
from bench.results import median, record
from meetkit_tools.dev import batches
from meetkit_tools.dev.page_client import RELOAD_EVERY, PageClient
from meetkit_tools.services import GatewayProcess

NODES = 20
RECORDS_PER_NODE = 2000  # 40 000 records, 480 000 readings: a few seconds of ingest
RUNS = 5
CLIENTS = 16
#: this benchmark on the thread-per-connection server it replaced (commit c5d0582), same machine
BEFORE = {"value": 0.099, "readings_per_s_alone": 120721, "readings_per_s_with_clients": 11932,
          "client_requests_per_s": 49, "measured": "2026-12-06, commit c5d0582, 5 runs each"}


class Clients:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0

    @contextmanager
    def load(self, gw: GatewayProcess) -> Iterator[None]:
        url = gw.status_url()
        stop, lock = threading.Event(), threading.Lock()
        threads = [PageClient(url, stop, self.counts, lock) for _ in range(CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            for t in threads:
                t.join(60)
            self.seconds += time.monotonic() - t0


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmpdir:
        tmp = Path(tmpdir)
        t0 = int(time.time()) // 60 * 60 - 14 * 86400
        streams = batches.streams(NODES, RECORDS_PER_NODE, t0)
        files = {}
        for s in streams:
            files[s.node] = tmp / f"{s.node}.lines"
            files[s.node].write_bytes(b"\n".join(s.messages) + b"\n")
        readings = sum(s.readings for s in streams)
        alone: list[IngestRun] = []
        busy: list[IngestRun] = []
        clients = Clients()
        for i in range(RUNS):  # alternately, which goes first changing too: the machine is shared
            pair = [("alone", None), ("busy", clients.load)]
            for kind, load in pair if i % 2 == 0 else reversed(pair):
                run = gateway_run(tmp / f"{kind}{i}", streams, files, load)
                (alone if kind == "alone" else busy).append(run)
    alone_rate = [readings / r.seconds for r in alone]
    busy_rate = [readings / r.seconds for r in busy]
    requests = sum(v for k, v in clients.counts.items())
    record("ingest_ratio_with_16_page_clients", round(median(busy_rate) / median(alone_rate), 3), "ratio", "higher",
           {"goal": 0.8, "runs": RUNS, "nodes": NODES, "readings": readings,
            "messages": sum(len(s.messages) for s in streams),
            "readings_per_s_alone_runs": [round(r) for r in alone_rate],
            "readings_per_s_with_clients_runs": [round(r) for r in busy_rate],
            "pair_ratios": [round(b / a, 3) for a, b in zip(alone_rate, busy_rate)],
            "clients": CLIENTS, "client": "app.js's refresh in a loop without pause: /api/nodes, then "
                                          "/api/series?hours=24 per node; the page's files every "
                                          f"{RELOAD_EVERY} refreshes; threads of the bench process, keep-alive",
            "client_requests_per_s": round(requests / clients.seconds) if clients.seconds else None,
            "client_responses": dict(clients.counts), "before": BEFORE,
            "clock": "first publish to the last acknowledgement on meetkit/<node>/ack; every record "
                     "checked in the store and acknowledged"})


if __name__ == "__main__":
    run()
