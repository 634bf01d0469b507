"""The public page (`meetkit-gateway publish`) on a store of full records (the 12 quantities of the
contract's example record) at 1-minute intervals.

public_publish_vs_export_ratio: seconds of `publish` (gather and write the whole site) over seconds
  of `export --format json` of the same node's same days and quantities (pm25, pm10, LAeq): the
  store's streaming reader of the same records, the least work that reads them. Side by side on one
  file, alternating, medians of REPEAT runs each. The detail has the absolute times, records per
  second, and what a year of one node takes at that rate (a first run, without a cache).
public_publish_cached_vs_cold_ratio: seconds of `publish` when the last run's cache is there and no
  record changed (it reads the store's hourly fingerprints and the last 7 days for the plots) over
  a run without the cache (every day computed). Medians of REPEAT runs each, alternating.

    .venv/bin/python -m bench.public
"""

from __future__ import annotations

import copy
import io
import json
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.results import median, record
from meetkit_gateway.export import Selection, export
from meetkit_gateway.payload import parse_batch
from meetkit_gateway.public import publish
from meetkit_gateway.public.site import CACHE
from meetkit_gateway.store import Store

DAYS = 30
REPEAT = 3
PER_BATCH = 5
NODE = "ams-001"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _example_record() -> dict:
    from tests.gateway.conftest import EXAMPLE  # the contract's own example, read from docs/payload.md

    return copy.deepcopy(EXAMPLE["recs"][1])


def build(db: Path, now: int) -> int:
    rec = _example_record()
    rec.pop("f", None), rec.pop("err", None)
    t0 = now - DAYS * 86400
    n = DAYS * 1440
    with Store(db) as s:
        batches = []
        for i in range(0, n, PER_BATCH):
            recs = []
            for seq in range(i, min(n, i + PER_BATCH)):
                r = dict(rec, seq=seq, ts=t0 + seq * 60, up=seq * 60, dur=60)
                r["LAeq"] = [50.0 + (seq % 17), 40.0, 70.0, 60]
                recs.append(r)
            doc = {"v": 1, "node": NODE, "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc",
                   "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
                   "units": {"pm25": "ug/m3"}, "recs": recs}
            batches.append((parse_batch(json.dumps(doc, separators=(",", ":")).encode(), NODE, now=now), now))
            if len(batches) == 50:
                s.add_batches(batches)
                batches = []
        if batches:
            s.add_batches(batches)
    return n


def run() -> None:
    now = int(time.time()) // 60 * 60
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        n = build(work / "gateway.db", now)
        register = {NODE: {"name": "Dam", "lat": 52.37, "lon": 4.89}}
        tz = ZoneInfo("Europe/Amsterdam")
        pub, exp, warm = [], [], []
        for _ in range(REPEAT):
            (work / "site" / CACHE).unlink(missing_ok=True)
            with Store(work / "gateway.db", readonly=True) as s:
                t = time.perf_counter()
                publish(s, register, work / "site", tz, now, DAYS + 1)
                pub.append(time.perf_counter() - t)
            with Store(work / "gateway.db", readonly=True) as s:
                t = time.perf_counter()
                site, _ = publish(s, register, work / "site", tz, now, DAYS + 1)
                warm.append(time.perf_counter() - t)
                assert site.counts["computed"] == 0, site.counts
            with Store(work / "gateway.db", readonly=True) as s:
                t = time.perf_counter()
                export(s, Selection(since=now - (DAYS + 1) * 86400, quantities=("pm25", "pm10", "LAeq")), "json",
                       None, io.StringIO())
                exp.append(time.perf_counter() - t)
    p, e = median(pub), median(exp)
    record("public_publish_vs_export_ratio", p / e, "ratio", "lower", {
        "records": n, "days": DAYS, "interval_s": 60, "repeat": REPEAT, "publish_s": round(p, 3),
        "export_json_s": round(e, 3), "publish_records_per_s": round(n / p),
        "year_of_one_node_s": round(365 * 1440 / (n / p), 1),
        "publish_runs_s": [round(x, 3) for x in pub], "export_runs_s": [round(x, 3) for x in exp]})
    w = median(warm)
    record("public_publish_cached_vs_cold_ratio", w / p, "ratio", "lower", {
        "records": n, "days": DAYS, "cached_s": round(w, 3), "cold_s": round(p, 3), "repeat": REPEAT,
        "cached_runs_s": [round(x, 3) for x in warm]})


if __name__ == "__main__":
    run()
