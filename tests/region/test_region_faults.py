"""The region's fault scenarios (issue 16), each judged by the regional ledger: every record of every
node's console against the regional VictoriaMetrics (tools/dev/regionrig.py).

Three gateways in two towns (ut-1 and ut-2 in utrecht, zs-1 in zeist), each with its own Mosquitto
(`meetkit broker init`, neighbours' accounts by `meetkit region accounts`) and its own `meetkit-gateway
run`, one regional VictoriaMetrics (`-dedup.minScrapeInterval=1ms`), one central Mosquitto (`meetkit
region central`), a simulated node per gateway running the firmware (an air-only board: hours in
seconds) with its broker list (home first, then the plan's neighbours).

Short forms here (`make test`: one to two simulated hours of fault each); the long forms (the 6-hour
cut-off) under the `soak` marker. The rows go into the fault table `make test` and `make faults` print.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev.faultrig import H, Outcome, db_rows, read_ledger
from meetkit_tools.dev.regionrig import Region
from meetkit_tools.dev.waits import wait_for

NODES = {"ut-1": ["ut-0001"], "ut-2": ["ut-0101"], "zs-1": ["zs-0001"]}
T0 = 0.5 * H   # simulated time of the node the fault is timed by, before the fault starts
UNTIL = 48 * H  # the nodes run until the region holds what they made, long before this


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Region]:
    r = Region(tmp_path, NODES)
    try:
        for gw, ids in NODES.items():
            for nid in ids:
                r.node(nid, gw, until_s=UNTIL)
        yield r
    finally:
        r.close()


def assert_clean(out: Outcome, caught_up: bool) -> None:
    assert out.generated > 0
    assert out.lost == 0, out.problems
    assert out.duplicated == 0, out.problems
    assert out.notes["in_two_towns"] == 0, out.problems
    assert out.notes.get("wrong_town", 0) == 0, out.problems  # each node's records under its home town
    assert out.crashes == 0, "the firmware hit an unexpected error (see the node's console.log)"
    assert out.wrong_time == 0 and "wrong_values" not in out.notes, out.problems
    assert caught_up


def during(reg: Region, node: str, start: float, hours: float, begin, end) -> None:
    """`begin()` once `node` is at `start` s of its simulated time, `end()` `hours` later."""
    reg.wait_virtual(node, start)
    begin()
    reg.wait_virtual(node, start + hours * H)
    end()


def test_the_regional_store_restarted_under_load(reg: Region) -> None:
    """VictoriaMetrics away for an hour of the nodes' time while every gateway forwards: the
    gateways keep it, and deliver it once the store is back; nothing twice."""
    def restart() -> None:
        # away until every gateway has felt it (a forwarding attempt failed), however fast the nodes run
        wait_for(lambda: all(g.counter("forward.vm-region.retries") > 0 for g in reg.gateways.values()), 60,
                 "every gateway to fail to forward")
        reg.vm.start()

    ok = reg.run(lambda: during(reg, "ut-0001", T0, 1, reg.vm.stop, restart))
    out = reg.judge("regional VictoriaMetrics restarted under load")
    assert_clean(out, ok)
    assert out.generated >= 3 * 60  # an hour of three nodes at least


@pytest.mark.parametrize("hours", [pytest.param(1, id="1h"), pytest.param(6, id="6h", marks=pytest.mark.soak)])
def test_a_gateway_cut_off_from_the_region_then_back(reg: Region, hours: int) -> None:
    """ut-1 loses VictoriaMetrics and the central broker (its proxies to them cut) while its node
    keeps sending to it: ut-1 stores and acknowledges, forwards nothing, then catches up."""
    ut1 = reg.gateways["ut-1"]
    sent: list[int] = []
    retries: list[int] = []

    def cut() -> None:
        retries.append(ut1.counter("forward.vm-region.retries"))
        ut1.cut_off()

    def back() -> None:
        # the cut lasts until ut-1 has felt it (a forwarding attempt failed), however fast the nodes run
        wait_for(lambda: ut1.counter("forward.vm-region.retries") > retries[0], 60, "ut-1 to fail to forward")
        sent.append(ut1.sent())
        ut1.rejoin()

    ok = reg.run(lambda: during(reg, "ut-0001", T0, hours, cut, back))
    out = reg.judge(f"gateway cut off from the region {hours} h")
    assert_clean(out, ok)
    led = read_ledger(reg.nodes["ut-0001"].console_text())
    in_cut = [r for r in led.records.values() if T0 + 60 <= r["up"] < T0 + hours * H - 60]
    assert len(in_cut) >= hours * 50, "the node kept measuring through the cut"
    assert ut1.sent() > sent[0], "ut-1 forwarded what it held once back"
    # the central feed: every record of the three nodes once, each under its town
    assert out.notes["central_missing"] == 0 and out.notes["central_copies"] == 0
    assert reg.central.topics == {"meetkit/utrecht", "meetkit/zeist"}


def test_a_gateways_own_broker_down_while_the_gateway_runs(reg: Region) -> None:
    """ut-1's Mosquitto stopped for an hour of its node's time, the gateway running: the node fails
    over to ut-2 (the next of its list) after failover_after_s and delivers there meanwhile."""
    ut1 = reg.gateways["ut-1"]
    ok = reg.run(lambda: during(reg, "ut-0001", T0, 1, ut1.broker_down, ut1.broker_up))
    out = reg.judge("gateway's own broker down 1 h")
    assert_clean(out, ok)
    assert ut1.process is not None and ut1.process.running
    assert any(n == "ut-0001" for n, *_ in db_rows(reg.gateways["ut-2"].db)), "ut-2, first of its neighbours, took it"


@pytest.mark.parametrize("to", [pytest.param("ut-2", id="same-town"),
                                pytest.param("zs-1", id="other-town")])
def test_a_node_moved_to_another_gateway(reg: Region, to: str) -> None:
    """ut-0001 taken from ut-1 (utrecht) to `to`: powered off, its config.json's broker list
    rewritten on its flash (`to` first, then `to`'s neighbours), powered on (not re-provisioned: it
    keeps its spool and boot counter). Every record once in the region, all of them under utrecht,
    its home in the plan (assert_clean): in another town too, the new gateway's table (`meetkit
    region accounts`) names it a visitor from utrecht, so what it sends again there is the same
    series as before the move. And it sends only what was not yet safe when it was switched off
    (ut-1's last safe pair did not cover it), not its spool."""
    def move() -> None:
        reg.wait_virtual("ut-0001", T0)
        reg.move("ut-0001", to)
        reg.wait_virtual("ut-0001", T0 + 1 * H)

    ok = reg.run(move)
    out = reg.judge(f"node moved to {to} ({reg.gateways[to].town})")
    text = reg.nodes["ut-0001"].console_text()
    before = sorted(s for b, s in read_ledger(text).records if b == 0)   # made before the move
    m = re.findall(r"gateway database changed \(\w+ -> \w+\): sending again (\d+) records not yet safe$", text, re.M)
    assert len(m) == 1, "one new database: the new gateway's"
    resent = int(m[0])
    out.notes["resent_records"] = resent
    # not the spool: what ut-1 had not yet made safe, the newest records before the move
    assert resent < len(before) // 2, (resent, len(before))
    assert_clean(out, ok)   # the same series (its home town's): a record sent again is deduplicated
    assert "(left off)" in text and text.count(" I node ut-0001, boot ") == 2, "powered off, then on again"
    held = node_held(reg.gateways[to].db, "ut-0001")
    assert held is not None and 0 <= held <= len(read_ledger(text).records), "its status says held, and the gateway took it"
    moved = {(b, q) for n, b, q, _, _ in db_rows(reg.gateways[to].db) if n == "ut-0001"}
    assert {k for k in read_ledger(text).records if k[0] == 1} <= moved | out_of(reg, "ut-0001"), "sent to its new home"


def node_held(db: Path, node: str) -> int | None:
    """`held` of the node's latest status, as the gateway stored it."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT held FROM nodes WHERE node = ?", (node,)).fetchone()
    finally:
        con.close()
    return None if row is None else row[0]


def out_of(reg: Region, node: str) -> set[tuple[int, int]]:
    """The node's records the judge left out (made after the cut-off)."""
    assert reg.cutoff is not None
    return set(read_ledger(reg.nodes[node].console_text()).records) - reg.cutoff[node]


def test_a_gateway_destroyed_its_nodes_fail_over(reg: Region) -> None:
    """ut-1 killed with its Mosquitto, its database deleted for good: its node fails over to ut-2
    (the next in its list) and sends again what the region may lack; 0 lost, 0 duplicated."""
    ut1 = reg.gateways["ut-1"]
    ok = reg.run(lambda: (reg.wait_virtual("ut-0001", T0), ut1.destroy(), reg.wait_virtual("ut-0001", T0 + 1 * H)),
                 timeout=45)   # ut-2 is in the region all along: once failed over (120 simulated s), seconds
    out = reg.judge("gateway destroyed, nodes fail over", central_timeout=10)
    text = reg.nodes["ut-0001"].console_text()
    m = re.findall(r"gateway database changed \(\w+ -> \w+\): sending again (\d+) records not yet safe", text)
    assert len(m) == 1, "one new database: ut-2's"
    out.notes["resent_records"] = int(m[0])
    # what ut-1 had not yet confirmed safe, not the spool: the node had made T0/60 records before
    assert int(m[0]) < T0 // 60 // 2, (m[0], T0)
    assert_clean(out, ok)
    assert any(n == "ut-0001" for n, *_ in db_rows(reg.gateways["ut-2"].db)), "ut-2, first of its neighbours, took it"
