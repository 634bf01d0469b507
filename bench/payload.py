"""What validating a batch costs the gateway, in process, over the firmware-made stream.

payload_parse_vs_json_loads_ratio: `payload.parse_batch` (the quick path: msgspec decoding into
the contract's types, a byte-for-byte re-encoding, the Batch built) against plain `json.loads` of
the same messages, which checks nothing and builds nothing. Higher is better; above 1 the whole
validation costs less than Python's own JSON reader alone.

payload_quick_vs_full_ratio: the same against the full field-by-field checks
(`_checked_batch(decode(...))`), which every batch off the quick path takes. Higher is better.

20 nodes' backlogs of 1000 one-minute records each (bench/batches.py: about 4 400 messages of
about 55 readings), each way timed over the whole stream, the three ways alternating, 7 runs each;
the medians are compared. Alone: `.venv/bin/python -m bench.payload` (about 30 s).
"""

from __future__ import annotations

import json
import time

from meetkit_tools.dev import batches
from bench.results import median, record
from meetkit_gateway import payload

NODES, RECORDS, RUNS = 20, 1000, 7


def run() -> None:
    t0 = int(time.time()) // 60 * 60 - 14 * 86400
    streams = batches.streams(NODES, RECORDS, t0)
    messages = [(m, s.node) for s in streams for m in s.messages]
    readings = sum(s.readings for s in streams)
    now = time.time()
    quick = sum(payload._plainly_valid_batch(m, n, now) is not None for m, n in messages)

    def parse() -> None:
        for m, n in messages:
            payload.parse_batch(m, n, now)

    def loads() -> None:
        for m, _ in messages:
            json.loads(m)

    def full() -> None:
        for m, n in messages:
            payload._checked_batch(payload.decode(m), n, now)

    ways = {"parse_batch": parse, "json_loads": loads, "full_checks": full}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(RUNS):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: median(v) for k, v in times.items()}
    detail = {
        "messages": len(messages), "readings": readings, "runs": RUNS,
        "quick_path_messages": quick,
        **{f"{k}_us_per_message": round(v / len(messages) * 1e6, 1) for k, v in med.items()},
        **{f"{k}_readings_per_s": round(readings / v) for k, v in med.items()},
        **{f"{k}_s_runs": [round(t, 3) for t in v] for k, v in times.items()},
        "stream": "bench/batches.py: firmware's stats and recline, batches of at most 1800 bytes",
    }
    record("payload_parse_vs_json_loads_ratio", round(med["json_loads"] / med["parse_batch"], 3), "ratio", "higher",
           dict(detail, reference="json.loads of the same messages (no checks, no Batch)"))
    record("payload_quick_vs_full_ratio", round(med["full_checks"] / med["parse_batch"], 3), "ratio", "higher",
           dict(detail, reference="payload._checked_batch(payload.decode(m)): the full checks"))


if __name__ == "__main__":
    run()
