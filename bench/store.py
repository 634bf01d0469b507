"""The bounded store and the open-data export, on a store of full records (the 12 quantities of the
contract's example record, as the busy-road node sends them).

store_bytes_per_record: bytes of pages in use per stored record; what `[store] max_bytes` holds.
  The detail says how many days of 50 nodes at 1-minute intervals 2 GB (the default) holds.
prune_step_vs_group_commit_ratio: the longest pruning transaction (a slice of SLICE records, what
  ingest may wait for) over the median commit of a group of 50 batches, side by side on one file.
upgrade_vacuum_vs_quick_check_ratio: the one VACUUM that converts a schema-3 store to incremental
  auto-vacuum, over the `PRAGMA quick_check` every start already does (both read the whole file).
export_peak_rss_ratio_10x_rows: peak RSS of `export` over 10x the readings, over 1x: 1.0 is
  constant memory (it streams).
export_vs_sqlite3_cli_ratio: readings per second of `export --format csv` over the sqlite3 CLI's
  `.mode csv` of the same records as rows (schema 9's join), the least work that writes those rows.
store_export_new_vs_old_ratio, store_readings_new_vs_old_ratio, store_series_new_vs_old_ratio,
store_forward_new_vs_old_ratio: the readers' queries (export's, `readings`', the page's plot, a
  forwarder's batches) on schema 9's layout (one row per reading) over the same on today's (a
  record's readings in one row), the same firmware-made records in both, alternating, medians:
  old seconds over new, above 1 today's is faster.
store_compact_migration_records_per_s: how fast migration 11 moves a schema-9 store's records.
store_disk_write_bytes_per_reading_field: bytes the process writes to disk per reading when each
  batch of one record is its own commit (as in the field: a record goes out when it closes, and a
  minute's few batches seldom meet in one group), not a backlog's groups.
store_disk_write_field_new_vs_old_ratio: that over schema 9's layout's, side by side.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.results import median, record
from meetkit_gateway.alarms import Alarms
from meetkit_gateway.payload import QUANTITIES, parse_batch
from meetkit_gateway.retention import SLICE, Bounds, Pruner
from meetkit_gateway.http import SERIES
from meetkit_gateway.store import MIGRATIONS, Store
from meetkit_tools.dev import store9

T0 = 1795510800
PER_BATCH = 5
SMALL, LARGE = 20_000, 200_000  # records (x 12 readings)
#: the old and the new layout side by side: nodes x records of firmware-made data, runs of each query
COMPARE_NODES, COMPARE_RECORDS, COMPARE_RUNS = 20, 2000, 5
FORWARD_BATCH = 5000  # a forwarder's default batch of readings
FIELD_RECORDS = 4000  # records committed a batch at a time (after as many to warm up)

RECORD = {"dur": 60, "pm1": [3.1, 2, 5, 58], "pm25": [5.2, 4, 7, 58], "pm10": [8.9, 6, 12, 58],
          "temp": [12.34, 12.3, 12.4, 12], "rh": [81.2, 80.9, 81.5, 12], "press": [1013.21, 1013.1, 1013.3, 12],
          "LAeq": [55.2, 48.3, 67.1, 60], "LA10": 58.4, "LA50": 53.9, "LA90": 49.6, "LZeq": 63.8, "cov": 1,
          "f": {"pm25": ["rh_high"]}}
ENVELOPE = {"v": 1, "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc",
            "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
            "units": {k: q.unit for k, q in QUANTITIES.items()}}


def batches(n: int, nodes: int = 10, first: int = 0):
    """Batches of PER_BATCH records, round robin over the nodes."""
    for k in range(first, first + n, PER_BATCH):
        node = f"ams-{k // PER_BATCH % nodes:03d}"
        seq0 = k // (PER_BATCH * nodes) * PER_BATCH
        doc = copy.deepcopy(ENVELOPE) | {"node": node}
        doc["recs"] = [dict(RECORD, seq=s, ts=T0 + 60 * s, up=60 * s) for s in range(seq0, seq0 + PER_BATCH)]
        yield parse_batch(json.dumps(doc, separators=(",", ":")).encode(), node), T0 + 60 * seq0


def fill(store: Store, n: int, first: int = 0, group: int = 200) -> list[float]:
    """Commit `n` records in groups of `group` batches; the commit times."""
    times, pending = [], []
    for b, at in batches(n, first=first):
        pending.append((b, at))
        if len(pending) == group:
            t = time.perf_counter()
            with store.transaction():
                store.add_batches(pending)  # as the writer commits a group
            times.append(time.perf_counter() - t)
            pending = []
    if pending:
        with store.transaction():
            store.add_batches(pending)
    return times


def bench_size_and_pruning(work: Path) -> None:
    with Store(work / "prune.db") as s:
        fill(s, SMALL)
        per_record = s.used_bytes() / SMALL
        # the bound at 3/4 of what is there; then more groups of 50 batches arrive, pruned between them
        p = Pruner(s, Bounds(s.used_bytes() * 3 // 4, 0), Alarms(), check_every_s=0)
        steps: list[float] = []
        commits: list[float] = []
        for round_ in range(20):
            commits += fill(s, 50 * PER_BATCH, first=SMALL + round_ * 50 * PER_BATCH, group=50)
            while True:
                t = time.perf_counter()
                more = p.step()
                steps.append(time.perf_counter() - t)
                if not more:
                    break
        dropped = s.counters().get("dropped.bytes", 0)
    per_day = 50 * 1440
    record("store_bytes_per_record", round(per_record, 1), "bytes/record", "lower",
           {"quantities_per_record": 12, "records": SMALL,
            "days_in_2GB_for_50_nodes_at_1min": round(2e9 / per_record / per_day, 1),
            "days_in_2GB_for_10_nodes_at_1min": round(2e9 / per_record / (10 * 1440), 1)})
    record("prune_step_vs_group_commit_ratio", round(max(steps) / median(commits), 3), "ratio", "lower",
           {"prune_step_max_ms": round(max(steps) * 1000, 2), "prune_step_median_ms": round(median(steps) * 1000, 2),
            "prune_steps": len(steps), "slice_records": SLICE, "records_dropped": dropped,
            "group_commit_median_ms": round(median(commits) * 1000, 2), "group_batches": 50,
            "synchronous": "FULL (every commit fsynced)", "disk": "this machine's, not an SD card"})


def schema3(path: Path, n: int) -> None:
    """A schema-3 store as a gateway of that schema made it (MIGRATIONS[:3], rowid ids, no
    auto-vacuum), with `n` records of two readings: what the upgrade to today's schema starts from.
    Built from the first three migrations, so later ones never need an edit here."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    for m in MIGRATIONS[:3]:
        con.executescript(m)
    con.execute("PRAGMA user_version = 3")
    t0 = 1795510800
    con.execute("BEGIN")
    for k in range(n):
        rid = con.execute(
            "INSERT INTO records (node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors)"
            " VALUES (?, 1, ?, ?, ?, ?, 60, ?, '0.1.0', 'esp32-devkitc', '{\"pm\":\"pms5003\"}')",
            (f"ams-{k % 50:03d}", k, t0 + 60 * k, t0 + 60 * k, 60 * k, t0 + 60 * k)).lastrowid
        con.executemany("INSERT INTO readings (record_id, quantity, avg, min, max, n, unit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(rid, "pm25", 5.0 + k % 7, 4.0, 9.0, 58, "ug/m3"), (rid, "temp", 12.5, 12.0, 13.0, 12, "degC")])
    con.execute("COMMIT")
    if con.execute("PRAGMA auto_vacuum").fetchone() != (0,):
        raise RuntimeError("bench/store.py: the schema-3 store has auto-vacuum on")
    con.close()


def bench_upgrade(work: Path) -> None:
    vac, chk = [], []
    size = 0
    for k in range(3):
        path = work / f"v3-{k}.db"
        schema3(path, LARGE // 4)
        size = path.stat().st_size
        con = sqlite3.connect(path)
        t = time.perf_counter()
        con.execute("PRAGMA quick_check").fetchall()
        chk.append(time.perf_counter() - t)
        con.close()
        t = time.perf_counter()
        with Store(path) as s:
            assert s.incremental
        vac.append(time.perf_counter() - t)
        for side in ("", "-wal", "-shm"):
            Path(f"{path}{side}").unlink(missing_ok=True)
    record("upgrade_vacuum_vs_quick_check_ratio", round(median(vac) / median(chk), 2), "ratio", "lower",
           {"file_mb": round(size / 1e6, 1), "upgrade_s_median": round(median(vac), 3),
            "quick_check_s_median": round(median(chk), 3), "vacuum_mb_per_s": round(size / 1e6 / median(vac), 1),
            "runs": len(vac), "note": "the upgrade VACUUMs stores up to VACUUM_AT_UPGRADE_MAX only; since schema 11 it also "
                    "moves the records to the compact layout first (store_compact_migration_records_per_s)"})


def bench_old_vs_new(work: Path) -> None:
    """The readers' queries on schema 9's layout (tools/dev/store9.py) and on today's, holding the
    same records, side by side: each ratio is old seconds over new (above 1: today's is faster)."""
    todo = store9.batches(COMPARE_NODES, COMPARE_RECORDS, T0)
    old_path, new_path = work / "old.db", work / "new.db"
    con = store9.create(old_path)
    for k in range(0, len(todo), 200):
        store9.add_batches(con, todo[k:k + 200])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    migrate_path = work / "migrate.db"
    shutil.copy(old_path, migrate_path)
    t = time.perf_counter()
    Store(migrate_path).close()
    migrate_s = time.perf_counter() - t
    with Store(new_path) as s:
        for k in range(0, len(todo), 200):
            with s.transaction():
                s.add_batches(todo[k:k + 200])
    records = sum(len(b.records) for b, _ in todo)
    nodes = sorted({b.node for b, _ in todo})
    end = T0 + COMPARE_RECORDS * 60
    old = sqlite3.connect(f"file:{old_path}?mode=ro", uri=True)
    new = Store(new_path, readonly=True)

    def forward_old() -> int:
        n, after = 0, 0
        newest = old.execute("SELECT max(id) FROM records").fetchone()[0]
        while after < newest:
            rows = store9.forward(old, after, newest, FORWARD_BATCH + 1)
            n += len(rows)
            after = rows[-1].record_id
        return n

    def forward_new() -> int:
        n, after = 0, 0
        newest = new.newest_record_id()
        while after < newest:
            rows = new.forward_readings(after, newest, FORWARD_BATCH + 1)
            n += len(rows)
            after = rows[-1].record_id
        return n

    since = end - 6 * 3600
    cases = {
        # export: every node's whole period, record by record (export.py's query)
        "export": (lambda: sum(1 for n in nodes for _ in store9.export(old, n, T0, end)),
                   lambda: sum(1 for n in nodes for _ in new.export_readings(n, T0, end))),
        # `meetkit-gateway readings --since 6h`, every node
        "readings": (lambda: len(store9.readings(old, since)), lambda: len(new.readings(since=since))),
        # the page's plot of each node's last 24 hours (http.py SERIES)
        "series": (lambda: sum(len(store9.series(old, n, end - 86400, SERIES)) for n in nodes),
                   lambda: sum(len(new.series(n, end - 86400, SERIES)) for n in nodes)),
        # a forwarder draining the store in batches of FORWARD_BATCH readings
        "forward": (forward_old, forward_new),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    counts: dict[str, int] = {}
    for _ in range(COMPARE_RUNS):
        for name, (run_old, run_new) in cases.items():
            for side, run in ((0, run_old), (1, run_new)):
                t = time.perf_counter()
                n = run()
                times[name][side].append(time.perf_counter() - t)
                if counts.setdefault(f"{name}_{side}", n) != n:
                    raise RuntimeError(f"bench/store.py: {name} gave {n} rows, then {counts[f'{name}_{side}']}")
    old.close()
    new.close()
    for name in cases:
        if counts[f"{name}_0"] != counts[f"{name}_1"]:
            raise RuntimeError(f"bench/store.py: {name}: old layout {counts[f'{name}_0']} rows, new {counts[f'{name}_1']}")
        o, n = median(times[name][0]), median(times[name][1])
        record(f"store_{name}_new_vs_old_ratio", round(o / n, 3), "ratio", "higher",
               {"old_s_median": round(o, 4), "new_s_median": round(n, 4), "rows": counts[f"{name}_0"],
                "runs": COMPARE_RUNS, "records": records, "nodes": len(nodes),
                "what": "schema 9's query and rows (tools/dev/store9.py) over today's Store method, same records: "
                        "old seconds / new seconds, above 1 is faster"})
    old_bytes, new_bytes = old_path.stat().st_size, new_path.stat().st_size
    record("store_compact_migration_records_per_s", round(records / migrate_s), "records/s", "higher",
           {"records": records, "seconds": round(migrate_s, 2), "schema9_file_mb": round(old_bytes / 1e6, 1),
            "bytes_per_record_schema9": round(old_bytes / records, 1),
            "bytes_per_record_now": round(new_bytes / records, 1),
            "note": "this machine's disk; the gateway's start waits for it (store/compact.py)"})


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no write_bytes")


def bench_field_writes(work: Path) -> None:
    """What a commit of one record costs the disk, as in the field: a node's batch a minute, each
    its own transaction (a group of one), after a warm-up that fills the WAL once; today's layout
    and schema 9's (tools/dev/store9.py's writer) with the same records."""
    # a batch of one record, as a node sends a record when it closes
    todo = [(dataclasses.replace(b, records=(r,)), at) for b, at in batches(FIELD_RECORDS * 2) for r in b.records]
    warm, timed = todo[:len(todo) // 2], todo[len(todo) // 2:]
    written = {}
    with Store(work / "field.db") as s:
        for b, at in warm:
            with s.transaction():
                s.add_batches([(b, at)])
        before = _write_bytes()
        for b, at in timed:
            with s.transaction():
                s.add_batches([(b, at)])
        written["new"] = _write_bytes() - before
    con = store9.create(work / "field9.db")
    for one in warm:
        store9.add_batches(con, [one])
    before = _write_bytes()
    for one in timed:
        store9.add_batches(con, [one])
    written["old"] = _write_bytes() - before
    con.close()
    readings = len(timed) * 12
    what = ("/proc/self/io write_bytes of the process (WAL, checkpoints into the file) per reading, each batch of "
            "one record its own commit (synchronous = FULL)")
    record("store_disk_write_bytes_per_reading_field", round(written["new"] / readings, 1), "bytes/reading", "lower",
           {"records": len(timed), "records_per_commit": 1, "bytes_written": written["new"], "what": what,
            "schema9_bytes_per_reading": round(written["old"] / readings, 1)})
    record("store_disk_write_field_new_vs_old_ratio", round(written["new"] / written["old"], 3), "ratio", "lower",
           {"new_bytes": written["new"], "old_bytes": written["old"], "records": len(timed), "what": what + ": "
            "today's layout over schema 9's (tools/dev/store9.py, its writer without the counters), same records"})


EXPORT = """
import resource, sys, time
from pathlib import Path
from meetkit_gateway.export import Selection, export
from meetkit_gateway.store import Store
with Store(sys.argv[1], readonly=True) as s, open(sys.argv[2], "w") as out:
    t = time.perf_counter()
    n = export(s, Selection(), "csv", None, out).readings
    print(n, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_export(work: Path) -> None:
    out = {}
    for name, n in (("small", SMALL), ("large", LARGE)):
        path = work / f"export-{name}.db"
        with Store(path) as s:
            fill(s, n)
        runs = []
        for _ in range(3):
            r = subprocess.run([sys.executable, "-c", EXPORT, str(path), os.devnull], capture_output=True,
                               text=True, check=True)
            readings, secs, rss_kb = r.stdout.split()
            runs.append((int(readings), float(secs), int(rss_kb)))
        out[name] = (path, runs)
    small_rss = median([r[2] for r in out["small"][1]])
    large_rss = median([r[2] for r in out["large"][1]])
    readings = out["large"][1][0][0]
    ours = median([r[1] for r in out["large"][1]])
    query = ("SELECT r.node, r.start, r.start + r.dur, g.quantity, g.avg, g.min, g.max, g.n, g.unit, g.flags, "
             "json_extract(r.sensors, '$.pm'), r.board, r.fw FROM records AS r JOIN readings AS g ON "
             "g.record_id = r.id WHERE r.start IS NOT NULL ORDER BY r.node, r.start, r.id;")
    # The reference needs the readings as rows: the same records in schema 9's layout (a row per reading).
    rows_path = work / "export-large-schema9.db"
    con = store9.create(rows_path)
    store9.add_batches(con, list(batches(LARGE)))
    con.close()
    cli = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(["sqlite3", "-readonly", "-csv", "-header", str(rows_path), query],
                       stdout=subprocess.DEVNULL, check=True)
        cli.append(time.perf_counter() - t)
    record("export_peak_rss_ratio_10x_rows", round(large_rss / small_rss, 3), "ratio", "lower",
           {"readings_small": out["small"][1][0][0], "readings_large": readings,
            "peak_rss_mb_small": round(small_rss / 1024, 1), "peak_rss_mb_large": round(large_rss / 1024, 1),
            "runs": 3, "note": "a fresh process each, interpreter included"})
    record("export_vs_sqlite3_cli_ratio", round(median(cli) / ours, 3), "ratio", "higher",
           {"readings": readings, "export_s_median": round(ours, 3),
            "export_readings_per_s": round(readings / ours), "sqlite3_cli_s_median": round(median(cli), 3),
            "format": "csv to /dev/null",
            "reference": "the sqlite3 CLI's join of the same records in schema 9's layout (a row per reading)"})


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_size_and_pruning(work)
        bench_upgrade(work)
        bench_export(work)
        bench_old_vs_new(work)
        bench_field_writes(work)


if __name__ == "__main__":
    run()
