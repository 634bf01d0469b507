"""End to end: the status page in real headless Chromium (Debian's `chromium`), served by the
gateway process itself (`meetkit-gateway run`, `[http] port = 0`: the address comes from its log
line "status page and /metrics on http://..."), fed by two simulated nodes for a simulated hour
through a real Mosquitto, and forwarding to a real VictoriaMetrics. A fleet register names one of
the nodes, places it on the map and lists a spare node that never reported; the other node is not
in it.

The screenshot is kept as build/status-page.png.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.store import Store
from meetkit_tools.services import GatewayProcess, Mosquitto, VictoriaMetrics
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario
from tests.metrics import parse_exposition, sample

ROOT = Path(__file__).resolve().parents[2]
NODES = (("street-01", "quiet-street", "esp32-devkitc"),
         ("site-01", "construction-site", "esp32-devkitc-sds011"))
HOURS = 1.0
REGISTER = """
# the test lab's register, as `meetkit fleet set` writes it
[nodes."street-01"]
board = "esp32-devkitc"
name = "Dam, lamp post 12"
lat = 52.3731
lon = 4.8922
height_m = 3.5
installed = 2026-11-24

[nodes."spare-01"]
board = "olimex-esp32-poe"
name = "Spui (bracket only)"
"""



def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def chromium() -> str:
    for cand in ("chromium", "chromium-browser"):
        path = shutil.which(cand)
        if path:
            return path
    pytest.fail("chromium is not installed: run `make setup` (apt-get install chromium)")


def browse(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    # --virtual-time-budget: the page's fetches and scripts run, then the DOM is dumped
    return subprocess.run(
        [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", "--virtual-time-budget=10000", *extra, url],
        capture_output=True, text=True, timeout=90,
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("status-page")
    vm = VictoriaMetrics(work).start()
    broker = Mosquitto(work).start()
    (work / "fleet.toml").write_text(REGISTER)
    gateway = GatewayProcess(work, broker.host, broker.port, client_id="meetkit-status-page", extra_toml=(
        f'\n[[forward]]\nname = "city-influx"\ntype = "influx"\nurl = "{vm.url}"\napi = "v1"\ndb = "meetkit"\n'
        '\n[fleet]\npath = "fleet.toml"\n'  # relative to gateway.toml's folder
    )).start()
    nodes = []
    started = time.monotonic()
    try:
        url = gateway.status_url()  # the gateway process's own server, from its log
        for i, (node_id, scenario, board) in enumerate(NODES):
            spec = NodeSpec(node_id=node_id, scenario=load_scenario(scenario), workdir=work / node_id,
                            board=board, broker_port=broker.port, until_s=HOURS * 3600, seed=i + 1)
            nodes.append(SimNode(spec).start())
        for n in nodes:
            n.wait(timeout=120)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the last batches may still be in flight
            if gateway.db.exists():
                with sqlite3.connect(gateway.db) as db:
                    per_node = dict(db.execute("SELECT node, count(*) FROM records GROUP BY node"))
                if all(per_node.get(node_id, 0) >= 55 for node_id, _, _ in NODES):
                    break
            time.sleep(0.2)
        sim_wall = time.monotonic() - started
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # and forwarded: the queue to VictoriaMetrics empties
            if [t.get("queue_rows") for t in get_json(url + "/api/targets")["targets"]] == [0]:
                break
            time.sleep(0.2)
        yield {"url": url, "db": gateway.db, "work": work, "sim_wall": sim_wall, "nodes": nodes, "vm": vm}
    finally:
        for n in nodes:
            n.stop()
        gateway.stop()
        broker.stop()
        vm.stop()


def test_the_gateway_stored_an_hour_of_both_nodes(fed: dict) -> None:
    doc = get_json(fed["url"] + "/api/nodes")
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert set(nodes) == {node_id for node_id, _, _ in NODES} | {"spare-01"}
    for node_id, _, _ in NODES:
        n = nodes[node_id]
        assert n["records"] >= 55 and n["gaps"] == 0 and "stale" not in n["flags"], n
    assert nodes["spare-01"]["flags"] == ["never seen"] and nodes["spare-01"]["records"] == 0
    assert nodes["site-01"]["flags"][-1] == "not in the register" and nodes["street-01"]["register"]["lat"] == 52.3731
    with urllib.request.urlopen(fed["url"] + "/healthz", timeout=10) as r:
        assert r.status == 200
    # forwarded: everything the gateway stored reached VictoriaMetrics, and its /metrics says so
    (target,) = doc["targets"]
    assert target["name"] == "city-influx" and target["up"] is True and target["queue_rows"] == 0, target
    with Store(fed["db"], readonly=True) as s:
        readings = s.counts().readings
    with urllib.request.urlopen(fed["url"] + "/metrics", timeout=10) as r:
        metrics = parse_exposition(r.read().decode())
    fleet = {name[len("meetkit_fleet_"):]: sample(metrics, name)
             for name in metrics if name.startswith("meetkit_fleet_")}
    assert fleet == {"error": 0, "nodes_registered": 2, "nodes_never_seen": 1, "nodes_unregistered": 1}, fleet
    sent = sample(metrics, "meetkit_forward_sent_rows_total", target="city-influx", kind="influxdb")
    assert sent >= readings > 0, metrics["meetkit_forward_sent_rows_total"]
    assert {s["metric"]["node"] for s in fed["vm"].export('{__name__="meetkit_avg"}')} == {
        node_id for node_id, _, _ in NODES}
    print(f"simulated {HOURS:g} h of {len(NODES)} nodes in {fed['sim_wall']:.1f} s wall")


def test_the_page_shows_the_fleet_and_the_plots_in_chromium(fed: dict) -> None:
    url = fed["url"] + "/"
    t0 = time.monotonic()
    done = browse(url, "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    dom = done.stdout
    assert 'data-loaded="1"' in dom, f"the page's script did not finish:\n{dom[:3000]}\n{done.stderr[-2000:]}"
    fleet = re.search(r'<table id="fleet">.*?</table>', dom, re.S)
    assert fleet, dom[:3000]
    for node_id, _, _ in NODES:
        assert f'<td class="node">{node_id}</td>' in fleet.group(0), fleet.group(0)
        section = re.search(rf'<section data-node="{node_id}">.*?</section>', dom, re.S)
        assert section, f"no plots for {node_id}"
        assert section.group(0).count('class="uplot') == 4, "four uPlot charts per node"
        assert section.group(0).count("<canvas") >= 4
    rows = {m[1]: re.findall(r"<td[^>]*>(.*?)</td>", m[2])
            for m in re.finditer(r'<tr class="[^"]*" data-node="([^"]+)">(.*?)</tr>', fleet.group(0), re.S)}
    street = rows["street-01"]  # node, name, board, installed, position, last seen, ...
    assert street[1:4] == ["Dam, lamp post 12", "esp32-devkitc", "2026-11-24"], street
    assert street[4] == ('<a class="map" target="_blank" rel="noopener" href="https://www.openstreetmap.org/'
                         '?mlat=52.37310&amp;mlon=4.89220#map=18/52.37310/4.89220">52.37310, 4.89220</a> at 3.5 m'), street
    assert re.fullmatch(r"\d+ s ago", street[5]), street  # the time itself in the cell's title
    assert "register" not in street[-1] and "never" not in street[-1], street
    spare = rows["spare-01"]
    assert spare[1:6] == ["Spui (bracket only)", "olimex-esp32-poe", "–", "–", "never"], spare
    assert '<span class="flag never-seen">never seen</span>' in spare[-1], spare
    assert not re.search(r'<section data-node="spare-01">', dom), "no plots for a node that never reported"
    site = rows["site-01"]
    assert site[1:5] == ["–"] * 4 and '<span class="flag not-in-the-register">not in the register</span>' in site[-1]
    assert "2 nodes heard of (2 in the register, 1 never seen), " in dom, dom[:2000]
    target = re.search(r'<tr class="" data-target="city-influx">(.*?)</tr>', dom, re.S)
    assert target, "the forwarding target's row, up"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", target.group(1))
    assert cells[:3] == ["city-influx", "influxdb", "0"], cells  # name, kind, nothing queued
    assert " UTC (" in cells[4] and "ago)" in cells[4], cells  # the last success, just now

    shot = ROOT / "build" / "status-page.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    done = browse(url, f"--screenshot={shot}", "--window-size=1280,1600")
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.exists() and shot.stat().st_size > 20_000, "the screenshot is missing or blank"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"chromium: {time.monotonic() - t0:.1f} s for the DOM and the screenshot {shot}")
