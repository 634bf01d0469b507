"""Power cuts at random points of an update's download, install and first boot: does any node end
bricked?

A site as an operator runs it (tools/dev/fleetsite.py: the generated broker accounts and ACL, the
real `meetkit-gateway run`, a release built like `meetkit release build --arch x64` and added).
First a calibration node is updated without a torn write: a clean cut just before `fleet update`
and one just after its proof give the flash programs (counted over the node's life) the update
spans. Then batches of NODES nodes, each given CUTS flash programs drawn at random (seeded) from
that span (half the nodes) or from its last LATE programs (the other half: the install and the
first boot are a small part of the span), beyond them a margin for the extra boots: at each, that program is torn and the node
powers on again (NodeSpec.power_cuts; the simulated littlefs keeps what a real one would). A
batch is one rollout with every node a canary (`fleet update --canary NODES`). Each cut is placed
by the console lines before it: download ("ota: R accepted" / resuming, up to "restarting: release
R installed"), install (up to appswap's "installed the app of new/"), first boot (up to "trial:
R proved"), or before / after the update (not counted).

ota_bricked_nodes: nodes that do not end on one whole app that delivers: every app file on the
flash (boot.py, main.py, appswap.py, lib/) byte for byte the old app's or the release's, nothing
left in new/, and a record of its last boot in the gateway's database. `detail`: the cuts by phase,
how each node ended (proved / rolled back), resumed downloads, the seeds.

Alone: `.venv/bin/python -m bench.ota_powercut` (about 8 minutes).
"""

from __future__ import annotations

import random
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import record
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.fleetsite import Site, firmware_as, wait_for
from meetkit_tools.paths import FIRMWARE

OLD = "0.1.9"
NODES = 4
BATCHES = 3
CUTS = 10
LATE = 300
SPEED = 10
SEED = 15
APP_ROOT = ("boot.py", "main.py", "appswap.py")
ABORT = "the new app is removed, the old one stays"
_CUT = re.compile(r"^--- power cut at t=\d+ ms, flash write (\d+) ---", re.M)


def app_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k in APP_ROOT or k.startswith("lib/")}


def folder_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def phases(console: str, new: str) -> list[str]:
    """The phase of the update each torn cut fell in, in order."""
    out, phase = [], "before"
    marks = [(f"ota: {new} accepted", "download"), (f"ota: resuming {new}", "download"),
             (f"restarting: release {new} installed", "install"), ("appswap: installed the app of new/", "first boot"),
             (f"trial: {new} proved", "after"), ("trial: rolled back", "after")]
    for line in console.splitlines():
        if _CUT.match(line):
            out.append(phase)
            continue
        for text, p in marks:
            if text in line:
                phase = p
    return out


def delivered_last_boot(db: Path, node: str, console: str) -> bool:
    """The last record the node printed (of its last boot) is in the gateway's database."""
    boot, last = None, None
    for line in console.splitlines():
        b = re.search(rf" I node {re.escape(node)}, boot (\d+),", line)
        if b:
            boot, last = int(b[1]), None
        r = re.search(r" I record (\d+): ", line)
        if r:
            last = int(r[1])
    if boot is None or last is None or not db.exists():
        return False
    with sqlite3.connect(db) as c:
        return c.execute("SELECT 1 FROM records WHERE node = ? AND boot = ? AND seq = ?",
                         (node, boot, last)).fetchone() is not None


def update_span(tmp: Path, old_fw: Path, new: str) -> tuple[int, int]:
    site = Site(tmp, ["cal-01"])
    try:
        site.build_release(FIRMWARE, tmp / "releases" / new)
        site.cli("release", "add", str(tmp / "releases" / new))
        n = site.node("cal-01", old_fw, speed=SPEED)
        wait_for(lambda: site.status_rows().get("cal-01", {}).get("fw") == OLD, 120, "the node heard")
        n.cut_power()
        wait_for(lambda: n.power_cuts_done == 1, 60, "the first cut")
        site.cli("fleet", "update", "--release", new, "--nodes", "cal-01", "--canary", "1")
        wait_for(lambda: any(e.get("state") == "proved" for e in site.events("cal-01", "ota")), 600, "the proof")
        n.cut_power()
        wait_for(lambda: n.power_cuts_done == 2, 60, "the second cut")
        w = [int(x) for x in _CUT.findall(n.console_text())]
        return w[0], w[1]
    finally:
        site.close()


def batch(tmp: Path, old_fw: Path, new: str, start: int, end: int, rng: random.Random,
          k: int) -> list[dict[str, Any]]:
    ids = [f"pc-{k:02d}{i}" for i in range(NODES)]
    site = Site(tmp, ids)
    try:
        rel_dir = tmp / "releases" / new   # signed with this site's key
        site.build_release(FIRMWARE, rel_dir)
        site.cli("release", "add", str(rel_dir))
        # half the nodes cut anywhere in the span (most of it is the download), half in its last
        # LATE programs and a margin beyond (the install and the first boot: each cut adds a
        # boot's programs, so the later phases move on)
        margin = CUTS * 12
        cuts = {n: sorted(rng.sample(range(start, end + margin) if i % 2 == 0 else range(end - LATE, end + margin),
                                     CUTS)) for i, n in enumerate(ids)}
        nodes = {n: site.node(n, old_fw, speed=SPEED, power_cuts=cuts[n], seed=k * 10 + i + 1)
                 for i, n in enumerate(ids)}
        wait_for(lambda: all(r.get("fw") == OLD for r in site.status_rows().values())
                 and len(site.status_rows()) == NODES, 180, "every node heard")
        site.cli("fleet", "update", "--release", new, "--nodes", ",".join(ids), "--canary", str(NODES))

        def settled(n: str) -> bool:
            # proved, rolled back, or the install given up at boot (a file of new/ lost to a cut:
            # appswap keeps the old app, and the node reports nothing of it)
            return any(e.get("state") in ("proved", "rolled_back") for e in site.events(n, "ota")) \
                or ABORT in nodes[n].console_text()
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not all(settled(n) for n in ids):
            time.sleep(1)  # waits on: every node proved or rolled back
        end_t = time.monotonic() + 180
        while time.monotonic() < end_t and not all(delivered_last_boot(site.gw.db, n, nodes[n].console_text())
                                                   for n in ids):
            time.sleep(1)  # waits on: each node's latest record in the database
        out = []
        new_files = folder_files(rel_dir / "files")
        old_files = app_files(folder_files(old_fw))
        for n in ids:
            node = nodes[n]
            node.stop()
            text = node.console_text()
            delivered = delivered_last_boot(site.gw.db, n, text)
            files = node.flash_files()
            app = app_files({p: v for p, v in files.items() if not p.endswith(".old")})
            which = "new" if app == app_files(new_files) else "old" if app == old_files else "mix"
            ev = [e.get("state") for e in site.events(n, "ota")]
            out.append({"node": n, "cuts_at": cuts[n], "cut_phases": phases(text, new), "app": which,
                        "leftover": sorted(p for p in files if p.startswith("new/") or p.endswith(".old")),
                        "delivered": delivered, "events": ev, "install_given_up": [
                            line for line in text.splitlines() if ABORT in line], "resumed": text.count(f"ota: resuming {new}"),
                        "cuts_done": node.power_cuts_done,
                        "bricked": which == "mix" or not delivered
                        or any(p.startswith("new/") for p in files) and "proved" in ev})
        return out
    finally:
        site.close()


def run() -> None:
    rng = random.Random(SEED)
    new = fleetsim.fw_version()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ota-powercut-") as d:
        tmp = Path(d)
        old_fw = firmware_as(OLD, tmp / "fw-old")
        start, end = update_span(tmp / "cal", old_fw, new)
        for k in range(BATCHES):
            results += batch(tmp / f"b{k}", old_fw, new, start, end, rng, k)
    by_phase: dict[str, int] = {}
    for r in results:
        for p in r["cut_phases"]:
            by_phase[p] = by_phase.get(p, 0) + 1
    counted = sum(v for p, v in by_phase.items() if p in ("download", "install", "first boot"))
    record("ota_bricked_nodes", sum(1 for r in results if r["bricked"]), "nodes", "lower",
           {"nodes": len(results), "cuts": sum(len(r["cut_phases"]) for r in results), "cuts_by_phase": by_phase,
            "cuts_in_the_update": counted, "ended_on": {w: sum(1 for r in results if r["app"] == w)
                                                        for w in ("new", "old", "mix")},
            "installs_given_up": sum(1 for r in results if r["install_given_up"]),
            "update_span_flash_programs": [start, end], "cuts_per_node": CUTS, "seed": SEED,
            "cut_points": f"half the nodes uniform over the span, half over its last {LATE} programs; "
                          f"{CUTS * 12} programs of margin beyond it",
            "cut": "a torn flash program (NodeSpec.power_cuts), the node powered on again 1 s later",
            "node": "firmware as release 0.1.9, .mpy, 128K heap, quiet-street, speed 10",
            "judge": "every app file the old app's or the release's byte for byte, nothing in new/ once "
                     "proved, the last boot's last record in the gateway's database",
            "command": ".venv/bin/python -m bench.ota_powercut", "per_node": results})


if __name__ == "__main__":
    run()
