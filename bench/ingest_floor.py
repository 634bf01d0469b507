"""How far the gateway's ingest could go were reading a batch free: the floor its other parts set
(issue 17, ingest at half the broker's rate).

gateway_parse_free_vs_mosquitto_sub_ratio: the real gateway (`meetkit-gateway run`, its MQTT
source, writer, store and acknowledgements, as bench/gateway.py runs it) on bench/gateway.py's
ingest stream, but with every batch of the stream parsed, checked and encoded for the store
BEFORE the clock starts: the gateway process reads the stream's files as it starts (a
sitecustomize.py on its PYTHONPATH) and `payload.parse_batch` becomes a lookup of the batch made
for those very bytes (anything else is parsed as usual). Everything else is what the gateway
does: paho, the queue, one transaction per group, the INSERTs into `recs` and its indexes, the
acknowledgements to the nodes and the PUBACKs. Its rate over mosquitto_sub's on the same stream
from the same publishers, alternately, each on a fresh broker; median of RUNS; the same clock and
checks as gateway_ingest_vs_mosquitto_sub_ratio (every record stored, every seq acknowledged).

gateway_ingest_vs_mosquitto_sub_ratio cannot go above this figure on the same machine unless the
store's writes or the MQTT side get cheaper: it is what is left when the parse and the encoding,
the only work that grows with the values of a message besides SQLite's, cost nothing.

    .venv/bin/python -m bench.ingest_floor
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.gateway import RUNS, gateway_run, ingest_stream, mosquitto_sub_run
from bench.results import median, record

#: in the gateway process, before `meetkit-gateway run` starts: the stream's batches made in advance
_SITECUSTOMIZE = '''
import gc, os, time
from pathlib import Path
from meetkit_gateway import payload

_made = {}
for f in Path(os.environ["MEETKIT_PARSED_STREAM"]).glob("*.lines"):
    node = f.stem
    for line in f.read_bytes().splitlines():
        _made[line] = payload.parse_batch(line, node, time.time(), encoded=True)
_parse = payload.parse_batch


def _lookup(data, topic_node, *args, **kwargs):
    batch = _made.get(data)
    return batch if batch is not None and batch.node == topic_node else _parse(data, topic_node, *args, **kwargs)


payload.parse_batch = _lookup
gc.collect()
gc.freeze()  # the made batches are not the collector's work during the run
'''


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """`values` in os.environ meanwhile (the gateway processes started inherit them), then as before."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        work = Path(tmp)
        streams, files = ingest_stream(work)
        site = work / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        readings = sum(s.readings for s in streams)
        messages = sum(len(s.messages) for s in streams)
        free: list[float] = []
        sub: list[float] = []
        cpu: list[float] = []
        for i in range(RUNS):  # alternately, which goes first changing too
            pair = ["sub", "free"]
            for kind in pair if i % 2 == 0 else reversed(pair):
                if kind == "sub":
                    r = mosquitto_sub_run(work / f"sub{i}", streams, files)
                    sub.append(readings / r.seconds)
                    continue
                with _environ(PYTHONPATH=str(site), MEETKIT_PARSED_STREAM=str(work)):
                    r = gateway_run(work / f"free{i}", streams, files)
                free.append(readings / r.seconds)
                cpu.append((r.cpu_s or 0) / messages * 1e6)
    record("gateway_parse_free_vs_mosquitto_sub_ratio", round(median(free) / median(sub), 3), "ratio", "higher",
           {"gateway_readings_per_s": round(median(free)), "mosquitto_sub_readings_per_s": round(median(sub)),
            "gateway_readings_per_s_runs": [round(r) for r in free],
            "mosquitto_sub_readings_per_s_runs": [round(r) for r in sub],
            "pair_ratios": [round(f / s, 3) for f, s in zip(free, sub)],
            "gateway_cpu_us_per_message_runs": [round(c) for c in cpu],
            "readings": readings, "messages": messages, "runs": RUNS,
            "what": "the real gateway on the ingest stream with every batch parsed, checked and encoded "
                    "before the clock starts (payload.parse_batch a lookup): the floor the MQTT side, the "
                    "writer's bookkeeping, SQLite and the acknowledgements set",
            "clock": "first publish to the acknowledgement that completes every seq (bench/gateway.py)"})


if __name__ == "__main__":
    run()
