"""End to end: the status page in real headless Chromium (Debian's `chromium`), served by the
gateway process itself (`meetkit-gateway run`, `[http] port = 0`: the address comes from its log
line "status page and /metrics on http://..."), fed by two simulated nodes for a simulated hour
through a real Mosquitto, and forwarding to a real VictoriaMetrics. A fleet register names one of
the nodes, places it on the map and lists a spare node that never reported; the other node is not
in it. The nodes' hour is the last hour on the wall clock (their scenario starts an hour ago), and
the gateway's page is set to a time zone other than the default ([http] timezone), so that what
the page shows can be checked against times computed here.

The page is then driven in Chromium over the DevTools protocol (tools/dev/chromium.py) at 1400 and
400 px: its range buttons, its node view, and measurements of the DOM and of uPlot's axes (every
label inside its axis, every table cell on the screen at phone width). Screenshots go to
build/screens/ (and build/status-page.png).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.store import Store
from meetkit_tools.demo import on_the_wall_clock
from meetkit_tools.dev.chromium import Chromium, browse
from meetkit_tools.services import GatewayProcess, Mosquitto, VictoriaMetrics
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario
from tests.metrics import parse_exposition, sample

ROOT = Path(__file__).resolve().parents[2]
NODES = (("street-01", "quiet-street", "esp32-devkitc"),
         ("site-01", "construction-site", "esp32-devkitc-sds011"))
HOURS = 1.0
#: the page's time zone in this test: not the default (Europe/Amsterdam), no DST, -03:00
TZ = "America/Sao_Paulo"
SCREENS = ROOT / "build" / "screens"
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


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("status-page")
    vm = VictoriaMetrics(work).start()
    broker = Mosquitto(work).start()
    (work / "fleet.toml").write_text(REGISTER)
    gateway = GatewayProcess(work, broker.host, broker.port, client_id="meetkit-status-page", extra_toml=(
        f'timezone = "{TZ}"\n'  # the last key of [http]
        f'\n[[forward]]\nname = "city-influx"\ntype = "influx"\nurl = "{vm.url}"\napi = "v1"\ndb = "meetkit"\n'
        '\n[fleet]\npath = "fleet.toml"\n'  # relative to gateway.toml's folder
    )).start()
    nodes = []
    started = time.monotonic()
    try:
        url = gateway.status_url()  # the gateway process's own server, from its log
        begun = time.time() - HOURS * 3600  # the hour before now: records stamped on the wall clock
        for i, (node_id, scenario, board) in enumerate(NODES):
            spec = NodeSpec(node_id=node_id, scenario=on_the_wall_clock(load_scenario(scenario), begun),
                            workdir=work / node_id,
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
            # with every stored reading sent: a queue can be empty for a moment while the nodes'
            # last batches still come in from the broker
            if [t.get("queue_rows") for t in get_json(url + "/api/targets")["targets"]] == [0]:
                with Store(gateway.db, readonly=True) as s:
                    readings = s.counts().readings
                with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                    metrics = parse_exposition(r.read().decode())
                sent = metrics.get("meetkit_forward_sent_rows_total", {}).get("samples", {}).get(
                    frozenset({"target": "city-influx", "kind": "influxdb"}.items()), 0)
                if sent >= readings:
                    break
            time.sleep(0.2)
        yield {"url": url, "db": gateway.db, "work": work, "sim_wall": sim_wall, "nodes": nodes, "vm": vm,
               "begun": begun}
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
        assert f'<td class="node" data-label="node"><a href="#node={node_id}">{node_id}</a></td>' in fleet.group(0), \
            fleet.group(0)
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
    assert f"({TZ})</p>" in dom, "the summary names the page's time zone"
    target = re.search(r'<tr class="" data-target="city-influx">(.*?)</tr>', dom, re.S)
    assert target, "the forwarding target's row, up"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", target.group(1))
    assert cells[:3] == ["city-influx", "influxdb", "0"], cells  # name, kind, nothing queued
    # the last success, just now, in the page's zone: day-month-year, 24-hour clock
    assert re.fullmatch(r"\d\d-\d\d-20\d\d \d\d:\d\d:\d\d \(\d+ s ago\)", cells[4]), cells

    shot = ROOT / "build" / "status-page.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    done = browse(url, f"--screenshot={shot}", "--window-size=1280,1600")
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.exists() and shot.stat().st_size > 20_000, "the screenshot is missing or blank"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"chromium: {time.monotonic() - t0:.1f} s for the DOM and the screenshot {shot}")


# -- the page measured in Chromium (DevTools protocol) -------------------------------------------------

LOADED = "document.body.getAttribute('data-loaded') === '1'"

#: for every uPlot chart: each axis shown, its side, its size (px) and the extent of each of its
#: labels, measured here with the axis's own font; and the canvas's size
AXES = """
(() => {
  const c = document.createElement("canvas").getContext("2d");
  return Object.entries(charts).map(([key, u]) => ({
    key, title: u.root.querySelector(".u-title") ? u.root.querySelector(".u-title").textContent : "",
    width: u.width, root: u.root.getBoundingClientRect().toJSON(),
    x: [u.scales.x.min, u.scales.x.max],
    axes: u.axes.map((a, i) => {
      if (!a.show || !a._values) return null;
      c.font = a.font[0];
      const labels = a._values.map(v => v == null ? "" : String(v));
      return {i, side: a.side, size: a._size, tick: a.ticks.show === false ? 0 : a.ticks.size, gap: a.gap,
              lineHeight: a.font[1], labels,
              widths: labels.map(l => Math.max(0, ...l.split("\\n").map(p => c.measureText(p).width))),
              lines: labels.map(l => l.split("\\n").length),
              pos: i === 0 ? a._splits.map(s => u.valToPos(s, "x")) : []};
    }).filter(a => a),
    plotLeft: u.bbox.left / devicePixelRatio, plotWidth: u.bbox.width / devicePixelRatio,
  }));
})()
"""

#: for every uPlot chart: its legend's time and values as shown, and the time of its newest point
LEGENDS = """
Object.entries(charts).map(([key, u]) => {
  const cells = [...u.root.querySelectorAll(".u-legend .u-series .u-value")].map(e => e.textContent);
  const xs = u.data[0];
  return {key, time: cells[0], values: cells.slice(1), want: xs.length ? fullTime(xs[xs.length - 1]) : null};
})
"""

#: every table cell shown, with its column's name and where it is; and the page's widths
CELLS = """
(() => ({
  client: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
  cells: [...document.querySelectorAll("table td")].filter(td => td.offsetParent !== null).map(td => {
    const r = td.getBoundingClientRect();
    return {table: td.closest("table").id, label: td.getAttribute("data-label"), left: r.left, right: r.right,
            text: td.textContent.slice(0, 40)};
  }),
  plots: [...document.querySelectorAll(".uplot")].filter(p => p.offsetParent !== null)
           .map(p => p.getBoundingClientRect().right),
}))()
"""


def check_axes(charts: list[dict], where: str) -> int:
    """Every label of every axis inside its axis; value labels plain numbers, time labels 24-hour
    HH:MM with the day-month under a day's first tick. Returns the labels checked."""
    checked = 0
    assert charts, f"{where}: no chart"
    for ch in charts:
        for a in ch["axes"]:
            labels = [l for l in a["labels"] if l]
            assert labels, (where, ch["key"], a)
            if a["side"] in (1, 3):  # a value axis: the widest label, its tick and gap fit its width
                need = max(a["widths"]) + a["tick"] + a["gap"]
                assert need <= a["size"] + 0.5, f"{where} {ch['title']}: labels {labels} need {need:.1f} px, axis {a['size']} px"
                for l in labels:
                    assert re.fullmatch(r"-?\d+(\.\d+)?", l), f"{where} {ch['title']}: value label {l!r}"
            else:  # the time axis: its lines fit its height, each label inside the canvas
                need = max(a["lines"]) * a["lineHeight"] + a["tick"] + a["gap"]
                assert need <= a["size"] + 0.5, f"{where} {ch['title']}: time labels need {need:.1f} px, axis {a['size']}"
                for l, w, x in zip(a["labels"], a["widths"], a["pos"]):
                    if not l:
                        continue
                    assert re.fullmatch(r"\d\d:\d\d(\n\d\d-\d\d)?|\d\d-\d\d", l), f"{where}: time label {l!r}"
                    centre = ch["plotLeft"] + x
                    assert centre - w / 2 >= -0.5 and centre + w / 2 <= ch["width"] + 0.5, \
                        f"{where} {ch['title']}: time label {l!r} at {centre:.0f} px, {w:.0f} wide, canvas {ch['width']}"
            checked += len(labels)
    return checked


def check_cells(m: dict, where: str) -> None:
    assert m["scroll"] <= m["client"], f"{where}: the page scrolls sideways ({m['scroll']} > {m['client']} px)"
    assert m["cells"], where
    for c in m["cells"]:
        assert c["left"] >= -0.5 and c["right"] <= m["client"] + 0.5, f"{where}: a cell off the screen: {c}"
    for right in m["plots"]:
        assert right <= m["client"] + 0.5, f"{where}: a plot wider than the screen ({right} > {m['client']})"


@pytest.mark.parametrize("width", [1400, 400])
def test_the_page_measured_in_chromium(fed: dict, width: int) -> None:
    from zoneinfo import ZoneInfo
    from datetime import datetime

    url = fed["url"] + "/"
    SCREENS.mkdir(parents=True, exist_ok=True)
    with Chromium(width, 900) as b:
        b.goto(url)
        b.wait(LOADED, 60, "the page loaded")
        # one time zone, 24-hour clock, day-month order: the summary's time is the API's now in TZ
        summary = b.js("document.getElementById('summary').textContent")
        m = re.search(r"; updated (\d\d-\d\d-\d{4} \d\d:\d\d:\d\d) \((.+)\)$", summary)
        assert m and m[2] == TZ, summary
        shown = datetime.strptime(m[1], "%d-%m-%Y %H:%M:%S").replace(tzinfo=ZoneInfo(TZ)).timestamp()
        assert abs(shown - time.time()) < 120, (summary, "not the time now in", TZ)
        assert summary.startswith("2 nodes heard of (2 in the register, 1 never seen), "), summary
        assert b.js("[plural(1, 'node', 'nodes'), plural(0, 'record', 'records')]") == ["1 node", "0 records"]
        # the 24 h range (the default): the time axis starts at the first record, not 24 h ago
        charts = b.js(AXES)
        assert len(charts) == 4 * len(NODES), [c["key"] for c in charts]
        for ch in charts:
            assert abs(ch["x"][0] - fed["begun"]) < 600, (ch["key"], ch["x"], fed["begun"])
            assert ch["x"][1] - ch["x"][0] < 2 * 3600, ch["x"]
        n = check_axes(charts, f"{width} px, 24 h")
        # with no cursor over a plot, its legend says the newest point, not dashes
        for leg in b.js(LEGENDS):
            assert leg["want"] and leg["time"] == leg["want"], leg
            assert any(v != "–" for v in leg["values"]), leg
        # the pressure axis: four-digit values with their decimals, whole (the old page cut them: ..,015.03)
        press = [a for ch in charts if ch["title"].startswith("Pressure") for a in ch["axes"] if a["side"] == 3]
        assert all(float(l) > 900 for a in press for l in a["labels"] if l), press
        if width == 400:
            cells = b.js(CELLS)
            check_cells(cells, "400 px")
            health = [c for c in cells["cells"] if c["table"] == "fleet" and c["label"] == "health"]
            assert len(health) == 3, health  # two nodes and the spare: each row's health on the screen
        b.screenshot(SCREENS / f"status-{width}.png")
        # the ranges: 7 days comes from the store in 10-minute means, and says so
        b.js("document.querySelector('.overview .ranges button[data-hours=\"168\"]').click()")
        b.wait(LOADED + " && document.getElementById('plots-title').textContent.includes('7 d')", 60)
        assert "means over 10 min" in b.js("document.getElementById('plots-title').textContent")
        assert b.js("document.querySelector('.overview .ranges button[aria-pressed=\"true\"]').textContent") == "7 d"
        charts = b.js(AXES)
        n += check_axes(charts, f"{width} px, 7 d")
        week = get_json(fed["url"] + "/api/series?node=street-01&hours=168")
        assert week["step"] == 600 and 6 <= len(week["start"]) <= 8, (week["step"], week["start"])
        assert all(s % 600 == 0 for s in week["start"])
        b.js("document.querySelector('.overview .ranges button[data-hours=\"1\"]').click()")
        b.wait(LOADED + " && document.getElementById('plots-title').textContent.startsWith('Last 1 h')", 60)
        n += check_axes(b.js(AXES), f"{width} px, 1 h")

        # the node view: every quantity of its newest record, its flags, boots and gaps, firmware, sensors
        b.goto(url + "#node=street-01")
        b.js("location.reload()")
        b.wait(LOADED + " && !document.getElementById('node-view').hidden", 60, "the node view")
        with Store(fed["db"], readonly=True) as s:
            latest = {l.node: l for l in s.latest()}["street-01"]
        rows = b.js("[...document.querySelectorAll('#node-readings tbody tr')].map(tr => "
                    "[...tr.children].map(td => td.textContent))")
        assert [r[0] for r in rows] == list(latest.readings), rows
        for r in rows:
            g = latest.readings[r[0]]
            assert r[4] == g.unit and (r[5] == "–") == (not g.flag_names), (r, g)
            assert r[1] == ("–" if g.avg is None else format_num(g.avg)), (r, g.avg)
        about = dict(b.js("[...document.querySelectorAll('#node-about tr')].map(tr => "
                          "[tr.children[0].textContent, tr.children[1].textContent])"))
        some = next(iter(latest.readings.values()))
        assert about["firmware"] == some.fw and about["board"] == "esp32-devkitc", about
        assert "pm: pms5003" in about["sensors"] and "mic: " in about["sensors"], about
        assert about["gaps"] == "0 records missing" and about["dropped by its spool"] == "0", about
        assert about["configuration (wanted / running)"].startswith(("none sent", "–")), about
        boots = b.js("[...document.querySelectorAll('#node-boots tbody tr')].map(tr => "
                     "[...tr.children].map(td => td.textContent))")
        assert boots and all(r[3] == "0" for r in boots), boots
        node_charts = b.js(AXES)
        units = {g.unit for g in latest.readings.values()}
        assert len(node_charts) == len(units), ([c["title"] for c in node_charts], units)
        n += check_axes(node_charts, f"{width} px, node view")
        if width == 400:
            check_cells(b.js(CELLS), "400 px, node view")
        b.screenshot(SCREENS / f"node-{width}.png")
    print(f"{width} px: {n} axis labels measured, all inside their axes; screenshots in {SCREENS}")


def format_num(v: float) -> str:
    """A number as JavaScript's String() writes it (what the page shows)."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))
