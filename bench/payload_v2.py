"""What a record costs the gateway to read and check in payload v2 (packed records) against v1.

gateway_v2_vs_v1_record_cost_ratio: CPU time of `payload.parse_batch` per record for the same
records sent as payload v2 (packed, the boot's envelope kept, as after a node's first batch of a
session) over the same records as v1 batches; one record a batch (the node's default). Lower is
better; the goal is 1 or less. `_batch5` and `_batch15`: v2 with `batch_records` 5 and 15 (v1 in
batches of up to 5, as a node's backlog drains). `detail` has the microseconds per record, and the
checked way's (`_checked_batch`, without the quick way: what v2 cost before it).

The records are made by the firmware's own modules under CPython (firmware/lib/recline.py,
recv2.py): a street whose levels drift from minute to minute (PM, climate, noise; a few nulls,
flags and error counts), and in `detail` the harder stream of meetkit_tools.dev.batches, whose every
level is drawn anew each minute (large deltas, long codes). Each way timed over the whole stream,
alternating, RUNS times; medians compared (time.process_time). Alone: `.venv/bin/python -m
bench.payload_v2` (about 20 s).
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from bench.results import median, record
from meetkit_gateway import payload
from meetkit_tools.dev import batches
from meetkit_tools.dev.spoolfile import firmware_module

recline = firmware_module("recline")
recv2 = firmware_module("recv2")

NODE, BOOT, RECORDS, RUNS = "bench-000", 1, 300, 7
BATCH_BUF = 1800 + 512  # firmware/lib/node.py's batch buffer
KEYS = ["pm1", "pm25", "pm10", "temp", "rh", "press", "LAeq", "LA10", "LA50", "LA90", "LZeq", "cov"]


def street(n: int, t0: int, seed: int = 3) -> list[list[Any]]:
    """n one-minute records of a street as recline.record makes them: levels that drift."""
    rnd = random.Random(seed)
    pm, temp, rh, press, la = 120.0, 1250.0, 7000.0, 101320.0, 6200.0
    out = []
    for i in range(n):
        pm = min(max(pm + rnd.gauss(0, 8), 10), 3000)
        temp += rnd.gauss(0, 4)
        rh = min(max(rh + rnd.gauss(0, 20), 2000), 9900)
        press += rnd.gauss(0, 2)
        la = min(max(la + rnd.gauss(0, 120), 3500), 9000)
        p = [(k, (round(pm * f), round(pm * f * 0.6), round(pm * f * 1.5), 58 - (rnd.random() < 0.05)))
             for k, f in (("pm1", 0.6), ("pm25", 1.0), ("pm10", 1.6))]
        p += [("temp", (round(temp), round(temp) - 8, round(temp) + 9, 12)),
              ("rh", (round(rh), round(rh) - 30, round(rh) + 25, 12)),
              ("press", (round(press), round(press) - 3, round(press) + 4, 12)),
              ("LAeq", (round(la), round(la) - 700 - rnd.randrange(300), round(la) + 900 + rnd.randrange(900), 60)),
              ("LA10", round(la) + 310), ("LA50", round(la) - 120), ("LA90", round(la) - 540),
              ("LZeq", round(la) + 830), ("cov", 1000 - rnd.randrange(4))]
        if rnd.random() < 0.02:
            p[1] = ("pm25", None)
        flags = {"pm25": ["rh_high"], "pm10": ["rh_high"]} if rh > 8500 else {}
        errs = {"pm": 1} if rnd.random() < 0.02 else {}
        out.append(recline.record(BOOT, i, t0 + 60 * i, 12 + 60 * i, 60, p, flags, errs, KEYS))
    return out


def drawn(n: int, t0: int) -> list[list[Any]]:
    """n records of meetkit_tools.dev.batches: every level drawn anew each minute."""
    rng = random.Random(5)
    return [batches._record_line(rng, BOOT, i, t0 + 60 * i)[0] for i in range(n)]


def _envelope() -> str:
    return batches._envelope(NODE, BOOT)


def messages(recs: list[list[Any]], per: int) -> tuple[list[bytes], list[bytes]]:
    """The v2 batches the node makes, `per` records a batch, the first with the envelope; and the
    v1 batches of the same records, up to 5 a batch."""
    env = _envelope()
    v2s, v1s = [], []
    i = 0
    while i < len(recs):
        buf = bytearray(BATCH_BUF)
        n, used = recv2.batch(buf, BOOT, recs[i:i + per], env if i == 0 else None, KEYS, None, 0)
        v2s.append(bytes(buf[:used]))
        for j in range(i, i + n, 5):
            chunk = recs[j:min(j + 5, i + n)]
            v1s.append((env + '"recs":[' + ",".join(recline.to_json(r, KEYS, None) for r in chunk) + "]}").encode())
        i += n
    return v2s, v1s


def _cpu(f: Callable[[], None]) -> float:
    t = time.process_time()
    f()
    return time.process_time() - t


def compare(recs: list[list[Any]], per: int, now: float) -> dict[str, Any]:
    v2s, v1s = messages(recs, per)
    env = payload.parse_batch(v2s[0], NODE, now).envelope
    kept = lambda node, boot: env  # noqa: E731  (the store's envelope of the boot)
    later = v2s[1:]  # those read with the envelope kept: what a node sends all session
    n = len(recs) - len(payload.parse_batch(v2s[0], NODE, now).records)
    quick = payload._quick_packed

    def v1() -> None:
        for m in v1s:
            payload.parse_batch(m, NODE, now)

    def v2() -> None:
        for m in later:
            payload.parse_batch(m, NODE, now, envelope_of=kept)

    def checked() -> None:
        payload._quick_packed = lambda *a: None
        try:
            for m in later:
                payload.parse_batch(m, NODE, now, envelope_of=kept)
        finally:
            payload._quick_packed = quick

    assert all(payload.parse_batch(m, NODE, now, envelope_of=kept).refused == () for m in later)
    times: dict[str, list[float]] = {"v1": [], "v2": [], "checked": []}
    for _ in range(RUNS):
        times["v1"].append(_cpu(v1) / len(recs))
        times["v2"].append(_cpu(v2) / n)
        times["checked"].append(_cpu(checked) / n)
    us = {k: round(median(v) * 1e6, 2) for k, v in times.items()}
    return {"v1_us_per_record": us["v1"], "v2_us_per_record": us["v2"],
            "v2_checked_us_per_record": us["checked"], "ratio": round(us["v2"] / us["v1"], 3),
            "v2_batches": len(later), "v1_batches": len(v1s), "records": n}


def run() -> None:
    now = time.time()
    t0 = int(now) // 60 * 60 - 86400
    streets, drawn_recs = street(RECORDS, t0), drawn(RECORDS, t0)
    for per, suffix in ((1, ""), (5, "_batch5"), (15, "_batch15")):
        got = compare(streets, per, now)
        hard = compare(drawn_recs, per, now)
        record(f"gateway_v2_vs_v1_record_cost_ratio{suffix}", got["ratio"], "ratio", "lower",
               {**got, "batch_records": per, "stream": f"{RECORDS} one-minute records of a street, levels drifting",
                "drawn_anew_each_minute": hard, "runs": RUNS, "clock": "time.process_time, medians",
                "command": ".venv/bin/python -m bench.payload_v2"})
        print(f"batch {per}: v2/v1 {got['ratio']} ({got['v2_us_per_record']} / {got['v1_us_per_record']} us per "
              f"record; checked way {got['v2_checked_us_per_record']}); levels drawn anew: {hard['ratio']}")


if __name__ == "__main__":
    run()
