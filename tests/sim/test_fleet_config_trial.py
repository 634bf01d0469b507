"""A remote configuration on trial (docs/payload.md, "Configuration"; firmware/lib/cfgtrial.py): one
that changes how the node reaches the gateway (wifi, broker, topic_prefix, ntp_host) must have a
batch acknowledged within config_trial_s, counted across restarts, or the node puts the previous
config.json back by itself, restarts on it and says so. Simulated nodes (firmware/ as .mpy) against
a real Mosquitto, the real gateway (its acknowledgements prove a configuration, its database counts
the records) and the test-side fleet gateway (tools/dev/fleetsim.py), which signs the
configurations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from meetkit_gateway.store import Store
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.faultrig import virtual_s
from meetkit_tools.services import free_port
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario
from meetkit_tools.dev.waits import wait_for
from tests.sim.test_fleet_trial import Rig

TRIAL_FILES = ("config.json.old", "config.trial", "config.json.tmp", "config.json.new", "config.trial.tmp")


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fleetsim.mpy_firmware(tmp_path_factory.mktemp("fw") / "firmware")


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


def made(node: SimNode) -> set[tuple[int, int]]:
    """(boot, seq) of every record the node spooled, from its console."""
    out, boot = set(), None
    for line in node.console_text().splitlines():
        if m := re.search(r" I node \S+, boot (\d+),", line):
            boot = int(m[1])
        elif (m := re.search(r" I record (\d+): ", line)) and boot is not None:
            out.add((boot, int(m[1])))
    return out


def stored(rig: Rig, node: str) -> set[tuple[int, int]]:
    assert rig.gateway is not None
    with Store(rig.gateway.db, readonly=True) as s:
        return {(r.boot, r.seq) for r in s.readings(node)}


def config_events(rig: Rig, node: str, state: str | None) -> list[dict]:
    return [e for e in rig.gw.events_of(node, "config") if e.get("state") == state]


def test_a_broker_nothing_listens_on_is_reverted_within_the_bound_across_a_power_cut(rig: Rig, firmware: Path) -> None:
    n = rig.node("ct-01", firmware, interval_s=10)
    rig.status("ct-01", cfg=0)
    before = n.console_text()
    dead = free_port()   # nothing listens there
    rig.gw.configure("ct-01", 1, {"broker": {"host": "127.0.0.1", "port": dead}, "config_trial_s": 60})
    ev = rig.gw.wait_event("ct-01", lambda e: e["kind"] == "config")
    assert ev["version"] == 1 and sorted(ev["applied"]) == ["broker", "config_trial_s"] and ev["trial_s"] == 60
    # the trial's first start: its uptime counts, and a power cut 45 s in (its progress was saved at
    # 30 s) does not start it over. The cut is set on the node's own clock: with nothing to wait for
    # a dead broker's node runs far ahead of the wall clock, past the 60 s bound before a cut "now" lands.
    start = "config: version 1 on trial, start 1 of 3"
    wait_for(lambda: start in n.console_text(), 60, "the trial's start")
    cuts = n.power_cuts_done
    at_s = virtual_s(n.console, at=start) + 45
    n.cut_power(at_s=at_s)
    wait_for(lambda: n.power_cuts_done > cuts, 60, "the power cut")
    cut_ms = int(re.findall(r"--- power cut at t=(\d+) ms", n.console_text())[-1])
    assert at_s <= cut_ms / 1000 <= at_s + 1.5, (at_s, cut_ms)   # within the simulated second it was set for
    wait_for(lambda: "config: version 1 on trial, start 2 of 3" in n.console_text(), 60, "the trial's second start")
    ev = rig.gw.wait_event("ct-01", lambda e: e["kind"] == "config" and e.get("state") == "reverted", 180)
    assert ev == {"v": 1, "node": "ct-01", "kind": "config", "state": "reverted", "version": 1, "back_to": 0,
                  "reason": "no broker within 60 s under version 1"}
    text = n.console_text()
    assert "config: version 1 must prove itself within 60 s (30 s so far)" in text   # the bound across the cut
    rig.status("ct-01", cfg=0, mode="normal")
    # delivering again under the old configuration: every record it made is in the gateway's database
    # (its own count, from the console), among them those of the trial's starts
    # before, two starts on trial, after the revert: a record of each
    wait_for(lambda: len({b for b, _ in made(n)}) >= 4 and made(n) <= stored(rig, "ct-01"), 180,
             "every record stored, the boot after the revert's among them")
    # the retained version 1 comes at every connect: not taken again
    wait_for(lambda: "config: version 1 is the one reverted: not taken again" in n.console_text(), 60,
             "the retained version 1 seen and left")
    n.stop()
    assert len(config_events(rig, "ct-01", None)) == 1 and len(config_events(rig, "ct-01", "reverted")) == 1
    assert n.console_text().count("config: version 1 on trial: reverted unless") == 1
    files = n.list_flash()
    assert not [p for p in files if p in TRIAL_FILES] and "config.refused" in files
    cfg = json.loads(n.read_flash("config.json") or b"{}")
    assert cfg == n.config() and "config_version" not in cfg, cfg   # byte for byte the one it had
    assert before in n.console_text()


def test_a_good_configuration_passes_its_trial_and_the_previous_one_goes(rig: Rig, firmware: Path) -> None:
    n = rig.node("ct-02", firmware, interval_s=10)
    rig.status("ct-02", cfg=0)
    networks = [{"ssid": "meetkit-lab", "password": "simulated"}, {"ssid": "spare", "password": "spare-pw"}]
    rig.gw.configure("ct-02", 4, {"wifi": networks, "interval_s": 20})
    ev = rig.gw.wait_event("ct-02", lambda e: e["kind"] == "config")
    assert ev["version"] == 4 and ev["trial_s"] == 300
    ev = rig.gw.wait_event("ct-02", lambda e: e["kind"] == "config" and e.get("state") in ("proved", "reverted"), 120)
    assert ev == {"v": 1, "node": "ct-02", "kind": "config", "state": "proved", "version": 4}
    rig.status("ct-02", cfg=4, mode="normal")
    n.stop()
    assert not [p for p in n.list_flash() if p in TRIAL_FILES or p.startswith("config.re")]
    cfg = json.loads(n.read_flash("config.json") or b"{}")
    assert cfg["config_version"] == 4 and cfg["wifi"] == networks and cfg["interval_s"] == 20


def test_an_interval_alone_is_not_on_trial(rig: Rig, firmware: Path) -> None:
    n = rig.node("ct-03", firmware, interval_s=10)
    rig.status("ct-03", cfg=0)
    rig.gw.configure("ct-03", 2, {"interval_s": 20})
    ev = rig.gw.wait_event("ct-03", lambda e: e["kind"] == "config")
    assert ev["version"] == 2 and "trial_s" not in ev
    rig.status("ct-03", cfg=2)
    n.stop()
    assert not [p for p in n.list_flash() if p in TRIAL_FILES]


# -- a power cut at every flash program of a revert ---------------------------------------------------
def test_a_power_cut_at_any_flash_program_of_a_revert_leaves_the_old_configuration_whole(
        tmp_path: Path, firmware: Path) -> None:
    """The node starts with version 5 on trial for the 4th time (config.trial: 3 starts done): it
    reverts at that start, before it reads config.json. Cut at its 1st, 2nd, ... flash program until
    a cut falls after the revert: every next start ends on version 4's config.json, whole, and
    nothing of the trial left."""
    old = {"node_id": "ct-04", "interval_s": 60, "wifi": {"ssid": "meetkit-lab", "password": "simulated"},
           "broker": {"host": "127.0.0.1", "port": 1}, "config_version": 4}
    new = dict(old, broker={"host": "127.0.0.1", "port": 2}, config_version=5)
    old_text = json.dumps(old, indent=1).encode()
    files = {"config.json": json.dumps(new).encode(), "config.json.old": old_text,
             "config.trial": json.dumps({"version": 5, "back_to": 4, "boots": 3, "spent": 40, "bound": 300,
                                         "digest": "00"}).encode()}
    after_revert = False
    k = 0
    while not after_revert:
        k += 1
        assert k < 30, "the revert never finished"
        n = SimNode(NodeSpec(node_id="ct-04", scenario=load_scenario("quiet-street"), workdir=tmp_path / f"cut{k}",
                             until_s=None, firmware=firmware, files=files, power_cuts=[k]))
        n.prepare()
        n.start()
        try:
            wait_for(lambda: n.power_cuts_done and " I node ct-04, boot " in n.console_text().split("--- power cut")[-1],
                     60, f"the start after the cut at program {k}")
        finally:
            n.stop()
        text = n.console_text()
        after_revert = "reverted to 4" in text.split("--- power cut")[0]
        assert n.read_flash("config.json") == old_text, (k, text[-2000:])
        on_flash = n.list_flash()
        assert not [p for p in on_flash if p in TRIAL_FILES], (k, on_flash)
        r = json.loads(n.read_flash("config.reverted") or b"{}")
        assert r == {"version": 5, "back_to": 4, "reason": "not proved in 3 starts under version 5", "digest": "00"}
    assert k >= 4   # the cuts fell before, inside and after the revert's writes
