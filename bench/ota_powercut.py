"""Power cuts at random points of an update's download, install and first boot: does any node end
bricked?

A site as an operator runs it (tools/dev/fleetsite.py: the generated broker accounts and ACL, the
real `meetkit-gateway run`, a release built like `meetkit release build --arch x64` and added).
First a calibration node is updated without a torn write: a clean cut just before `fleet update`
and one just after its proof, and the runner's reset lines (the flash programs so far, counted
over the node's life), give how many programs the download, the install (the boot that copies new/
beside the app and renames it into place) and the first boot (from that install's reset to the
proof) take. Then batches of NODES nodes, each with a quota of torn programs per phase, drawn at
random (seeded): 1 or 2 in the first boot, 2 to 5 in the install, the rest of CUTS in the
download. The cuts are aimed at each boot as it comes (NodeSpec.before_boot): the console so far
says the phase the node is in, and the boot is torn at a program drawn over that phase's
calibrated length from where the boot starts (a draw beyond the boot's end tears nothing there).
A batch is one rollout with every node a canary (`fleet update --canary NODES`). The torn program
tears that write; the simulated littlefs keeps what a real one would, and the node powers on again.

Each cut is then placed by the console lines before it: download ("ota: R accepted" / "ota:
resuming R", before new/.ready), staged (from "ota: R complete", new/.ready written, to the restart:
the old app still runs, the next start installs), install (from "restarting: release R installed",
or the start after a cut while staged, to appswap's "installed the app of new/"), first boot (to
"trial: R proved"), or before / after the update (not counted).

What the bench expects: every node ends on the release, proved. A cut in the download resumes it
from what new/ holds (new/ota.json kept); one in the install is finished by the next start (appswap
copies each new/X to X.swp, then renames: the old app until new/.ready, the new one after); one in
the first boot costs the trial one of its 3 starts (lib/trial.py), and no node is cut there more
than twice, so the third start proves it. A third cut in the trial would roll the node back by
design (and halt the batch's rollout): the bench does not aim one there. `unexpected` lists any node
that does not end proved on the release (on its own console: "trial: R proved", or "trial: R
stays" when a cut interrupted the proof after its commit and the next start finished it).
`proved_event_lost` lists the nodes that proved it without the gateway ever storing their
"proved" event (the event lived only in RAM), and `rollout_states` how the gateway's rollout ended
for each node.

ota_bricked_nodes: nodes that do not end on one whole app that delivers: every app file on the
flash (boot.py, main.py, appswap.py, lib/; X.swp and X.old aside) byte for byte the old app's or
the release's, nothing left in new/ once proved, and a record of its last boot in the gateway's
database. `detail`: the cuts by phase, how each node ended, resumed downloads, the wall time, the
seeds.

Alone: `.venv/bin/python -m bench.ota_powercut` (about 4 minutes).
"""

from __future__ import annotations

import random
import re
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.results import record
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.fleetsite import Site, firmware_as
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.paths import FIRMWARE

OLD = "0.1.9"
NODES = 4       # per batch: one rollout, every node a canary
BATCHES = 6
CUTS = 10       # per node: 1 or 2 in the first boot, 2 to 5 in the install, the rest in the download
SPEED = 10
SEED = 15
BOOT_PROGRAMS = 40   # about what a start adds to a phase (see Aim)
APP_ROOT = ("boot.py", "main.py", "appswap.py")
COUNTED = ("download", "staged", "install", "first boot")
# appswap.finish() giving an install up (the old app stays; the running app reports "refused")
ABORT = re.compile(r"appswap: (.*): the new app is removed, the old one stays")
_CUT = re.compile(r"^--- power cut at t=\d+ ms, flash write (\d+) ---", re.M)
_RESET = re.compile(r"^--- reset \(\S+\) at t=\d+ ms, flash write (\d+) ---", re.M)


def app_files(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items()
            if (k in APP_ROOT or k.startswith("lib/")) and not k.endswith((".old", ".swp"))}


def folder_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _marks(new: str) -> list[tuple[str, str]]:
    return [(f"ota: {new} accepted", "download"), (f"ota: resuming {new}", "download"),
            (f"ota: {new} complete", "staged"), (f"restarting: release {new} installed", "install"),
            ("appswap: installed the app of new/", "first boot"), (f"trial: {new} proved", "after"),
            (f"trial: {new} stays", "after"),   # a proof a cut interrupted after its commit, finished
            ("trial: rolled back", "after"), ("ota: rolled back", "after"), (f"ota: {new} refused", "after"),
            ("the new app is removed, the old one stays", "after")]


def phases(console: str, new: str) -> list[str]:
    """The phase of the update each torn cut fell in, in order."""
    out, phase = [], "before"
    marks = _marks(new)
    for line in console.splitlines():
        if _CUT.match(line):
            out.append(phase)
            if phase == "staged":   # new/.ready is there: the next start installs
                phase = "install"
            continue
        for text, p in marks:
            if text in line:
                phase = p
    return out


_NEXT = (("ota: resuming", "resumed the download"), ("appswap: ", "appswap went on"),
         ("trial: ", "the trial went on"))


def next_boots(console: str) -> list[str]:
    """For each torn cut, in order, what the start after it did (the check that the cut's phase was
    right: a download cut resumes, an install cut is finished by appswap, a first boot's by the
    trial), the first of _NEXT its lines show, else "cut again" (torn in boot.py before it said
    anything), "started the app", "boot.py failed" (boot.py's own error line, no cut) or "nothing"."""
    boots: list[list[str]] = [[]]
    cut_before: list[bool] = [False]
    for line in console.splitlines():
        if line.startswith("--- "):
            boots.append([])
            cut_before.append(_CUT.match(line) is not None)
        else:
            boots[-1].append(line)
    out = []
    for i, (lines, cut) in enumerate(zip(boots, cut_before)):
        if cut:
            text = "\n".join(lines)
            cut_after = i + 1 < len(cut_before) and cut_before[i + 1]
            out.append(next((tag for mark, tag in _NEXT if mark in text), "cut again" if cut_after
                            else "started the app" if " I node " in text
                            else "boot.py failed" if "boot: " in text else "nothing"))
    return out


def boot_phase(console: str, new: str) -> str:
    """The phase the node's next start is in, from its console so far (the runner's marker for
    the boot that just ended may not be in it yet: none is needed)."""
    phase = "before"
    marks = _marks(new)
    for line in console.splitlines():
        for text, p in marks:
            if text in line:
                phase = p
    return "install" if phase == "staged" else phase


@dataclass
class Span:
    """The calibration node's flash programs (over its life) where each phase ends."""
    start: int        # the clean cut just before `fleet update`
    download: int     # the reset that restarts into the install
    install: int      # the reset after appswap installed it
    end: int          # the clean cut just after the proof

    def length(self, phase: str) -> int:
        return {"download": self.download - self.start,
                "install": self.install - self.download, "first boot": self.end - self.install}[phase]


@dataclass
class Aim:
    """One node's cuts, aimed at each boot as it comes (NodeSpec.before_boot)."""
    node: str
    new: str
    span: Span
    quota: dict[str, int]
    rng: random.Random
    console: Path | None = None
    cuts: list[int] = field(default_factory=list)              # the spec's list (shared with it)
    planned: list[tuple[int, str]] = field(default_factory=list)  # (program, phase aimed at)
    began: dict[str, int] = field(default_factory=dict)   # the programs where each phase's first boot began
    error: str | None = None

    def __call__(self, writes: int) -> None:
        try:
            # a cut planned beyond the boot that just ended was not reached: forgotten
            self.planned = [(c, p) for c, p in self.planned if c <= writes]
            self.cuts[:] = [c for c, _ in self.planned]
            text = self.console.read_text(errors="replace") if self.console and self.console.exists() else ""
            phase = boot_phase(text, self.new)
            if phase == "after":
                return
            want = "download" if phase == "before" else phase
            if sum(1 for _, p in self.planned if p == want) >= self.quota[want]:
                return
            # the phase's programs on this node: from where it began here (the download: where the
            # calibration's began), as long as the calibration's, plus BOOT_PROGRAMS a start for
            # every cut in it so far (each start writes, and an install's start copies a file again)
            began = self.began.setdefault(want, self.span.start if want == "download" else writes)
            done = sum(1 for _, p in self.planned if p == want)
            lo = max(writes + 1, began)
            hi = max(began + self.span.length(want) + BOOT_PROGRAMS * done, lo + BOOT_PROGRAMS)
            c = self.rng.randint(lo, hi)
            self.planned.append((c, want))
            self.cuts.append(c)
        except Exception as e:   # never in the runner's thread: the node runs on uncut
            self.error = repr(e)


def proved_on_node(console: str, new: str) -> bool:
    """The node's trial of `new` ended proved (aftercare's line, or the proof a cut interrupted
    finished by the next start, lib/trialboot.py)."""
    return f"trial: {new} proved" in console or f"trial: {new} stays" in console


def rollout_states(db: Path) -> dict[str, str]:
    """Each node's state in the site's newest rollout, as the gateway decided it."""
    from meetkit_gateway.store import Store

    with Store(db, readonly=True) as st:
        r = st.rollouts(1)
        return {n.node: n.state for n in st.rollout_nodes(r[0].id)} if r else {}


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


def update_span(tmp: Path, old_fw: Path, new: str) -> Span:
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
        text = n.console_text()
        w = [int(x) for x in _CUT.findall(text)]
        # the reset after "restarting: release R installed", and the one after appswap's install
        restart = text.index(f"restarting: release {new} installed")
        installed = text.index("appswap: installed the app of new/")
        dl = int(_RESET.search(text, restart)[1])
        inst = int(_RESET.search(text, installed)[1])
        return Span(w[0], dl, inst, w[1])
    finally:
        site.close()


def draw_quota(rng: random.Random) -> dict[str, int]:
    first = rng.choice((1, 2))
    install = rng.randint(2, 5)
    return {"first boot": first, "install": install, "download": CUTS - first - install}


def batch(tmp: Path, old_fw: Path, new: str, span: Span, rng: random.Random, k: int) -> list[dict[str, Any]]:
    ids = [f"pc-{k:02d}{i}" for i in range(NODES)]
    site = Site(tmp, ids)
    try:
        rel_dir = tmp / "releases" / new   # signed with this site's key
        site.build_release(FIRMWARE, rel_dir)
        site.cli("release", "add", str(rel_dir))
        aims = {n: Aim(n, new, span, draw_quota(rng), random.Random(rng.random())) for n in ids}
        nodes = {}
        for i, n in enumerate(ids):
            a = aims[n]
            nodes[n] = node = site.node(n, old_fw, speed=SPEED, power_cuts=a.cuts, before_boot=a,
                                        seed=k * 10 + i + 1, start=False)
            a.console = node.console
            node.start()
        wait_for(lambda: all(r.get("fw") == OLD for r in site.status_rows().values())
                 and len(site.status_rows()) == NODES, 180, "every node heard")
        site.cli("fleet", "update", "--release", new, "--nodes", ",".join(ids), "--canary", str(NODES))

        def settled(n: str) -> bool:
            # proved, rolled back, refused (an install appswap gave up), given up on the console, or
            # proved on the node without its event: a cut after the proof's commit and before the
            # event went out (the next start finishes the proof: "trial: R stays")
            text = nodes[n].console_text()
            return any(e.get("state") in ("proved", "rolled_back", "refused") for e in site.events(n, "ota")) \
                or ABORT.search(text) is not None or proved_on_node(text, new)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not all(settled(n) for n in ids):
            time.sleep(1)  # waits on: every node proved, rolled back or refused
        end_t = time.monotonic() + 180
        while time.monotonic() < end_t and not all(delivered_last_boot(site.gw.db, n, nodes[n].console_text())
                                                   for n in ids):
            time.sleep(1)  # waits on: each node's latest record in the database
        # the gateway's rollout takes in a stored proof at its next step (a second): waited on
        def taken_in() -> bool:
            st = rollout_states(site.gw.db)
            return all(st.get(n) in ("done", "failed", "skipped") for n in ids
                       if any(e.get("state") in ("proved", "rolled_back", "refused") for e in site.events(n, "ota")))
        end_t = time.monotonic() + 30
        while time.monotonic() < end_t and not taken_in():
            time.sleep(0.5)  # waits on: the rollout's state of each node whose proof is stored
        gw_states = rollout_states(site.gw.db)
        out = []
        new_files = app_files(folder_files(rel_dir / "files"))
        old_files = app_files(folder_files(old_fw))
        for n in ids:
            node = nodes[n]
            node.stop()
            text = node.console_text()
            delivered = delivered_last_boot(site.gw.db, n, text)
            files = node.flash_files()
            app = app_files(files)
            which = "new" if app == new_files else "old" if app == old_files else "mix"
            ev = [e.get("state") for e in site.events(n, "ota")]
            leftover = sorted(p for p in files if p.startswith("new/") or p.endswith((".old", ".swp", ".tmp"))
                              or p in ("app.swap", "app.trial", "app.failed", "app.refused"))
            cut_phases = phases(text, new)
            then = next_boots(text)
            out.append({"node": n, "quota": aims[n].quota,
                        "cuts": [[int(c), p, t] for c, p, t in zip(_CUT.findall(text), cut_phases, then)],
                        "cut_phases": cut_phases, "app": which, "events": ev, "leftover": leftover,
                        "proved_on_node": proved_on_node(text, new), "rollout_state": gw_states.get(n),
                        "proof_finished_at_start": text.count(f"trial: {new} stays"),
                        "delivered": delivered, "settled": settled(n),
                        "install_given_up": [m[1] for m in ABORT.finditer(text)],
                        "rolled_back": [line.strip() for line in text.splitlines() if "trial: rolled back" in line],
                        "resumed": text.count(f"ota: resuming {new}"),
                        "trial_starts": text.count(f"trial: {new} on trial, start"),
                        "cuts_done": node.power_cuts_done, "aim_error": aims[n].error,
                        "bricked": which == "mix" or not delivered
                        or any(p.startswith("new/") for p in files) and "proved" in ev})
        return out
    finally:
        site.close()


def run() -> None:
    t0 = time.monotonic()
    rng = random.Random(SEED)
    new = fleetsim.fw_version()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ota-powercut-") as d:
        tmp = Path(d)
        old_fw = firmware_as(OLD, tmp / "fw-old")
        span = update_span(tmp / "cal", old_fw, new)
        print(f"ota_powercut: the calibration node's update: programs {span}")
        for k in range(BATCHES):
            results += batch(tmp / f"b{k}", old_fw, new, span, rng, k)
            r = results[-NODES:]
            print(f"ota_powercut: batch {k}: " + "; ".join(
                f"{x['node']} {x['app']}{' BRICKED' if x['bricked'] else ''} cuts {x['cut_phases']}" for x in r))
    wall = time.monotonic() - t0
    by_phase: dict[str, int] = {}
    for r in results:
        for p in r["cut_phases"]:
            by_phase[p] = by_phase.get(p, 0) + 1
    counted = sum(v for p, v in by_phase.items() if p in COUNTED)
    then: dict[str, dict[str, int]] = {}
    for r in results:
        for _, p, t in r["cuts"]:
            then.setdefault(p, {})[t] = then.setdefault(p, {}).get(t, 0) + 1
    bricked = sum(1 for r in results if r["bricked"])
    ended = {w: sum(1 for r in results if r["app"] == w) for w in ("new", "old", "mix")}
    unexpected = [r["node"] for r in results if not (r["app"] == "new" and r["proved_on_node"])]
    no_event = [r["node"] for r in results if r["proved_on_node"] and "proved" not in r["events"]]
    print(f"ota_powercut: {bricked} of {len(results)} nodes bricked; cuts by phase {by_phase} "
          f"({counted} in the update); the start after each, by phase: {then}; ended on {ended}; not proved on the release: {unexpected or 'none'}; "
          f"proved without the gateway hearing it: {no_event or 'none'}; "
          f"{wall:.0f} s")
    record("ota_bricked_nodes", bricked, "nodes", "lower",
           {"nodes": len(results), "batches": BATCHES, "nodes_per_batch": NODES,
            "cuts": sum(len(r["cut_phases"]) for r in results), "cuts_by_phase": by_phase,
            "cuts_in_the_update": counted, "the_start_after_each_cut_by_phase": then,
            "ended_on": ended, "proved_on_node": sum(1 for r in results if r["proved_on_node"]),
            "proved_event_stored": sum(1 for r in results if "proved" in r["events"]),
            "proved_event_lost": no_event,
            "proofs_finished_by_the_next_start": sum(1 for r in results if r["proof_finished_at_start"]),
            "rollout_states": {st: sum(1 for r in results if r["rollout_state"] == st)
                               for st in sorted({str(r["rollout_state"]) for r in results})},
            "unexpected": unexpected,
            "expected": "every node on the release, proved: a download cut resumes, an install cut is finished "
                        "by the next start, the first boot is cut twice at most (the trial has 3 starts)",
            "installs_given_up": sum(1 for r in results if r["install_given_up"]),
            "rolled_back": sum(1 for r in results if r["rolled_back"]),
            "resumed_downloads": sum(r["resumed"] for r in results),
            "leftover_files": {r["node"]: r["leftover"] for r in results if r["leftover"]},
            "update_span_flash_programs": {"start": span.start, "download_end": span.download,
                                           "install_end": span.install, "proved_by": span.end},
            "cuts_per_node": CUTS, "seed": SEED, "wall_s": round(wall),
            "cut_points": "per node 1 or 2 in the first boot, 2 to 5 in the install, the rest of 10 in the "
                          "download; each aimed at the boot to come (NodeSpec.before_boot), uniform over the "
                          "calibration's length of the phase that boot is in",
            "cut": "a torn flash program (NodeSpec.power_cuts), the node powered on again 1 s later",
            "node": f"firmware as release 0.1.9, .mpy, {fleetsim.OFFER_HEAP} heap, quiet-street, speed 10",
            "site": "generated broker accounts and ACL, the real meetkit-gateway run, offer_every_s 30, "
                    "prove_within_s 1800; one rollout per batch, every node a canary",
            "judge": "every app file the old app's or the release's byte for byte (X.swp, X.old aside), nothing in "
                     "new/ once proved, the last boot's last record in the gateway's database",
            "command": ".venv/bin/python -m bench.ota_powercut", "per_node": results})


if __name__ == "__main__":
    run()
