"""A node restarted while a release downloads, with less heap than it had when it accepted the offer
(docs/reliability.md, "Limits worth knowing"; docs/operator.md, "Running the fleet over the air").
The defect: ota.resume() parsed the offer kept in new/ota.json in the start, beside the node being
made; at 112K and 120K that raised MemoryError, node.main reset the board, and every start did the
same: no record measured or sent again, no crash counted, no safe mode. Now the download goes on from
the loop; one the heap cannot take is put off and abandoned after a few tries, one that starves the
node is abandoned at its fourth restart (power cuts not counted), either with an
event the rollout shows, and the node measures and delivers throughout.

Simulated nodes (firmware/ as .mpy) against a real Mosquitto, the real gateway storing the records
and the test-side fleet gateway (tools/dev/fleetsim.py) offering the release and serving its pieces.
The node accepts the offer at OFFER_HEAP; the stand-in stops serving after a few pieces, so the
download is under way when the node is powered off, and serves again once it is powered on at the
smaller heap. At 10 times real time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.store import Store
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.waits import wait_for

SPEED = 10
NODE = "rs-01"


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fleetsim.mpy_firmware(tmp_path_factory.mktemp("fw") / "firmware")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[fleetsim.SimFleet]:
    f = fleetsim.SimFleet(tmp_path, gateway=True, heapsize=fleetsim.OFFER_HEAP)
    yield f
    f.close()


def stored(fleet: fleetsim.SimFleet, after: int) -> set[tuple[int, int]]:
    """(boot, seq) of every record of a boot after `after` the gateway stored."""
    assert fleet.gateway is not None
    with Store(fleet.gateway.db, readonly=True) as s:
        return {(r.boot, r.seq) for r in s.readings(NODE) if r.boot > after}


def starts(text: str) -> int:
    return len(re.findall(r" I meetkit ", text))


@pytest.mark.parametrize("heap", ["112K", "120K"])
def test_a_download_under_way_at_a_restart_with_less_heap_ends_and_the_node_measures_on(
        fleet: fleetsim.SimFleet, firmware: Path, heap: str) -> None:
    n = fleet.node(NODE, firmware, speed=SPEED, interval_s=10)
    fleet.status(NODE, mode="normal")
    gw = fleet.gw
    gw.tamper = lambda g, data: data if len(gw.gets_of(NODE)) <= 3 else None   # then it stalls
    gw.offer(NODE, fleetsim.build_release("0.9.0", workdir=fleet.tmp))
    fleet.ota(NODE, "accepted")
    wait_for(lambda: len(gw.gets_of(NODE)) >= 5, 120, "the download under way, stalled")
    n.power_off()
    assert "new/ota.json" in n.list_flash("new")
    before = len(n.console_text())
    n.spec.heapsize = heap
    gw.tamper = None
    n.power_on()
    # the node delivers while the download is put off or goes on
    wait_for(lambda: len(stored(fleet, after=0)) >= 3, 120, "three records of the boots after the restart stored")
    ev = fleet.ota(NODE, "installed", "refused", timeout=300)
    text = n.console_text()[before:]
    assert not gw.events_of(NODE, "crash")
    # no crash loop: a restart the download causes (a MemoryError elsewhere in the node) is counted,
    # and the fourth abandons it (the power-on start is not counted)
    end = text.index(": abandoned, removed" if ev["state"] == "refused" else "ota: 0.9.0 complete")
    assert starts(text[:end]) <= 5, text
    if ev["state"] == "refused":
        # said to the gateway, with why (no release: the node did not read which; the rollout takes
        # it as its own); new/ gone, and the node measures and delivers on
        assert "release" not in ev and re.match(r"download abandoned: (no memory to resume the download .*, 4 times"
                                                r"|the node restarted 4 times while it was on)$", ev["reason"]), ev
        boot = max(b for b, _ in stored(fleet, after=0))
        seq = max(q for b, q in stored(fleet, after=0) if b == boot)
        wait_for(lambda: any(b > boot or q > seq + 2 for b, q in stored(fleet, after=0)), 120,
                 "records stored after the download was abandoned")
        n.stop()
        assert not n.list_flash("new")
        assert starts(n.console_text()[before:]) == starts(text[:end])   # no restart since
    else:
        fleet.status(NODE, fw="0.9.0", mode="trial")   # it restarted into the release
