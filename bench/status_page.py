"""What the status page's ranges and `make demo`'s backfill cost. `.venv/bin/python -m bench.status_page`

page_series_s{hours}: the wall time of /api/series's answer (http.series_doc, what a worker thread
computes) for one node with 30 days of records a minute apart (43,200 records of pm25, temp, rh,
press and LAeq, written through the store's own API into a fresh store under build/bench/), for
the page's ranges side by side: 24 h (every record), 7 d (10-minute means), 30 d (hourly means).
Median of 3 runs, interleaved.

demo_backfill_x_realtime: `meetkit demo --backfill 1` (three simulated nodes, a real broker and
gateway): simulated seconds filled in per wall second, from the demo's start until its table says
every node is live; the three nodes run at once, so it is each node's pace. The 24 h of `make demo`
take 86,400 s over this figure.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.results import median, record
from meetkit_tools.services import free_port

ROOT = Path(__file__).resolve().parents[1]
HOURS = (24, 168, 720)


def _store(path: Path) -> None:
    from meetkit_gateway import payload
    from meetkit_gateway.store import Store

    now = int(time.time()) // 60 * 60
    t0 = now - 30 * 86400
    with Store(path) as s:
        for b in range(30 * 1440 // 15):  # batches of 15 records: under the 4 KB message limit
            recs = [{"seq": q, "ts": t0 + q * 60, "up": q * 60, "dur": 60, "pm25": [5.0, 4.0, 7.0, 58],
                     "temp": [12.5, 12.0, 13.0, 12], "rh": [80.0, 79.0, 81.0, 12],
                     "press": [1010.0, 1009.0, 1011.0, 12], "LAeq": [55.0, 50.0, 60.0, 60]}
                    for q in range(b * 15, b * 15 + 15)]
            doc = {"v": 1, "node": "m-01", "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc",
                   "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
                   "units": {"pm25": "ug/m3", "temp": "degC", "rh": "%", "press": "hPa", "LAeq": "dB"}, "recs": recs}
            s.add_batch(payload.parse_batch(json.dumps(doc).encode(), "m-01"), received_at=time.time())


def series() -> None:
    from meetkit_gateway.http import series_doc
    from meetkit_gateway.store import Store

    work = ROOT / "build" / "bench" / "status_page"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = work / "gateway.db"
    _store(db)
    runs: dict[int, list[float]] = {h: [] for h in HOURS}
    points: dict[int, int] = {}
    for _ in range(3):
        for h in HOURS:
            with Store(db, readonly=True) as s:
                t = time.perf_counter()
                doc = series_doc(s, "m-01", h)
                runs[h].append(time.perf_counter() - t)
                points[h] = len(doc["start"])
    for h in HOURS:
        record(f"page_series_s{{hours={h}}}", round(median(runs[h]), 3), "s", "lower",
               {"records": 43200, "points": points[h], "runs": [round(x, 3) for x in runs[h]],
                "command": ".venv/bin/python -m bench.status_page"})


def backfill() -> None:
    port = free_port()
    work = ROOT / "build" / "bench" / "demo"
    cmd = [str(Path(sys.executable).parent / "meetkit"), "demo", "--workdir", str(work), "--backfill", "1",
           "--port", str(port)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    table: list[str] = []
    wall = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            table.append(line)
            if line.startswith("stored:"):
                rows = [l for l in table if re.match(r"(street|road|site)-01\s", l)][-3:]
                if len(rows) == 3 and all(re.search(r"\slive\s", r) for r in rows):
                    wall = time.monotonic() - t0
                    break
                table.clear()
            if time.monotonic() - t0 > 900:
                break
    finally:
        proc.terminate()
        proc.wait(60)
    record("demo_backfill_x_realtime", None if wall is None else round(3600 / wall, 1),
           "simulated s per wall s", "higher",
           {"nodes": 3, "backfill_h": 1, "wall_s": None if wall is None else round(wall, 1),
            "command": ".venv/bin/python -m bench.status_page"})


def run() -> None:
    series()
    backfill()


if __name__ == "__main__":
    run()
