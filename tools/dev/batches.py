"""A fixed stream of payload-v1 batches as the firmware makes them, for the gateway's benchmarks
(bench/gateway.py, flood.py, http_clients.py) and tests/gateway/test_payload_quick.py.

Each simulated node (PMS5003, BME280, ICS43434: the 12 quantities of docs/payload.md) closes one
record a minute; its samples are summed by the firmware's own `Stat` (firmware/lib/stats.py) and
the record is written and turned into JSON by the firmware's own `recline` (firmware/lib/recline.py),
then packed into batches of at most `BATCH_BYTES` as firmware/lib/node.py does when a backlog
drains: about five records (60 readings) per message. Seeded: the same stream every run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from meetkit_gateway.payload import QUANTITIES
from meetkit_tools.dev.spoolfile import firmware_module, recline

BATCH_BYTES = 1800  # firmware/lib/node.py: a batch stays under about 2 KB
QUANTITIES_PER_RECORD = 12
INTERVAL_S = 60

stats = firmware_module("stats")


@dataclass(frozen=True)
class NodeStream:
    node: str
    boot: int
    messages: list[bytes]  # the batches, oldest first, each one MQTT message
    records: int

    @property
    def readings(self) -> int:
        return self.records * QUANTITIES_PER_RECORD


def _envelope(node: str, boot: int) -> str:
    # As firmware/lib/node.py builds it once per boot.
    units = {k: q.unit for k, q in QUANTITIES.items()}
    sensors = {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"}
    dumps = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    return (f'{{"v":1,"node":{dumps(node)},"boot":{boot},"fw":"0.3.0","board":"esp32-devkitc",'
            f'"sensors":{dumps(sensors)},"units":{dumps(units)},')


def _record_line(rng: random.Random, boot: int, seq: int, ts: int) -> tuple[list, list[str]]:
    """One minute of a street: PM frames every ~1 s, climate every 5 s, noise levels."""
    pm = rng.uniform(2.0, 35.0)
    pm_stats = [stats.Stat(10) for _ in range(3)]   # ug/m3 -> 0.1 ug/m3, as firmware/lib/sample_pm.py
    for _ in range(58):
        frame = pm * rng.uniform(0.8, 1.25)
        for st, share in zip(pm_stats, (0.6, 1.0, 1.6)):
            st.add(int(frame * share))
    t, h, p = stats.Stat(), stats.Stat(100, 1024), stats.Stat()
    temp, rh = rng.uniform(2.0, 28.0), rng.uniform(40.0, 95.0)
    for _ in range(12):
        t.add(int((temp + rng.uniform(-0.1, 0.1)) * 100))
        h.add(int((rh + rng.uniform(-0.5, 0.5)) * 1024))
        p.add(int(rng.uniform(101300, 101330)))
    la = rng.uniform(45.0, 75.0)
    cdb = lambda v: round(v * 100)  # noqa: E731  (dB -> 0.01 dB, as firmware/lib/sample_noise.py)
    parts = [(k, st.result()) for k, st in zip(("pm1", "pm25", "pm10"), pm_stats)]
    parts += [("temp", t.result()), ("rh", h.result()), ("press", p.result())]
    parts.append(("LAeq", (cdb(la), cdb(la - rng.uniform(5, 12)), cdb(la + rng.uniform(6, 20)), 60)))
    parts += [("LA10", cdb(la + 3.1)), ("LA50", cdb(la - 1.2)), ("LA90", cdb(la - 5.4)), ("LZeq", cdb(la + 8.3)),
              ("cov", round(rng.uniform(0.995, 1.0) * 1000))]
    flags = {"pm25": ["rh_high"], "pm10": ["rh_high"]} if rh > 85 else {}
    errs = {"pm": 1} if rng.random() < 0.02 else {}
    keys = recline.keys_of(parts)
    return recline.record(boot, seq, ts, seq * INTERVAL_S + 12, INTERVAL_S, parts, flags, errs, keys), keys


def node_stream(node: str, records: int, t0: int, seed: int, boot: int = 1) -> NodeStream:
    """`records` one-minute records of `node` from Unix time `t0`, as batches of a backlog."""
    rng = random.Random(seed)
    head = _envelope(node, boot) + '"dropped":0,"recs":['
    messages: list[bytes] = []
    batch: list[str] = []
    size = len(head) + 2
    for seq in range(records):
        line, keys = _record_line(rng, boot, seq, t0 + seq * INTERVAL_S)
        rec = recline.to_json(line, keys, None)
        if batch and size + len(rec) + 1 > BATCH_BYTES:
            messages.append((head + ",".join(batch) + "]}").encode())
            batch, size = [], len(head) + 2
        batch.append(rec)
        size += len(rec) + 1
    if batch:
        messages.append((head + ",".join(batch) + "]}").encode())
    return NodeStream(node, boot, messages, records)


def streams(nodes: int, records: int, t0: int) -> list[NodeStream]:
    """`nodes` nodes (bench-000, bench-001, ...) with `records` records each."""
    return [node_stream(f"bench-{i:03d}", records, t0, seed=i) for i in range(nodes)]
