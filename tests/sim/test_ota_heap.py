"""A download on a node whose heap is in pieces (docs/payload.md, "Release offer"; docs/reliability.md,
"Limits worth knowing"): umqtt reads a message whole, so a piece bigger than the largest free block
is a MemoryError that costs the connection, and the same piece asked again on the next one fails
again. The node asks smaller pieces, and a run of such failures is tried ever less often.

Simulated nodes (firmware/ as .mpy) against a real Mosquitto and the test-side gateway
(tools/dev/fleetsim.py). The heap is put in pieces by the test: the node's ota.py, patched, runs
SQUEEZE at the download's first step, which leaves the free heap only in holes of 1.5 KB until the
process ends (the restart into the release). A 2048-byte piece (a 2086-byte message) then never
fits, a 1024-byte one does. At 10 times real time, so that the broker's round trip stays short
against the node's timeouts and waits."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.sim.runner import SimNode

# Free heap after the squeeze: enough holes for the node to measure and send on.
HEAP = "192K"
SPEED = 10
FAILED = re.compile(r"mqtt: \w+ failed \(MemoryError\([^)]*\)\); next try in (\d+) s")

# MicroPython: the free heap in holes of HOLE bytes. Every free block is taken (holes, then single
# blocks), then every other hole is given back: the holes kept part those freed, so no free run is
# much longer than HOLE. Nothing is allocated once the heap is full (no range(), no new names).
SQUEEZE = """
import gc
HOLE = 1536
_holes = None
_pins = None


def once():
    global _holes, _pins
    if _holes is not None:
        return
    gc.collect()
    holes = []
    try:
        while True:
            holes.append(bytearray(HOLE))
    except MemoryError:
        pass
    try:
        while True:
            _pins = (_pins,)
    except MemoryError:
        pass
    n = len(holes)
    i = 0
    while i < n:
        holes[i] = None
        i += 2
    _holes = holes
    gc.collect()
"""
STEP = "    def step(self, now, connected):\n"


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fw")
    src = tmp / "src"
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (src / "lib" / "heapsqueeze.py").write_text(SQUEEZE)
    ota = src / "lib" / "ota.py"
    text = ota.read_text()
    assert STEP in text
    ota.write_text(text.replace(STEP, STEP + "        import heapsqueeze\n        heapsqueeze.once()\n"))
    return fleetsim.mpy_firmware(tmp / "firmware", firmware=src)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[fleetsim.SimFleet]:
    f = fleetsim.SimFleet(tmp_path, heapsize=HEAP)
    yield f
    f.close()


def offered(fleet: fleetsim.SimFleet, firmware: Path, node: str) -> SimNode:
    n = fleet.node(node, firmware, speed=SPEED)
    fleet.status(node, mode="normal")
    fleet.gw.offer(node, fleetsim.build_release("0.9.0", workdir=fleet.tmp))
    return n


def test_pieces_too_big_for_the_heap_are_asked_smaller_and_the_release_installs(fleet: fleetsim.SimFleet,
                                                                                 firmware: Path) -> None:
    n = offered(fleet, firmware, "oh-01")
    # installed, or the loop of the defect: the same piece failing on each new connection
    wait_for(lambda: fleet.gw.events_of("oh-01", "ota") and fleet.gw.events_of("oh-01", "ota")[-1]["state"]
             in ("installed", "refused") or len(FAILED.findall(n.console_text())) >= 6, 180,
             "the release installed or refused, or six connections lost for want of heap")
    text = n.console_text()
    assert fleet.gw.events_of("oh-01", "ota")[-1]["state"] == "installed", text[-3000:]
    download = text[text.index("ota: 0.9.0 accepted"):text.index("ota: 0.9.0 complete")]
    assert "allocating 2086 bytes" in download   # the 2048-byte piece did not fit
    assert "ota: a piece did not fit the heap: asking 1024 bytes at most" in download
    assert download.count("mqtt: connected") <= 3, download   # one per halving at most, no loop
    lens = [g.len for g in fleet.gw.gets_of("oh-01")]
    assert lens[0] == 2048 and max(lens[1:]) <= 1024, lens
    fleet.status("oh-01", fw="0.9.0", mode="trial")   # it restarted into the release


def test_a_run_of_pieces_that_never_fit_is_tried_ever_less_often(fleet: fleetsim.SimFleet, firmware: Path) -> None:
    """A gateway that ignores `len` (every piece 2048 bytes): each ask costs the connection, however
    small. The node halves down to 256 bytes, and its waits before connecting again grow as the
    backoff's (1 s, 2 s, 4 s ... 60 s, each from half to all of it): the connections before did
    not hold a minute, so none starts the backoff again."""
    fleet.gw.tamper = lambda g, data: fleet.gw.releases[g.release].files[
        fleet.gw.releases[g.release].path(g.file)][g.off:g.off + 2048]
    n = offered(fleet, firmware, "oh-02")
    waits = wait_for(lambda: len(w := [int(s) for s in FAILED.findall(n.console_text())]) >= 7 and w, 180,
                     "seven connections lost for want of heap")
    assert all(w >= min(2 ** k, 60) // 2 for k, w in enumerate(waits)), waits
    text = n.console_text()
    assert "ota: a piece did not fit the heap: asking 256 bytes at most" in text
    assert "asking 128" not in text
    assert [g.len for g in fleet.gw.gets_of("oh-02")][-1] == 256
    assert not fleet.gw.events_of("oh-02", "crash") and "Traceback" not in text
