"""End to end: the status page in real headless Chromium (Debian's `chromium`), against the
gateway's store fed by two simulated nodes for a simulated hour through a real Mosquitto.

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

from meetkit_gateway.http import StatusServer
from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

ROOT = Path(__file__).resolve().parents[2]
NODES = (("street-01", "quiet-street", "esp32-devkitc"),
         ("site-01", "construction-site", "esp32-devkitc-sds011"))
HOURS = 1.0

TARGETS = [{"name": "city-influx", "kind": "influxdb", "queue_rows": 42, "oldest_age_s": 95.0,
            "last_success": time.time() - 30, "retries": 3, "dead_letters": 0, "up": True, "last_error": None}]


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
    broker = Mosquitto(work).start()
    gateway = GatewayProcess(work, broker.host, broker.port, client_id="meetkit-status-page").start()
    nodes = []
    started = time.monotonic()
    try:
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
        # The gateway process serves no HTTP yet (service.py is wired separately): the status
        # server runs here, read-only over the running gateway's store, as it would inside it.
        with StatusServer(gateway.db, "127.0.0.1", 0, targets=lambda: TARGETS) as server:
            yield {"server": server, "db": gateway.db, "work": work, "sim_wall": sim_wall, "nodes": nodes}
    finally:
        for n in nodes:
            n.stop()
        gateway.stop()
        broker.stop()


def test_the_gateway_stored_an_hour_of_both_nodes(fed: dict) -> None:
    with urllib.request.urlopen(fed["server"].url + "/api/nodes", timeout=10) as r:
        doc = json.load(r)
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert set(nodes) == {node_id for node_id, _, _ in NODES}
    for n in nodes.values():
        assert n["records"] >= 55 and n["gaps"] == 0 and "stale" not in n["flags"], n
    with urllib.request.urlopen(fed["server"].url + "/healthz", timeout=10) as r:
        assert r.status == 200
    print(f"simulated {HOURS:g} h of {len(NODES)} nodes in {fed['sim_wall']:.1f} s wall")


def test_the_page_shows_the_fleet_and_the_plots_in_chromium(fed: dict) -> None:
    url = fed["server"].url + "/"
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
    assert '<tr class="" data-target="city-influx">' in dom and "<td class=\"num\">42</td>" in dom

    shot = ROOT / "build" / "status-page.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    done = browse(url, f"--screenshot={shot}", "--window-size=1280,1600")
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.exists() and shot.stat().st_size > 20_000, "the screenshot is missing or blank"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"chromium: {time.monotonic() - t0:.1f} s for the DOM and the screenshot {shot}")
