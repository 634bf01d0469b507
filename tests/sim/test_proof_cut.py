"""A power cut inside a node's proof never halts its rollout (issue 15: lib/trial.py's prove(),
app.proved, lib/aftercare.py; docs/reliability.md, "Updating a node over the air").

A real Mosquitto, the real `meetkit-gateway run` with [ota] (tools/dev/faultrig.py: release keys,
node keys, `release add`, `fleet update`), and one simulated node running release OLD. A one-node
rollout of release NEW: the node downloads it, installs it on trial, connects, has a batch
acknowledged, and is powered off at the first line of trial.prove() (a test hook of the release:
the file `hold`). That flash and the gateway's store (the node "installed") are kept; then, for
every flash program of the proof (every 5th in `make test`, each under `soak`), from the start of
prove() to the publish of the event "proved": the node and the store as kept, the power cut at
that program (the hook arms simflash's cut `cut.at` programs on), and the node powered on again.

Each ends with the node on the new app (its status: fw NEW, mode normal), the rollout done with the
node done (never halted "not proved"), as the store and `fleet status` have it. A cut before the
proof's commit leaves the trial on: the node proves at its next start; one after it is finished
by boot.py (trialboot.py) and the node says "proved" from app.proved."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest


from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.faultrig import AIR, Rig
from meetkit_tools.sim import flashimage
from meetkit_tools.sim.runner import SimNode
from meetkit_tools.dev.waits import wait_for

NEW = fleetsim.fw_version()
NODE = "pc-01"
SPEED = 10   # simulated seconds per second, as the fleet fault tests
OTA = {"offer_every_s": 5, "answer_within_s": 600, "prove_within_s": 3600, "pieces_per_s": 100}
# The release's test hook, at the top of trial.prove(): `hold` powers the node off there (before
# the proof's first flash program) unless a cut was asked for; `cut.at` (renamed to cut.done
# first: one cut per file) arms the simulated
# flash's power cut that many programs on. Only the test's release has it (simcore is the simulator's).
HOOK = '''def prove():
    import simcore
    if _exists("hold") and not (_exists("cut.at") or _exists("cut.done")):
        simcore.finish("until", 0)
    try:
        with open("cut.at") as f:
            k = int(f.read())
        os.rename("cut.at", "cut.done")
        simcore.flash.cut_at = simcore.flash.writes + k
        print("test: cut armed %d programs on" % k)
    except OSError:
        pass
'''
PATCH = {"lib/trial.py": lambda s: s.replace("def prove():\n", HOOK, 1)}
STRIDES = pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.soak, id="every-program"),
                                             pytest.param(5, id="every-5th-program")])


class Kept:
    """The rig as it was with the node held at the proof: the node's flash and state, the store."""

    def __init__(self, rig: Rig, node: SimNode, tmp: Path) -> None:
        self.rig, self.node, self.dir = rig, node, tmp
        shutil.copy(node.image, tmp / "image.held")
        self.state = json.loads(json.dumps(node.last_state))
        rig.gateway.stop()
        db = rig.gateway.db
        self.db = [p for p in (db, db.with_name(db.name + "-wal")) if p.exists()]
        for p in self.db:
            shutil.copy(p, tmp / p.name)

    def restore(self, cut: int) -> SimNode:
        """The node held at the proof, its power to be cut `cut` programs into it, and the gateway
        back with the store as it was (stopped first: the node's messages all stored)."""
        self.rig.gateway.stop()
        db = self.rig.gateway.db
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            p.unlink(missing_ok=True)
        for p in self.db:
            shutil.copy(self.dir / p.name, p)
        subscribed = self.rig.gateway.log_text().count("subscribed to")
        self.rig.gateway.start()
        wait_for(lambda: self.rig.gateway.log_text().count("subscribed to") > subscribed, 30,
                 "the gateway subscribed again")
        node = self.node
        shutil.copy(self.dir / "image.held", node.image)
        node.last_state = json.loads(json.dumps(self.state))
        node.spec.power_cuts = None
        node.power_cuts_done = 0
        flashimage.write_file(node.image, "cut.at", str(cut).encode())
        return node


def rollout(rig: Rig) -> tuple[Any, dict[str, Any]]:
    r, nodes = rig.fleet.rollout()
    return r, {n.node: n for n in nodes}


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kept]:
    tmp = tmp_path_factory.mktemp("proof-cut")
    rig = Rig(tmp, ota=OTA)
    try:
        rig.node(NODE, "quiet-street", fleet=True, board=AIR, until_s=None, speed=SPEED,
                 extra_config={"trial_s": 900}, files={"hold": b""})
        rig.fleet.release(NEW, PATCH)
        node = rig.nodes[NODE]
        node.start()
        rig.fleet.wait_running([NODE], "0.1.9")
        rig.fleet.update(NEW, [NODE])
        wait_for(lambda: not node.running, 600, f"{NODE} held at the proof", step=0.5)
        text = node.console_text()
        assert node.exit_code == 0 and f"trial: {NEW} on trial, start 1 of 3" in text, text[-3000:]
        assert "check: gateway: pass" in text.rpartition(f"meetkit {NEW}")[2], "held before a batch acknowledged"
        wait_for(lambda: rollout(rig)[1][NODE].state == "installed", 30, "the gateway to take `installed`")
        yield Kept(rig, node, tmp)
    finally:
        rig.close()


@STRIDES
def test_a_power_cut_anywhere_in_the_proof_never_halts_the_rollout(held: Kept, stride: int) -> None:
    rig = held.rig
    outcomes: dict[str, list[int]] = {"on trial": [], "proved": []}
    k = 1
    while True:
        node = held.restore(k)
        start = len(node.console_text())
        node.power_on()
        try:   # the node on the new app, proved, as the gateway has it: the rollout done, its status
            r = wait_for(lambda: (x := rollout(rig)[0]).state in ("done", "halted") and x, 300,
                         f"cut {k}: the rollout to end", step=0.5)
            wait_for(lambda: (n := rig.fleet.nodes()[NODE]).fw == NEW and n.mode == "normal", 60,
                     f"cut {k}: {NODE}'s status: {NEW}, normal")
            nodes = rollout(rig)[1]
            status = rig.fleet.status()
        finally:
            node.stop()
        text = node.console_text()[start:]
        first, cut, after = text.partition("--- power cut")
        assert "test: cut armed" in first, f"cut {k}: no proof in the first start\n{text[-3000:]}"
        assert r.state == "done" and nodes[NODE].state == "done", (k, r, nodes[NODE])
        assert f"rollout {r.id}: release {NEW}, done" in status, status
        assert f"rollout {r.id} of {NEW} (done): canary, done" in status, status
        assert "rolled back" not in text, text[-3000:]
        proofs = [e for e in rig.fleet.events("ota", NODE) if e["state"] == "proved"]
        assert proofs and all(e["release"] == NEW for e in proofs), proofs
        files = node.list_flash()
        assert "app.trial" not in files and not any(p.endswith(".old") for p in files), sorted(files)
        if f"trial: {NEW} proved" in first:   # the cut came after the proof (or none yet): every program was tried
            print(f"cut {k}: after the proof ({len(proofs)} proved)")
            break
        assert cut, f"cut {k}: no power cut and no proof\n{text[-3000:]}"
        if f"trial: {NEW} on trial, start 3 of 3" in after:   # before the commit: the trial went on, proved again
            assert f"trial: {NEW} proved" in after, after[-3000:]
            outcomes["on trial"].append(k)
        else:   # after the commit: boot.py finished it (or it was finished), app.proved told the gateway
            assert "on trial" not in after and f"trial: {NEW} proved" not in after, after[-3000:]
            outcomes["proved"].append(k)
        k += stride
        assert k < 1000
    print("cuts that left the trial on:", outcomes["on trial"], "after the commit:", outcomes["proved"])
    assert outcomes["on trial"] and outcomes["proved"], outcomes
    assert len(outcomes["proved"]) >= 20 // stride
