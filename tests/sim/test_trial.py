"""A release on trial, with the previous app kept and put back by itself (firmware/appswap.py,
boot.py, main.py, lib/trial.py, lib/trialboot.py, lib/crash.py; docs/technician.md, "Updating a
node"), on a simulated node's littlefs image under real MicroPython.

The node ran the current app (from source) for 150 s: a spool, a boot counter, and the files that
are the node's own (config.json, board.json, node.key, ca.der, a technician's note). A release (the
current firmware as .mpy, version 9.9.9-new, without config.json or board.json, as the node's
downloader stages it) waits in new/: every file, new/app.json (the release manifest of
docs/payload.md, "files" as a list), new/trial.json, then new/.ready. Then the node is powered on.

- It installs on trial: the new app runs, every file of the old one kept as X.old byte for byte,
  the node's own files untouched.
- A power cut at EVERY flash program of that install, of a rollback and of a proof leaves one
  whole app (old or new, never a mix), from which the next start goes on.
- A release that raises at import: crash.txt holds the traceback, and the next start puts the old
  app back, with app.rollback naming the reason. Three starts without proving: the same.
- A proved app has no .old file left.
- Three crashes in a row start safe mode, not while an app is on trial.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from meetkit_tools.sim import flashimage
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario
from tests.sim.test_appswap import FIRMWARE, METKIT, NEW, OLD, build_app, mpy_cross, power_on

APP_ROOT = ("boot.py", "main.py", "appswap.py")
MINE = ("config.json", "board.json", "node.key", "ca.der", "notes.txt")
CHECKS = ["pm", "mic", "climate"]
BROKEN = 'raise ValueError("this release breaks at import")\n'
# The proof, as the running node does it once the new app has proved itself (another part of
# issue 15 writes that logic): main.py of the test's release proves when the flag file is there,
# and removes the flag first, so that a start after a power cut does not prove again by itself.
PROVE = ('import os\nif "prove.now" in os.listdir():\n    os.remove("prove.now")\n    import trial\n'
         '    print("test: proved", trial.prove())\n')
SAFE_STAND_IN = ('def main():\n    import time\n    print("SAFE MODE (stand-in)")\n'
                 '    while True:\n        time.sleep(1)  # waits on: the simulated power-off\n')


# The power-cut sweeps cut at every 5th flash program in `make test` (about 1/5 of the time, and
# still on both sides of every commit point), at every program in `make soak` (5 minutes here).
PHASE1 = 61   # the install's copies (phase 1): every 61st program (test_appswap.py cuts them finer)
STRIDES = pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.soak, id="every-program"),
                                             pytest.param(5, id="every-5th-program")])


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def mpy(tmp: Path, name: str, src: str) -> bytes:
    """A module compiled as the release's are (x64: the simulator's host)."""
    (tmp / "mod").mkdir(parents=True, exist_ok=True)
    p = tmp / "mod" / f"{name}.py"
    p.write_text(src)
    subprocess.run([mpy_cross(), "-march=x64", "-o", str(p.with_suffix(".mpy")), str(p)], check=True)
    return p.with_suffix(".mpy").read_bytes()


def release(tmp: Path, config: dict, change: Callable[[dict[str, bytes]], None] | None = None) -> dict[str, bytes]:
    """The release's files by path (no app.json, config.json, board.json)."""
    files = {k: v for k, v in build_app(tmp, config).items() if k not in ("app.json", "config.json", "board.json")}
    if change:
        change(files)
    return files


def staged(files: dict[str, bytes], trial: bool = True) -> dict[str, bytes]:
    """new/ as the node's downloader leaves it: the files, the release manifest, the trial's note, .ready."""
    out = {"new/" + k: v for k, v in files.items()}
    manifest = {"v": 1, "version": NEW, "mpy": "6.3", "arch": "x64",
                "files": [{"path": k, "size": len(v), "sha256": sha(v)} for k, v in sorted(files.items())],
                "bytes": sum(len(v) for v in files.values())}
    out["new/app.json"] = json.dumps(manifest, indent=1).encode()
    if trial:
        out["new/trial.json"] = json.dumps({"release": NEW, "prev": OLD, "checks": CHECKS}).encode()
    out["new/.ready"] = b""
    return out


@pytest.fixture(scope="module")
def old_node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("trial")
    node = SimNode(NodeSpec(node_id="trial-01", scenario=load_scenario("quiet-street"), workdir=work / "node",
                            until_s=150, broker_port=1, heapsize="112K",
                            files={"node.key": b"ab" * 32, "ca.der": b"0\x82\x01\x0a lab CA", "notes.txt": b"lamp post 12\n"}))
    node.start()
    assert node.wait(120) == 0, node.console_text()[-2000:]
    before = node.flash_files()
    assert "boot.count" in before and any(k.startswith("sp/") for k in before)
    old_app = {k: v for k, v in before.items() if k in APP_ROOT or k.startswith("lib/")}
    assert "lib/node.py" in old_app and "app.json" not in before
    config = dict(node.config(), interval_s=30)
    shutil.copy(node.image, work / "image.orig")
    return {"node": node, "before": before, "old_app": old_app, "config": config, "work": work,
            "state": json.loads(json.dumps(node.last_state)), "rel": release(work / "rel", config)}


def restore(o: dict[str, Any], image: str = "image.orig", state: dict | None = None) -> SimNode:
    node: SimNode = o["node"]
    shutil.copy(o["work"] / image, node.image)
    node.last_state = json.loads(json.dumps(state or o["state"]))
    node.spec.power_cuts = None
    return node


def snapshot(o: dict[str, Any], node: SimNode, name: str) -> dict:
    shutil.copy(node.image, o["work"] / name)
    return json.loads(json.dumps(node.last_state))


def whole(o: dict[str, Any], node: SimNode, text: str, rel: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """The flash holds one app whole, the new one (its files as released) or the old one (as it
    was), never a mix, and every start since `text` began ran that one; the node's own files are
    untouched. Returns ("new" | "old", the flash's files)."""
    files = node.flash_files()
    versions = set(METKIT.findall(text))
    assert len(versions) == 1, text[-3000:]
    assert not any(k.startswith("new/") or k.endswith(".swp") or k == "app.swap" for k in files), sorted(files)
    before = o["before"]
    for k in MINE:
        assert files.get(k) == before[k], k
    for k in before:
        if k.startswith("sp/b"):
            assert k in files
    assert int(files["boot.count"]) > int(before["boot.count"])
    lib = sorted(k for k in files if k.startswith("lib/") and not k.endswith(".old"))
    if versions == {NEW}:
        for k, v in rel.items():
            assert files.get(k) == v, f"{k} is not the release's"
        assert lib == sorted(k for k in rel if k.startswith("lib/"))
        assert json.loads(files["app.json"])["version"] == NEW
        assert "interval 60 s" in text   # the node's own config.json: a release carries none
        return "new", files
    assert versions == {OLD}, versions
    for k, v in o["old_app"].items():
        assert files.get(k) == v, f"{k} is not the old app's"
    assert lib == sorted(k for k in o["old_app"] if k.startswith("lib/"))
    assert not any(k.endswith(".old") for k in files) and "app.json" not in files
    assert "app.trial" not in files and "app.failed" not in files
    assert "interval 60 s" in text
    return "old", files


def kept(o: dict[str, Any], files: dict[str, bytes]) -> None:
    """On trial: every file of the old app is there as X.old, byte for byte (a rollback can be whole)."""
    for k, v in o["old_app"].items():
        assert files.get(k + ".old") == v, f"{k}.old is not the old app's {k}"
    assert sorted(k for k in files if k.endswith(".old")) == sorted(k + ".old" for k in o["old_app"])


def trial_state(files: dict[str, bytes]) -> dict:
    return json.loads(files["app.trial"])


def install(o: dict[str, Any], rel: dict[str, bytes], seconds: float = 8) -> tuple[SimNode, str]:
    node = restore(o)
    flashimage.write_files(node.image, staged(rel))
    return node, power_on(node, seconds)


def test_a_release_installs_on_trial_and_keeps_the_old_app(old_node: dict) -> None:
    rel = old_node["rel"]
    node, text = install(old_node, rel)
    assert f"appswap: installed the app of new/ ({len(rel)} files), on trial" in text
    assert "--- reset" in text.partition("appswap: installed")[2]   # a fresh start after the install
    assert f"trial: {NEW} on trial, start 1 of 3" in text
    assert "Traceback" not in text
    which, files = whole(old_node, node, text.partition("appswap: installed")[2], rel)
    assert which == "new"
    kept(old_node, files)
    t = trial_state(files)
    assert (t["release"], t["prev"], t["boots"], t["checks"]) == (NEW, OLD, 1, CHECKS)
    assert sorted(t["added"]) == sorted([k for k in rel if k not in old_node["old_app"]] + ["app.json"])


@STRIDES
def test_a_power_cut_at_any_flash_program_of_an_install_on_trial_leaves_one_app_whole(old_node: dict,
                                                                                      stride: int) -> None:
    """One run per program (every `stride`-th), from the install's first until a cut lands after it.
    new/.ready is written before the first: every cut ends with the new app on trial, the old one
    kept; none with the old app (the update is never lost)."""
    rel = old_node["rel"]
    node = restore(old_node)
    flashimage.write_files(node.image, staged(rel))
    staged_state = snapshot(old_node, node, "image.staged")
    k = node.last_state["stats"]["flash_writes"] + 1
    step = PHASE1 if stride > 1 else 1
    outcomes: dict[str, list[int]] = {"new": [], "old": []}
    while True:
        node = restore(old_node, "image.staged", staged_state)
        text = power_on(node, 4, cut=k)
        assert node.power_cuts_done == 1, f"cut {k}: no cut happened"
        first, _, after = text.partition("--- power cut")
        if "appswap: installed" in first:   # this cut came after the install: every program was tried
            break
        which, files = whole(old_node, node, after, rel)
        if which == "new":
            kept(old_node, files)
            assert trial_state(files)["boots"] == 1
        outcomes[which].append(k)
        if step > stride and "the new app is in" in first:   # past the marker: back a step
            k -= step
            step = stride
        k += step
        assert k < 3000
    print("cuts that ended with the new app on trial:", len(outcomes["new"]), "with the old one:", outcomes["old"])
    assert len(outcomes["new"]) >= 60 // stride
    assert outcomes["old"] == [], "the update was lost"


def test_a_release_that_crashes_at_import_is_rolled_back_at_the_next_start(old_node: dict) -> None:
    def broken(files: dict[str, bytes]) -> None:
        files["lib/node.mpy"] = mpy(old_node["work"] / "broken", "node", BROKEN)
    rel = release(old_node["work"] / "rel-broken", old_node["config"], broken)
    # The old app comes back compiled from source and with a crash to report (aftercare.py): at
    # 112K it does not fit that start in the simulator (twice the board's bytes per object; the
    # board runs .mpy), and each such start is a crash of its own. 144K, the fleet tests' heap, it fits.
    spec = old_node["node"].spec
    heap, spec.heapsize = spec.heapsize, "144K"
    try:
        node, text = install(old_node, rel, seconds=30)
    finally:
        spec.heapsize = heap
    reason = "crash: ValueError: this release breaks at import"
    assert f"trial: rolled back from {NEW} to {OLD}: {reason}" in text, text[-3000:]
    crashed, _, after = text.partition("trial: rolled back")
    assert "ValueError: this release breaks at import" in crashed and f"trial: {NEW} on trial, start 1 of 3" in crashed
    which, files = whole(old_node, node, after, rel)
    assert which == "old"
    assert json.loads(files["app.rollback"]) == {"release": NEW, "back_to": OLD, "reason": reason}
    head, _, trace = files["crash.txt"].decode().partition("\n")
    assert head.startswith("boot ") and head.endswith(" s")
    assert trace.startswith("Traceback (most recent call last):") and trace.rstrip().endswith(
        "ValueError: this release breaks at import")
    assert files["crash.count"] == b"1"


@STRIDES
def test_a_power_cut_at_any_flash_program_of_a_rollback_leaves_the_old_app_whole(old_node: dict, stride: int) -> None:
    rel = old_node["rel"]
    node, _ = install(old_node, rel)
    flashimage.write_files(node.image, {"app.failed": b'{"reason": "test: the self-test fails its mic"}'})
    failed_state = snapshot(old_node, node, "image.failed")
    k = node.last_state["stats"]["flash_writes"] + 1
    n = 0
    while True:
        node = restore(old_node, "image.failed", failed_state)
        text = power_on(node, 4, cut=k)
        if node.power_cuts_done == 0:   # the start made fewer than k programs: the sweep is past them all
            assert "trial: rolled back" in text, f"cut {k}: no cut happened and no rollback"
            break
        first, _, after = text.partition("--- power cut")
        if "trial: rolled back" in first:   # this cut came after the rollback
            break
        which, files = whole(old_node, node, after, rel)
        assert which == "old", f"cut {k}"
        assert json.loads(files["app.rollback"]) == {"release": NEW, "back_to": OLD,
                                                     "reason": "test: the self-test fails its mic"}
        n += 1
        k += stride
        assert k < 2000
    print("cuts during the rollback:", n)
    assert n >= 40 // stride


@STRIDES
def test_a_power_cut_at_any_flash_program_of_a_proof_leaves_the_new_app_whole(old_node: dict, stride: int) -> None:
    """After a cut the new app runs, either proved (no .old left, no app.trial) or still on trial
    with every file of the old app kept: never proved with half of the old app gone."""
    def proving(files: dict[str, bytes]) -> None:
        files["main.py"] = PROVE.encode() + files["main.py"]
    rel = release(old_node["work"] / "rel-prove", old_node["config"], proving)
    node, _ = install(old_node, rel)
    flashimage.write_files(node.image, {"prove.now": b""})
    prove_state = snapshot(old_node, node, "image.prove")
    k = node.last_state["stats"]["flash_writes"] + 1
    outcomes: dict[str, list[int]] = {"proved": [], "trial": []}
    while True:
        node = restore(old_node, "image.prove", prove_state)
        text = power_on(node, 4, cut=k)
        assert node.power_cuts_done == 1, f"cut {k}: no cut happened"
        first, _, after = text.partition("--- power cut")
        if f"test: proved {NEW}" in first:   # this cut came after the proof
            break
        which, files = whole(old_node, node, after, rel)
        assert which == "new"
        if "app.trial" in files:
            kept(old_node, files)
            assert "app.failed" not in files and trial_state(files)["boots"] in (2, 3)
            assert "app.proved" not in files   # nothing proved to report
            outcomes["trial"].append(k)
        else:
            assert not any(p.endswith(".old") for p in files), sorted(files)
            # the proof's note, whichever program the cut tore: the node reports it once connected
            assert json.loads(files["app.proved"]) == {"release": NEW, "prev": OLD}, sorted(files)
            outcomes["proved"].append(k)
        assert "app.rollback" not in files and "trial: rolled back" not in after
        k += stride
        assert k < 2000
    print("cuts that left the app on trial:", len(outcomes["trial"]), "proved:", len(outcomes["proved"]))
    # every program: the cuts before the proof's commit leave it on trial (2 or more of them)
    assert len(outcomes["trial"]) >= (2 if stride == 1 else 0) and len(outcomes["proved"]) >= 20 // stride


def test_a_proved_app_has_no_old_files_left(old_node: dict) -> None:
    def proving(files: dict[str, bytes]) -> None:
        files["main.py"] = PROVE.encode() + files["main.py"]
    rel = release(old_node["work"] / "rel-prove", old_node["config"], proving)
    node, _ = install(old_node, rel)
    flashimage.write_files(node.image, {"prove.now": b""})
    text = power_on(node, 5)
    assert f"test: proved {NEW}" in text
    which, files = whole(old_node, node, text, rel)
    assert which == "new"
    assert not any(k.endswith(".old") for k in files) and "app.trial" not in files, sorted(files)
    assert json.loads(files["app.json"])["version"] == NEW
    text = power_on(node, 5)   # and it stays: no trial, no rollback
    assert "trial:" not in text and whole(old_node, node, text, rel)[0] == "new"


def test_three_starts_without_proving_roll_back(old_node: dict) -> None:
    rel = old_node["rel"]
    node, text = install(old_node, rel)
    for n in (2, 3):
        text = power_on(node, 5)
        assert f"trial: {NEW} on trial, start {n} of 3" in text
        assert trial_state(node.flash_files("app.trial"))["boots"] == n
    text = power_on(node, 5)
    reason = "not proved in 3 starts"
    assert f"trial: rolled back from {NEW} to {OLD}: {reason}" in text
    which, files = whole(old_node, node, text.partition("trial: rolled back")[2], rel)
    assert which == "old"
    assert json.loads(files["app.rollback"]) == {"release": NEW, "back_to": OLD, "reason": reason}


def broken_firmware(tmp: Path, safemode: bool) -> Path:
    """The current firmware with a node.py that raises at import; with a stand-in for safemode.py
    (the running node's part of issue 15 writes the real one) or without one."""
    fw = tmp / "fw"
    shutil.copytree(FIRMWARE, fw, ignore=shutil.ignore_patterns("__pycache__"))
    (fw / "lib/node.py").write_text(BROKEN)
    (fw / "lib/safemode.py").unlink(missing_ok=True)
    if safemode:
        (fw / "lib/safemode.py").write_text(SAFE_STAND_IN)
    return fw


def test_three_crashes_in_a_row_start_safe_mode(tmp_path: Path) -> None:
    node = SimNode(NodeSpec(node_id="crash-01", scenario=load_scenario("quiet-street"), workdir=tmp_path / "n",
                            until_s=45, broker_port=1, firmware=broken_firmware(tmp_path, True)))
    node.start()
    assert node.wait(120) == 0
    text = node.console_text()
    crashes, _, safe = text.partition("SAFE MODE (stand-in)")
    assert crashes.count("ValueError: this release breaks at import") == 3, text[-3000:]
    assert crashes.count("--- reset") == 3 and "Traceback" not in safe and "--- reset" not in safe
    files = node.flash_files()
    assert files["crash.count"] == b"3"
    assert files["crash.txt"].decode().rstrip().endswith("ValueError: this release breaks at import")


def test_without_safemode_py_the_node_starts_normally_after_3_crashes(tmp_path: Path) -> None:
    node = SimNode(NodeSpec(node_id="crash-01", scenario=load_scenario("quiet-street"), workdir=tmp_path / "n",
                            until_s=28, broker_port=1, firmware=broken_firmware(tmp_path, False)))
    node.start()
    assert node.wait(120) == 0
    text = node.console_text()
    assert "crash: 3 crashes in a row, and this app has no safe mode: a normal start" in text
    assert text.count("ValueError: this release breaks at import") >= 4
    assert int(node.flash_files("crash.count")["crash.count"]) >= 4


def test_crashes_in_a_row_do_not_start_safe_mode_while_an_app_is_on_trial(old_node: dict) -> None:
    def with_safe_mode(files: dict[str, bytes]) -> None:
        files["lib/safemode.mpy"] = mpy(old_node["work"] / "safe", "safemode", SAFE_STAND_IN)
    rel = release(old_node["work"] / "rel-safe", old_node["config"], with_safe_mode)
    node, text = install(old_node, rel)
    flashimage.write_files(node.image, {"crash.count": b"3"})
    text = power_on(node, 5)
    assert "SAFE MODE" not in text and f"trial: {NEW} on trial, start 2 of 3" in text
    assert set(METKIT.findall(text)) == {NEW} and "I node trial-01, boot" in text


def test_an_update_being_downloaded_stays_in_new(old_node: dict) -> None:
    """new/ with ota.json and no .ready: the node's download, to go on after the start."""
    node = restore(old_node)
    part = {k: v for k, v in staged(old_node["rel"]).items() if k.startswith("new/lib/") or k == "new/boot.py"}
    part = dict(list(part.items())[:5])
    part["new/ota.json"] = b'{"v":1,"body":"{}","mac":"00"}'
    flashimage.write_files(node.image, part)
    text = power_on(node, 4)
    assert "appswap" not in text and set(METKIT.findall(text)) == {OLD}
    files = node.flash_files()
    assert {k: v for k, v in files.items() if k.startswith("new/")} == part


def test_a_release_may_not_carry_the_nodes_own_files(old_node: dict) -> None:
    def with_config(files: dict[str, bytes]) -> None:
        files["config.json"] = b'{"node_id": "someone-else"}'
    rel = release(old_node["work"] / "rel-config", old_node["config"], with_config)
    node, text = install(old_node, rel)
    assert "appswap: a release may not carry config.json: the new app is removed, the old one stays" in text
    which, files = whole(old_node, node, text, old_node["rel"])
    assert which == "old"


def test_provisioning_over_an_app_on_trial_ends_the_trial(old_node: dict) -> None:
    """`meetkit provision` installs without a trial: the app on trial stays until then, its kept
    files go, and the provisioned app is whole."""
    node, _ = install(old_node, old_node["rel"])
    app = build_app(old_node["work"] / "prov", dict(old_node["config"], interval_s=20))
    flashimage.write_files(node.image, {"new/" + k: v for k, v in app.items()} | {"new/.ready": b""})
    text = power_on(node, 5)
    assert f"trial: {NEW} stays, the previous app is removed" in text
    assert f"appswap: installed the app of new/ ({len(app) - 1} files)\n" in text
    files = node.flash_files()
    for k, v in app.items():
        assert files.get(k) == v, k
    assert not any(k.endswith(".old") for k in files) and "app.trial" not in files
    assert "interval 20 s" in text and "trial: rolled back" not in text


def refused_install(old_node: dict, files: dict[str, bytes], leave: int | None = None) -> tuple[str, dict[str, bytes]]:
    """The node's update (new/ota.json) staged as `files`; with `leave`, files of the technician's
    (fill/) take the flash but about `leave` blocks. Returns the start's text and the flash's files
    after it."""
    node = restore(old_node)
    files["new/ota.json"] = b'{"v":1,"body":"{}","mac":"00"}'
    flashimage.write_files(node.image, files)
    if leave is not None:
        i = 0
        while (free := flashimage.statvfs(node.image)["bfree"]) > leave:   # 15 blocks at most a file (the tool's heap)
            n = min(15, max(1, (free - leave) * 3 // 4))   # its CTZ pointers and the folder's metadata
            flashimage.write_files(node.image, {f"fill/{i}": b"\0" * (n * 4096 - 512)})
            i += 1
        assert free >= leave - 2
    text = power_on(node, 4)
    which, after = whole(old_node, node, text, old_node["rel"])
    assert which == "old" and not any(k.startswith("new/") for k in after)
    return text, after


def test_an_update_missing_a_file_is_refused_with_a_note_the_running_app_reports(old_node: dict) -> None:
    """new/.ready written but a file missing (no download leaves it so; a damaged flash might): the
    old app runs on and app.refused says why, for the gateway (aftercare.py: event "refused")."""
    files = staged(old_node["rel"])
    del files["new/lib/uplink.mpy"]
    text, after = refused_install(old_node, files)
    assert "appswap: lib/uplink.mpy is missing from new/: the new app is removed, the old one stays" in text
    assert json.loads(after["app.refused"]) == {"release": NEW, "reason": "install failed: lib/uplink.mpy is missing from new/"}


def test_an_update_without_room_for_its_copy_is_refused_before_a_file_is_copied(old_node: dict) -> None:
    """Free flash short of the largest file's copy (the spool or a technician's file took it since
    the offer): nothing is copied, the old app runs on, app.refused says so."""
    rel = old_node["rel"]
    big = -(-max(len(v) for v in rel.values()) // 4096)   # the largest file's blocks
    text, after = refused_install(old_node, staged(rel), leave=big + 1)
    assert "appswap: no room to copy " in text and "the new app is removed, the old one stays" in text
    r = json.loads(after["app.refused"])
    assert r["release"] == NEW and r["reason"].startswith("install failed: no room to copy ")
    assert any(k.startswith("fill/") for k in after)
