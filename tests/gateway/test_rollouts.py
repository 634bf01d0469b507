"""Signed releases and staged rollouts, the gateway's side, for real: a Mosquitto running what
`meetkit broker init` generates (accounts, the ACL), the real `meetkit-gateway run` process with
[ota], releases made by `meetkit release build`, and nodes that speak the release protocol
(tests/gateway/ota_node.py: they check the offer's MAC, fetch every piece, check every sha256 and
report their events). What is asserted is what an operator sees: `fleet status`, /metrics, the
page's JSON, the alarm, and what each node got."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.store import Store
from meetkit_tools import release as rel
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.services import FleetBroker, GatewayProcess

from meetkit_tools.dev.chromium import browse
from ..metrics import parse_exposition, sample
from .conftest import CLI, wait_for
from .ota_node import OtaNode

NODES = ["n01", "n02", "n03", "n04", "n05"]
HALTED = frozenset({("code", "rollout_halted")})  # meetkit_alarm_active{code="rollout_halted"}, while raised


def firmware_at(tmp: Path, version: str) -> Path:
    """firmware/ with FW_VERSION set to `version`."""
    fw = tmp / f"firmware-{version}"
    shutil.copytree(FIRMWARE, fw)
    cfg = fw / "lib" / "config.py"
    cfg.write_text(cfg.read_text().replace(f'FW_VERSION = "{rel.fw_version()}"', f'FW_VERSION = "{version}"'))
    assert rel.fw_version(fw) == version
    return fw


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The release key, releases 0.2.0 and 0.3.0 signed by it, and 0.3.0 signed by another key."""
    tmp = tmp_path_factory.mktemp("releases")
    key, pub = rel.keygen(tmp / "keys")
    other, _ = rel.keygen(tmp / "other-keys")
    out = {"key": key, "pub": pub}
    for version in ("0.2.0", "0.3.0"):
        rel.build(key, tmp / "out" / version, firmware=firmware_at(tmp, version))
        out[version] = tmp / "out" / version
    rel.build(other, tmp / "forged" / "0.3.0", firmware=firmware_at(tmp / "forged", "0.3.0"))
    out["forged"] = tmp / "forged" / "0.3.0"
    return out


class Site:
    """The broker, the gateway with [ota], the nodes."""

    def __init__(self, tmp: Path, built: dict[str, Path], nodes: list[str], **ota: float) -> None:
        self.tmp, self.built = tmp, built
        self.broker = FleetBroker(tmp, nodes).start()
        settings = {"offer_every_s": 30, "prove_within_s": 600} | ota
        extra = (f'\n[fleet]\nnode_keys = "{self.broker.out / "node-keys.json"}"\n\n[ota]\n'
                 f'release_keys = ["{built["pub"]}"]\nreleases = "{tmp / "kept"}"\n'
                 + "".join(f"{k} = {v}\n" for k, v in settings.items()))
        self.gw = GatewayProcess(tmp / "gw", self.broker.host, self.broker.plain_port,
                                 mqtt_toml=self.broker.gateway_toml(), extra_toml=extra)
        self.gw.start()
        self.url = self.gw.status_url()
        self.nodes: dict[str, OtaNode] = {}

    def cli(self, *args: str, ok: bool = True, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([CLI, *args, "--config", str(self.gw.conf)], capture_output=True, text=True, timeout=60,
                           preexec_fn=lambda: os.umask(umask) and None)
        assert (r.returncode == 0) == ok, r.stdout + r.stderr
        return r

    def node(self, name: str, **kw: object) -> OtaNode:
        self.nodes[name] = OtaNode(self.broker, name, **kw)  # type: ignore[arg-type]
        return self.nodes[name]

    def known(self, fw: dict[str, str]) -> None:
        """Wait until the gateway stored each node's status (its fw)."""
        def seen() -> bool:
            with Store(self.gw.db, readonly=True) as s:
                return {n.node: n.fw for n in s.nodes() if n.node in fw} == fw
        wait_for(lambda: self.gw.db.exists() and seen(), 15, f"the statuses of {sorted(fw)}")

    def rollout(self) -> dict:
        with urllib.request.urlopen(self.url + "/api/nodes", timeout=10) as r:
            return json.load(r)["rollout"]

    def wait_rollout(self, state: str, timeout: float = 60) -> dict:
        def now() -> dict | None:
            with Store(self.gw.db, readonly=True) as s:
                rows = s.rollouts(limit=1)
                if rows and rows[0].state == state:
                    return {"row": rows[0], "nodes": {n.node: n for n in s.rollout_nodes(rows[0].id)}}
            return None
        return wait_for(now, timeout, f"the rollout {state}")

    def metrics(self) -> dict:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return parse_exposition(r.read().decode())

    def stop(self) -> None:
        for n in self.nodes.values():
            n.close()
        self.gw.stop()
        self.broker.stop()


@pytest.fixture
def site(tmp_path: Path, built: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[Site]:
    s = Site(tmp_path, built, NODES, **getattr(request, "param", {}))
    try:
        yield s
    finally:
        s.stop()


def add(site: Site, version: str) -> None:
    r = site.cli("release", "add", str(site.built[version]))
    assert f"release {version}: " in r.stdout and "signed by release.pub" in r.stdout


# ---------------------------------------------------------------------------------------------


def test_canary_first_then_waves_and_every_node_ends_on_the_release(site: Site) -> None:
    for n in NODES:
        site.node(n)
    site.known({n: "0.2.0" for n in NODES})
    add(site, "0.3.0")
    check = site.cli("check").stdout
    kept = re.escape(str(site.tmp / "kept"))
    line = rf"^  releases    signed by release\.pub \([0-9a-f]{{16}}\); kept in {kept}: 0\.3\.0$"
    assert re.search(line, check, re.M), check
    assert ("  rollouts    offers again every 30 s until answered, skips a node that answers none within 21600 s, "
            "proved within 600 s; pieces of at most 4096") in check
    r = site.cli("fleet", "update", "--release", "0.3.0", "--canary", "1", "--wave", "2")
    assert "rollout 1: release 0.3.0 to 5 nodes" in r.stdout
    assert "  canary   n01\n  wave 1   n02, n03\n  wave 2   n04, n05\n" in r.stdout
    done = site.wait_rollout("done")
    assert {n: x.state for n, x in done["nodes"].items()} == {n: "done" for n in NODES}
    nodes = site.nodes
    # canaries first, then each wave only once the one before had proved it
    assert min(nodes[n].offered_at[0] for n in ("n02", "n03")) > nodes["n01"].event_at["proved"]
    assert min(nodes[n].offered_at[0] for n in ("n04", "n05")) > max(nodes[n].event_at["proved"]
                                                                     for n in ("n02", "n03"))
    manifest = json.loads((site.built["0.3.0"] / "manifest.json").read_text())
    for n in NODES:
        (got,) = nodes[n].fetched  # each fetched the release once, every file whole and matching
        assert got.release == "0.3.0" and len(got.files) == len(manifest["files"]) and all(got.sha_ok.values())
        assert nodes[n].offers[0]["release"] == manifest and nodes[n].offers[0]["force"] is False
        assert nodes[n].bad_offers == []
    with Store(site.gw.db, readonly=True) as s:
        assert {n.node: n.fw for n in s.nodes()} == {n: "0.3.0" for n in NODES}
    status = site.cli("fleet", "status").stdout
    assert "rollout 1: release 0.3.0, done" in status and "5 done" in status
    fams = wait_for(lambda: (m := site.metrics()) and sample(m, "meetkit_rollout_state", rollout="1",
                                                              release="0.3.0", state="done") == 1 and m, 15,
                    "/metrics to say the rollout is done")
    assert sample(fams, "meetkit_rollout_nodes", rollout="1", release="0.3.0", state="done") == 5
    assert sample(fams, "meetkit_rollout_nodes", rollout="1", release="0.3.0", state="failed") == 0
    pieces = sum(x.pieces for n in NODES for x in nodes[n].fetched)
    assert sample(fams, "meetkit_ota_pieces_served_total") == pieces
    assert sample(fams, "meetkit_ota_bytes_served_total") == 5 * manifest["bytes"]
    assert site.rollout()["state"] == "done"


def test_a_canary_that_rolls_back_halts_the_rollout_and_no_other_node_changes(site: Site) -> None:
    site.node("n01", behaviour="rollback")
    for n in NODES[1:]:
        site.node(n)
    site.known({n: "0.2.0" for n in NODES})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--canary", "1", "--wave", "2")
    halted = site.wait_rollout("halted")
    reason = "n01 (canary) rolled back to 0.2.0: ImportError: no module named 'sds'"
    assert halted["row"].reason == reason
    assert halted["nodes"]["n01"].state == "failed"
    assert {n: halted["nodes"][n].state for n in NODES[1:]} == {n: "waiting" for n in NODES[1:]}
    # no other node was offered the release, nor got a piece of it, nor changed
    assert all(site.nodes[n].offers == [] and site.nodes[n].fetched == [] for n in NODES[1:])
    with Store(site.gw.db, readonly=True) as s:
        assert {n.node: n.fw for n in s.nodes()} == {n: "0.2.0" for n in NODES}
    # the CLI, the page, /metrics and the alarm say so
    status = site.cli("fleet", "status").stdout
    assert f"rollout 1: release 0.3.0, HALTED: {reason}" in status
    assert "n02   wave 1   waiting        0" in status
    page = wait_for(lambda: (d := site.rollout()) and d["state"] == "halted" and d, 15, "the page")
    assert page["reason"] == reason
    dom = browse(site.url + "/", "--dump-dom").stdout  # the page itself, in a real browser
    summary = re.search(r'<p id="rollout-summary">([^<]*)</p>', dom)
    assert summary and summary[1].startswith(f"Rollout 1 of release 0.3.0: HALTED ({html.escape(reason, quote=False)})")
    assert re.search(r'<tr class="bad" data-node="n01"><td[^>]*>n01</td><td[^>]*>canary</td><td class="state"[^>]*>failed</td>', dom)
    fams = wait_for(lambda: (m := site.metrics()) and HALTED in m["meetkit_alarm_active"]["samples"] and m, 15,
                    "the rollout_halted alarm on /metrics")
    assert sample(fams, "meetkit_rollout_state", rollout="1", release="0.3.0", state="halted") == 1
    assert sample(fams, "meetkit_rollout_nodes", rollout="1", release="0.3.0", state="failed") == 1
    site.gw.wait_log(r"ALARM rollout_halted: rollout 1 of release 0\.3\.0 halted: n01 \(canary\) rolled back")
    # a halted rollout serves no piece any more, to anyone
    site.nodes["n01"].ask("0.3.0", 0, 0)
    site.nodes["n02"].ask("0.3.0", 0, 0)
    wait_for(lambda: sample(site.metrics(), "meetkit_ota_requests_refused_total", reason="not_offered") == 2, 15,
             "both requests refused")
    assert site.nodes["n02"].chunks.empty()
    # the next rollout (the operator left the canary out) clears the alarm
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n02", "--canary", "1")
    site.wait_rollout("done")
    wait_for(lambda: HALTED not in site.metrics()["meetkit_alarm_active"]["samples"], 15, "the alarm over")
    site.gw.wait_log(r"alarm rollout_halted over: rollout 2 of release 0\.3\.0 started")


def test_a_rollout_goes_on_after_a_gateway_restart(site: Site) -> None:
    gate = threading.Event()
    site.node("n01", gate=gate)
    for n in ("n02", "n03"):
        site.node(n)
    site.known({"n01": "0.2.0", "n02": "0.2.0", "n03": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02,n03", "--canary", "1", "--wave", "5")
    # the canary has installed it and runs it on trial: the gateway goes away
    wait_for(lambda: "installed" in site.nodes["n01"].event_at, 30, "the canary installed")
    with Store(site.gw.db, readonly=True) as s:
        wait_for(lambda: s.rollout_nodes(1)[0].state == "installed", 15, "the gateway to take `installed`")
    site.gw.stop()
    gate.set()  # proved while the gateway is away: the broker keeps the event in the gateway's session
    wait_for(lambda: "proved" in site.nodes["n01"].event_at, 15, "the canary proved")
    site.gw.start()
    done = site.wait_rollout("done")
    assert done["row"].id == 1 and {n: x.state for n, x in done["nodes"].items()} == {
        "n01": "done", "n02": "done", "n03": "done"}
    # taken up where it was: the canary was offered once, the wave once, after the restart
    assert [len(site.nodes[n].offers) for n in ("n01", "n02", "n03")] == [1, 1, 1]
    status = site.cli("fleet", "status").stdout
    assert "rollout 1: release 0.3.0, done" in status


@pytest.mark.parametrize("site", [{"offer_every_s": 1}], indirect=True)
def test_offers_are_repeated_until_the_node_answers(site: Site) -> None:
    a = site.node("n01", behaviour="silent")
    site.known({"n01": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01")
    wait_for(lambda: len(a.offers) >= 3, 30, "three offers")
    with Store(site.gw.db, readonly=True) as s:
        r, (n,) = s.rollouts()[0], s.rollout_nodes(1)
    assert r.state == "running" and n.state == "offered" and n.offers >= 3  # a node away halts nothing
    a.behaviour = "ok"  # it is back
    site.wait_rollout("done")
    assert a.fetched and all(a.fetched[0].sha_ok.values())


@pytest.mark.parametrize("site", [{"offer_every_s": 1, "answer_within_s": 3}], indirect=True)
def test_a_node_away_or_silent_is_skipped_and_the_rollout_ends_without_it(site: Site) -> None:
    for n in ("n01", "n02", "n03", "n04"):
        site.node(n, behaviour="silent" if n == "n03" else "ok")
    site.known({n: "0.2.0" for n in ("n01", "n02", "n03", "n04")})
    site.nodes["n02"].close()  # its lamp post loses power: not heard again
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02,n03,n04", "--canary", "1", "--wave", "3")
    mute = site.nodes["n03"]
    wait_for(lambda: mute.offers, 60, "n03 offered the release")
    mute.status()  # n03 is there (heard after its first offer) but answers no offer
    done = site.wait_rollout("done", timeout=60)
    assert done["row"].reason == "2 nodes skipped: n02, n03"
    assert {n: x.state for n, x in done["nodes"].items()} == {
        "n01": "done", "n02": "skipped", "n03": "skipped", "n04": "done"}
    away, silent = done["nodes"]["n02"], done["nodes"]["n03"]
    assert re.fullmatch(r"not heard since \S+Z, no answer to \d+ offers in 3 s", away.reason or ""), away.reason
    assert re.fullmatch(r"heard at \S+Z but no answer to \d+ offers in 3 s \(does its firmware take offers\? is its "
                        r"ota topic in the broker's ACL\?\)", silent.reason or ""), silent.reason
    assert away.offers >= 3 and silent.offers == len(mute.offers) >= 3
    # skipping is no failure: no alarm, and the operator sees who did not get the release, and why
    status = site.cli("fleet", "status").stdout
    assert "rollout 1: release 0.3.0, done: 2 nodes skipped: n02, n03" in status
    assert re.search(r"^  n02   wave 1   skipped +\d+  not heard since ", status, re.M), status
    assert "2 done, 2 skipped" in status
    assert f"rollout 1 of 0.3.0 (done): wave 1, skipped: {away.reason}" in status  # under the node
    fams = wait_for(lambda: (m := site.metrics()) and sample(m, "meetkit_rollout_state", rollout="1", release="0.3.0",
                                                              state="done") == 1 and m, 15, "/metrics: done")
    assert sample(fams, "meetkit_rollout_nodes", rollout="1", release="0.3.0", state="skipped") == 2
    assert HALTED not in fams["meetkit_alarm_active"]["samples"]
    page = site.rollout()
    assert page["reason"] == "2 nodes skipped: n02, n03"
    assert {n["node"]: n["state"] for n in page["nodes"]}["n02"] == "skipped"
    dom = browse(site.url + "/", "--dump-dom").stdout
    summary = re.search(r'<p id="rollout-summary">([^<]*)</p>', dom)
    assert summary and summary[1].startswith("Rollout 1 of release 0.3.0: done (2 nodes skipped: n02, n03); "
                                             "2 done, 2 skipped"), summary
    assert re.search(r'<tr class="skipped" data-node="n02"><td[^>]*>n02</td><td[^>]*>wave 1</td>'
                     r'<td class="state"[^>]*>skipped</td>',
                     dom)
    # n02 comes back: this rollout is over for it; a new one of the same release offers it
    back = site.node("n02")
    site.known({"n02": "0.2.0"})
    r = site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    assert "  canary   n02\n  already  n01 (they run 0.3.0)" in r.stdout
    site.wait_rollout("done")
    assert back.fetched and all(back.fetched[0].sha_ok.values())


@pytest.mark.parametrize("site", [{"offer_every_s": 1, "answer_within_s": 2}], indirect=True)
def test_a_rollout_whose_every_canary_is_skipped_halts_before_any_wave(site: Site) -> None:
    for n in ("n01", "n02"):
        site.node(n)
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    site.nodes["n01"].close()  # the canary is away
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    halted = site.wait_rollout("halted", timeout=60)
    reason = ("no canary proved 0.3.0: n01 skipped; the waves are not offered a release no node has proved "
              "(`fleet update` again once a canary is back, or with --nodes naming canaries that are on the air)")
    assert halted["row"].reason == reason
    assert halted["nodes"]["n01"].state == "skipped" and halted["nodes"]["n02"].state == "waiting"
    assert site.nodes["n02"].offers == []
    site.gw.wait_log(r"ALARM rollout_halted: rollout 1 of release 0\.3\.0 halted: "
                     r"no canary proved 0\.3\.0: n01 skipped")
    assert f"rollout 1: release 0.3.0, HALTED: {reason}" in site.cli("fleet", "status").stdout


def test_a_release_with_a_bad_signature_or_a_changed_file_is_refused(site: Site, tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    r = site.cli("release", "add", str(site.built["forged"]), ok=False)
    assert "refused" in r.stderr and "release.sig: bad signature" in r.stderr
    changed = tmp_path / "changed"
    shutil.copytree(site.built["0.3.0"], changed)
    (changed / "files" / "lib" / "node.mpy").write_bytes(b"\x00" + (changed / "files/lib/node.mpy").read_bytes()[1:])
    r = site.cli("release", "add", str(changed), ok=False)
    assert "files/lib/node.mpy: sha256 does not match the manifest" in r.stderr
    assert not (kept / "0.3.0").exists()
    r = site.cli("fleet", "update", "--release", "0.3.0", ok=False)
    assert "no release 0.3.0" in r.stderr
    a = site.node("n01")
    site.known({"n01": "0.2.0"})
    site.cli("release", "add", str(site.built["0.3.0"]), umask=0o077)  # as root under a strict umask
    # readable by the service's own user: folders 0755, files 0644
    assert {stat.S_IMODE(p.stat().st_mode) for p in (kept / "0.3.0").rglob("*") if p.is_dir()} == {0o755}
    assert {stat.S_IMODE(p.stat().st_mode) for p in (kept / "0.3.0").rglob("*") if p.is_file()} == {0o644}
    assert stat.S_IMODE((kept / "0.3.0").stat().st_mode) == 0o755 == stat.S_IMODE(kept.stat().st_mode)
    # a kept release changed on the gateway's disk afterwards: `fleet update` refuses it...
    mpy = kept / "0.3.0" / "files" / "lib" / "node.mpy"
    mpy.write_bytes(mpy.read_bytes()[:-1] + bytes([mpy.read_bytes()[-1] ^ 1]))
    r = site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01", ok=False)
    assert f"{mpy}: sha256 does not match the manifest" in r.stderr
    # ... and so does the running gateway, for a rollout in the store: it halts, nothing is offered
    with Store(site.gw.db) as s:
        s.add_rollout("0.3.0", False, 1, 10, [("n01", 0, "waiting", None)], time.time())
    halted = site.wait_rollout("halted", timeout=30)
    assert halted["row"].reason == f"release 0.3.0 cannot be used: {mpy}: sha256 does not match the manifest"
    assert a.offers == [] and halted["nodes"]["n01"].state == "waiting"


def test_a_downgrade_needs_force(site: Site) -> None:
    for n in ("n01", "n02"):
        site.node(n, fw="0.3.0")
    site.known({"n01": "0.3.0", "n02": "0.3.0"})
    add(site, "0.2.0")
    r = site.cli("fleet", "update", "--release", "0.2.0", "--nodes", "n01,n02", ok=False)
    assert "nothing started" in r.stderr
    assert "n01: runs 0.3.0, newer than 0.2.0: a downgrade needs --force" in r.stderr
    assert "rollouts   none yet" in site.cli("fleet", "status").stdout
    r = site.cli("fleet", "update", "--release", "0.2.0", "--nodes", "n01,n02", "--force")
    assert "(forced: downgrades allowed)" in r.stdout
    site.wait_rollout("done")
    assert all(site.nodes[n].offers[0]["force"] is True for n in ("n01", "n02"))


def test_pieces_go_only_to_the_node_offered_and_only_of_its_release(site: Site) -> None:
    a = site.node("n01", behaviour="accept")  # it fetches, and then takes its time
    b = site.node("n02")
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    wait_for(lambda: a.fetched, 30, "the canary's fetch")
    m = a.offers[0]["release"]
    b.ask("0.3.0", 0, 0)  # in the next wave: not offered it yet
    a.ask("0.1.0", 0, 0)  # a release not offered to it
    a.ask("0.3.0", 0, 0, topic_node="n02")  # on another node's topic: the ACL drops it
    a.ask("0.3.0", len(m["files"]), 0)  # no such file
    a.ask("0.3.0", 0, m["files"][0]["size"] + 1)  # beyond the file
    a.c.publish("meetkit/n01/ota/get", b"{not json", qos=1).wait_for_publish(5)
    a.ask("0.3.0", 0, 0, length=1_000_000)  # the control: answered, capped
    head, _, piece = a.chunks.get(timeout=10).partition(b"\n")
    assert json.loads(head) == {"release": "0.3.0", "file": 0, "off": 0}
    assert len(piece) == min(4096, m["files"][0]["size"])
    fams = wait_for(lambda: (f := site.metrics()) and sample(f, "meetkit_ota_requests_refused_total",
                                                            reason="bad_request") == 1 and f,
                    15, "the refusals counted")
    assert {r: sample(fams, "meetkit_ota_requests_refused_total", reason=r)
            for r in ("not_offered", "bad_request", "beyond_end", "rate")} == {
        "not_offered": 2, "bad_request": 1, "beyond_end": 2, "rate": 0}
    assert a.chunks.empty() and b.chunks.empty()
    site.gw.wait_log(r"ota/get of n02 refused \(not_offered\): asked for release '0\.3\.0': no release offered to it")


# 2 pieces a second: the canary is still fetching when the rollout halts (and no piece comes after)
@pytest.mark.parametrize("site", [{"prove_within_s": 2, "pieces_per_s": 2}], indirect=True)
def test_a_node_that_does_not_prove_in_time_halts_the_rollout(site: Site) -> None:
    before = set(threading.enumerate())
    slow = site.node("n01", behaviour="accept")
    site.node("n02")
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    halted = site.wait_rollout("halted", timeout=30)
    assert halted["row"].reason == "n01 (canary) not proved within 2 s of accepting it (last: accepted)"
    assert site.nodes["n02"].offers == []
    # the canary, cut off mid-fetch, loses power: its fetch stops with it (close() says which
    # thread did not), rather than asking on a closed connection after the test
    assert slow.offers and not slow.fetched
    slow.close()
    left = [t.name for t in threading.enumerate() if t not in before and not t.name.startswith("paho-mqtt-client-n02")]
    assert left == [], left


def test_a_node_without_a_node_key_is_refused_up_front_and_halts_a_rollout_under_way(site: Site) -> None:
    for n in ("n01", "n02"):
        site.node(n)
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    add(site, "0.3.0")
    path = site.broker.out / "node-keys.json"
    keys = json.loads(path.read_text())
    without = {"nodes": {k: v for k, v in keys["nodes"].items() if k != "n02"}}
    path.write_text(json.dumps(without))
    r = site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", ok=False)
    assert f"n02: {path}: no key for n02 (`meetkit broker add-node n02` makes one)" in r.stderr
    path.write_text(json.dumps(keys))
    gate = threading.Event()
    site.nodes["n01"].gate = gate  # the canary waits on trial while its wave's key goes
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    wait_for(lambda: "installed" in site.nodes["n01"].event_at, 30, "the canary installed")
    path.write_text(json.dumps(without))
    gate.set()
    halted = site.wait_rollout("halted")
    assert halted["row"].reason == (f"n02 (wave 1) not offered: {path}: no key for n02 "
                                    "(`meetkit broker add-node n02` makes one)")
    assert halted["nodes"]["n01"].state == "done" and site.nodes["n02"].offers == []


def test_a_node_that_says_proved_twice_moves_the_rollout_on_once(site: Site) -> None:
    """A power cut after the node's "proved" went out and before it removed its note (app.proved)
    sends it again at the next connection: the second changes nothing."""
    gate = threading.Event()
    site.node("n01")
    site.node("n02", gate=gate)  # the wave waits on trial while the canary says it again
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    wait_for(lambda: "installed" in site.nodes["n02"].event_at, 60, "the wave installed")
    site.nodes["n01"].event("proved", "0.3.0")  # the canary again, as after such a cut
    gate.set()
    done = site.wait_rollout("done")
    assert done["row"].reason is None
    assert {n: x.state for n, x in done["nodes"].items()} == {"n01": "done", "n02": "done"}
    assert all(x.reason is None for x in done["nodes"].values())
    site.nodes["n02"].event("proved", "0.3.0")  # and after the rollout is done
    with Store(site.gw.db, readonly=True) as s:
        wait_for(lambda: len([e for e in s.events("ota", node="n02") if e.state == "proved"]) == 2, 15,
                 "n02's second proof stored")
        assert [e.state for e in s.events("ota", node="n01")][-2:] == ["proved", "proved"]
    status = site.cli("fleet", "status").stdout
    assert "rollout 1: release 0.3.0, done" in status and "2 done" in status, status
    assert site.rollout()["state"] == "done"


# 10 s: time for the node's fetch and install on a slow machine; it then waits on `gate` (on trial)
@pytest.mark.parametrize("site", [{"prove_within_s": 10}], indirect=True)
def test_a_proof_that_comes_after_the_rollout_halted_is_shown_and_the_halt_stays(site: Site) -> None:
    """A node silent past prove_within_s (a power cut, no network) halts the rollout; when it comes
    back and says "proved" (its note survives the cut) the operator sees it, and decides."""
    gate = threading.Event()
    site.node("n01", gate=gate)
    site.node("n02")
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    halted = site.wait_rollout("halted", timeout=30)
    first = "n01 (canary) not proved within 10 s of accepting it (last: installed)"
    assert halted["row"].reason == first
    gate.set()  # back: it proves it now
    late = wait_for(lambda: (r := site.wait_rollout("halted")) and "proved it at" in (r["row"].reason or "") and r,
                    30, "the late proof shown")
    assert re.fullmatch(re.escape(first) + r"; n01 proved it at \S+, after the rollout halted \(late; it stays "
                        r"halted\)", late["row"].reason), late["row"].reason
    n01 = late["nodes"]["n01"]
    assert n01.state == "failed" and n01.reason.endswith("after the rollout halted (late; it stays halted)")
    assert late["nodes"]["n02"].state == "waiting" and site.nodes["n02"].offers == []
    status = site.cli("fleet", "status").stdout
    assert "HALTED: " + first + "; n01 proved it at " in status, status
    assert HALTED in site.metrics()["meetkit_alarm_active"]["samples"]  # still the operator's to end
    # said once, however often it says it again
    site.nodes["n01"].event("proved", "0.3.0")
    with Store(site.gw.db, readonly=True) as s:
        wait_for(lambda: s.rollouts(limit=1)[0].events_seen >= max(e.id for e in s.events("ota")), 15,
                 "the second proof looked at")
        assert s.rollouts(limit=1)[0].reason == late["row"].reason
    # the operator goes on: the node runs the release, a new rollout takes it as done
    r = site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    assert "already  n01 (they run 0.3.0)" in r.stdout, r.stdout
    done = site.wait_rollout("done", timeout=60)
    assert {n: x.state for n, x in done["nodes"].items()} == {"n01": "done", "n02": "done"}


def test_a_download_a_node_abandons_halts_the_rollout_with_why(site: Site) -> None:
    """A node that gave up a download it had accepted (firmware/lib/ota.py: its heap could not take
    the kept offer after a restart) reports `refused` without a release, as it could not read which:
    the rollout under way takes it as its own and halts with the node's reason."""
    n = site.node("n01", behaviour="accept")
    site.node("n02")
    site.known({"n01": "0.2.0", "n02": "0.2.0"})
    add(site, "0.3.0")
    site.cli("fleet", "update", "--release", "0.3.0", "--nodes", "n01,n02", "--canary", "1")
    wait_for(lambda: n.fetched, 60, "the canary's download")
    why = "download abandoned: the node restarted 4 times while it was on"
    n.event("refused", reason=why)
    halted = site.wait_rollout("halted", timeout=30)
    assert halted["row"].reason == f"n01 (canary) refused: {why}"
    assert site.nodes["n02"].offers == []
