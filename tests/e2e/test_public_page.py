"""End to end: the public page for residents (`meetkit-gateway publish`), generated from a real
SQLite store by the real command, opened from its folder (file://) in real headless Chromium at
1400 and 400 px, in English and Dutch; its downloads parsed and held to the store.

The store holds three and a half days of 5-minute records of one registered node around the
October clock change (Saturday 24 to Tuesday 27 October 2026, Europe/Amsterdam), its values set per
local hour so that every daily value is known by hand; a registered node without data, and a node
that the register does not name (left out). The page is published as at Tuesday 27 October 12:00.

Screenshots: build/screens/public-{en,nl}-{1400,400}.png.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest

from meetkit_gateway import payload
from meetkit_gateway.store import Store
from meetkit_tools.dev.chromium import browse


ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "meetkit-gateway")
AMS = ZoneInfo("Europe/Amsterdam")
NODE, VISITOR = "street-01", "visitor-01"
AT = dt.datetime(2026, 10, 27, 12, 0, tzinfo=AMS)
DAYS = [dt.date(2026, 10, 24), dt.date(2026, 10, 25), dt.date(2026, 10, 26), dt.date(2026, 10, 27)]
BASE = {DAYS[0]: 8.0, DAYS[1]: 20.0, DAYS[2]: 12.0, DAYS[3]: 6.0}  # PM2.5 of each day; its mean is BASE + 1
STEP = 300
REGISTER = """
[nodes."street-01"]
board = "esp32-devkitc"
name = "Dam, lamp post 12"
lat = 52.3731
lon = 4.8922
height_m = 3.5
installed = 2026-10-20
serials = { pm = "PMS5003-2311-0412", mic = "ICS-7781", climate = "BME-0042" }
noise_offset_db = -1.3
notes = "bracket on the canal side, key at the cafe"
chip = "240ac4123456"
fw = "0.2.0"

[nodes."spare-01"]
name = "Spui (bracket only)"
"""
#: what of the node and the register may never be on the public page
INTERNALS = ("PMS5003-2311-0412", "ICS-7781", "BME-0042", "bracket on the canal side", "240ac4123456", "0.2.0",
             "esp32-devkitc", "-1.3", "rssi", "boot", "firmware", "serial", VISITOR)


def level(x: dt.datetime) -> float | None:
    """LAeq by the local time of a record's start: day 60, evening 50, night 45; on Sunday 25 no
    records 19:00-21:00 (the node was off)."""
    if x.date() == DAYS[1] and 19 <= x.hour < 21:
        return None
    return 60.0 if 7 <= x.hour < 19 else 50.0 if 19 <= x.hour < 23 else 45.0


def record(seq: int, t: int) -> dict[str, Any] | None:
    x = dt.datetime.fromtimestamp(t, AMS)
    laeq = level(x)
    if laeq is None:
        return None
    pm25 = BASE[x.date()] + (2.0 if (x.minute // 5) % 2 else 0.0)  # alternating: an hour's mean is BASE + 1
    humid = x.date() == DAYS[2] and x.hour < 6
    rec: dict[str, Any] = {"seq": seq, "ts": t, "up": seq * STEP, "dur": STEP,
                           "pm25": [pm25, pm25 - 1, pm25 + 1, 290], "pm10": [2 * pm25, 2 * pm25 - 1, 2 * pm25 + 1, 290],
                           "rh": [90.0 if humid else 60.0, 59.0, 91.0, 50],
                           "LAeq": [laeq, laeq - 5, laeq + 10, STEP]}
    flags = {}
    if humid:
        flags |= {"pm25": ["rh_high"], "pm10": ["rh_high"]}
    if x.date() == DAYS[0] and x.hour < 6:
        flags["LAeq"] = ["floor"]
    if flags:
        rec["f"] = flags
    return rec


def fill(db: Path) -> int:
    t0, t1 = int(dt.datetime(2026, 10, 24, tzinfo=AMS).timestamp()), int(AT.timestamp())
    recs = [r for seq, t in enumerate(range(t0, t1, STEP)) if (r := record(seq, t)) is not None]
    with Store(db) as s:
        for node, rs in ((NODE, recs), (VISITOR, recs[-24:])):
            for i in range(0, len(rs), 12):  # under the contract's 4096 bytes
                doc = {"v": 1, "node": node, "boot": 7, "fw": "0.2.0", "board": "esp32-devkitc",
                       "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
                       "units": {"pm25": "ug/m3", "pm10": "ug/m3", "rh": "%", "LAeq": "dB"}, "recs": rs[i:i + 12]}
                s.add_batch(payload.parse_batch(json.dumps(doc, separators=(",", ":")).encode(), node, now=t1), received_at=t1)
    return len(recs)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("public")
    (work / "fleet.toml").write_text(REGISTER)
    (work / "gateway.toml").write_text('[mqtt]\nhost = "127.0.0.1"\n[store]\npath = "gateway.db"\n'
                                       '[fleet]\npath = "fleet.toml"\n')
    n = fill(work / "gateway.db")
    out = work / "site"
    done = subprocess.run([CLI, "publish", "--config", str(work / "gateway.toml"), "--out", str(out), "--days", "7",
                           "--at", AT.isoformat()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    yield {"work": work, "out": out, "stdout": done.stdout, "records": n}


def test_publish_says_what_it_wrote_and_left_out(site):
    out = site["stdout"]
    assert "published 2 location(s), 1 with data, days 2026-10-20 to 2026-10-26 (Europe/Amsterdam)" in out, out
    assert f"left out 1 node(s) not in the fleet register: {VISITOR}" in out, out
    for name in ("index.html", "nl.html", "data/daily.csv", "data/daily.json", "data/hourly.csv", "data/hourly.json",
                 "data/series.js", "assets/uPlot.iife.min.js", "assets/uPlot.min.css", "assets/public.js",
                 "assets/public.css", "assets/uPlot.LICENSE.txt"):
        assert (site["out"] / name).is_file(), name
    assert [p.name for p in site["out"].rglob(".*")] == [".publish-cache.json"], "no temporary file left behind"
    assert "3 day(s) computed, 0 unchanged since the last run" in out, out  # 24, 25 and 26 October


def publish(work: Path, out: Path) -> str:
    done = subprocess.run([CLI, "publish", "--config", str(work / "gateway.toml"), "--out", str(out), "--days", "7",
                           "--at", AT.isoformat()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_later_run_computes_again_only_the_days_whose_records_changed(site, tmp_path):
    work = tmp_path
    shutil.copy(site["work"] / "gateway.db", work / "gateway.db")
    shutil.copy(site["work"] / "fleet.toml", work / "fleet.toml")
    shutil.copy(site["work"] / "gateway.toml", work / "gateway.toml")
    shutil.copytree(site["out"], work / "site")
    assert "0 day(s) computed, 3 unchanged" in publish(work, work / "site")
    assert (work / "site" / "data" / "daily.csv").read_bytes() == (site["out"] / "data" / "daily.csv").read_bytes()
    # Sunday's missing evening hours arrive late, from the node's spool after an outage
    lo = int(dt.datetime(2026, 10, 25, 19, tzinfo=AMS).timestamp())
    late = [{"seq": 10_000 + i, "ts": t, "up": 0, "dur": STEP, "pm25": [21.0, 20.0, 22.0, 290],
             "pm10": [42.0, 41.0, 43.0, 290], "LAeq": [50.0, 45.0, 60.0, STEP]}
            for i, t in enumerate(range(lo, lo + 2 * 3600, STEP))]
    with Store(work / "gateway.db") as s:
        for i in range(0, len(late), 12):
            doc = {"v": 1, "node": NODE, "boot": 8, "fw": "0.2.0", "board": "esp32-devkitc",
                   "sensors": {"pm": "pms5003", "mic": "ics43434"},
                   "units": {"pm25": "ug/m3", "pm10": "ug/m3", "LAeq": "dB"}, "recs": late[i:i + 12]}
            s.add_batch(payload.parse_batch(json.dumps(doc).encode(), NODE, now=AT.timestamp()))
    assert "1 day(s) computed, 2 unchanged" in publish(work, work / "site")
    rows = daily({"out": work / "site"})
    # the whole evening at 50 now: Lden = 10 log10((12·10^6 + 4·10^5.5 + 8·10^5.5) / 24), the 9-hour night at 45
    assert (rows["2026-10-25"]["lden"], rows["2026-10-25"]["levening_coverage"]) == ("58.18", "1.0")
    # and a run without the cache gives the same files
    (work / "site" / ".publish-cache.json").unlink()
    before = (work / "site" / "data" / "daily.json").read_text()
    assert "3 day(s) computed, 0 unchanged" in publish(work, work / "site")
    assert json.loads((work / "site" / "data" / "daily.json").read_text())["daily"] == json.loads(before)["daily"]


def daily(site) -> dict[str, dict[str, str]]:
    with open(site["out"] / "data" / "daily.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["location"] for r in rows} == {NODE}
    return {r["date"]: r for r in rows}


def test_daily_values_are_the_hand_computed_ones(site):
    rows = daily(site)
    # from the first day with data to the last that is over: not the page's own Tuesday
    assert list(rows) == [d.isoformat() for d in DAYS[:3]]
    sat, sun, mon = (rows[d.isoformat()] for d in DAYS[:3])
    # PM: BASE + 1 on every whole day
    assert [r["pm25"] for r in (sat, sun, mon)] == ["9.0", "21.0", "13.0"]
    assert [r["pm10"] for r in (sat, sun, mon)] == ["18.0", "42.0", "26.0"]
    # Sunday the 25th has 25 hours, 2 of them without records: 23/25
    assert sun["pm25_coverage"] == "0.92" and sun["night_hours"] == "9.0" and sat["night_hours"] == "8.0"
    assert mon["pm25_rh_high"] == "0.25" and sat["pm25_rh_high"] == "0.0"  # 6 humid hours of 24
    # Lden of an ordinary day at 60/50/45: 10 log10((12·10^6 + 4·10^5.5 + 8·10^5.5) / 24) = 58.18
    assert (sat["lden"], sat["lnight"], sat["lday"], sat["levening"]) == ("58.18", "45.0", "60.0", "50.0")
    assert (mon["lden"], mon["lnight"]) == ("58.18", "45.0")
    # Sunday: the evening has 2 of its 4 hours: no Lden; its 9-hour night all at 45
    assert (sun["lden"], sun["levening"], sun["levening_coverage"], sun["lnight"]) == ("", "", "0.5", "45.0")
    # LAeq,24h of Sunday: 10 log10((12·10^6 + 2·10^5 + 9·10^4.5) / 23) = 57.35
    assert sun["laeq_24h"] == "57.35" and sat["laeq_24h"] == "57.22"


def test_the_downloads_agree_with_each_other_and_the_store(site):
    doc = json.loads((site["out"] / "data" / "daily.json").read_text())
    assert doc["timezone"] == "Europe/Amsterdam" and doc["rules"]["min_coverage"] == 0.75
    assert doc["who"] == {"pm25": {"day": 15.0, "year": 5.0}, "pm10": {"day": 45.0, "year": 15.0},
                          "lden": 53.0, "lnight": 45.0}
    assert doc["locations"] == [
        {"id": "spare-01", "name": "Spui (bracket only)"},
        {"id": NODE, "name": "Dam, lamp post 12", "lat": 52.3731, "lon": 4.8922, "height_m": 3.5,
         "installed": "2026-10-20"}]
    rows = daily(site)
    for r in doc["daily"]:
        c = rows[r["date"]]
        for k, v in r.items():
            assert c[k] == ("" if v is None else str(v)), (r["date"], k, v, c[k])
    # the store's own readings, averaged per local day here: the same daily PM2.5
    with Store(site["work"] / "gateway.db", readonly=True) as s:
        pm = [g for g in s.readings(node=NODE, quantity="pm25")]
    for d in DAYS[:3]:
        vals = [g.avg for g in pm if dt.datetime.fromtimestamp(g.start, AMS).date() == d]
        assert rows[d.isoformat()]["pm25"] == f"{sum(vals) / len(vals):.1f}", d
    hourly = json.loads((site["out"] / "data" / "hourly.json").read_text())["hourly"]
    with open(site["out"] / "data" / "hourly.csv", newline="") as f:
        hourly_csv = list(csv.DictReader(f))
    assert len(hourly) == len(hourly_csv) > 0
    assert hourly_csv[0]["hour"] == hourly[0]["hour"] == "2026-10-24T00:00:00+02:00"
    # every hour of the data, the repeated 02:00 of the 25th twice (its offsets differ)
    hours = [h["hour"] for h in hourly]
    assert "2026-10-25T02:00:00+02:00" in hours and "2026-10-25T02:00:00+01:00" in hours
    assert "2026-10-25T19:00:00+01:00" not in hours  # the gap
    last = hourly[-1]
    assert last["hour"] == "2026-10-27T11:00:00+01:00"
    assert (last["pm25"], last["pm10"], last["laeq"], last["laeq_coverage"]) == (7.0, 14.0, 60.0, 1.0)


def page(site, lang: str) -> str:
    return (site["out"] / ("index.html" if lang == "en" else "nl.html")).read_text()


def who_rows(html: str) -> dict[str, tuple[str, str]]:
    """indicator -> (value shown, row class) of the WHO table of the node's section."""
    section = re.search(rf'<section class="location" id="loc-{NODE}".*?</section>', html, re.S).group(0)
    return {m[2]: (m[3], m[1].strip()) for m in re.finditer(
        r'<tr class="who-row([^"]*)" data-indicator="([^"]+)"><td>.*?</td><td class="v" data-v="[^"]*">([^<]*)</td>',
        section)}


def test_the_pages_show_the_values_beside_the_who_guidelines(site):
    en, nl = page(site, "en"), page(site, "nl")
    assert who_rows(en) == {
        "pm25_day": ("13.0", "below"), "pm25_long": ("14.3", "above"),  # mean of 9, 21, 13
        "pm10_day": ("26.0", "below"), "pm10_long": ("28.7", "above"),
        "lden_day": ("58.2", "above"), "lden_long": ("58.2", "above"),
        "lnight_day": ("45.0", "below"), "lnight_long": ("45.0", "below"),  # Monday's; over 3 days
    }
    assert {k: v[0] for k, v in who_rows(nl).items()} == {k: v[0].replace(".", ",") for k, v in who_rows(en).items()}
    assert "Lnight, over 3 valid days" in en and 'data-date="2026-10-27"' not in en  # the day is not over
    assert "1 of 3 valid days above 15" in en and "1 van 3 geldige dagen boven 15" in nl
    assert "PM2.5, 24-hour mean (Mon 26 Oct 2026)" in en and "PM2.5, 24-uursgemiddelde (ma 26 okt 2026)" in nl
    # the last hour before 12:00: PM2.5 7.0, PM10 14.0, LAeq 60.0
    now = dict(re.findall(r'<span class="v" data-q="(\w+)">([^<]*)</span>', en))
    assert now == {"pm25": "7.0", "pm10": "14.0", "LAeq": "60.0"}
    # the daily table: Sunday's Lden too little data, Monday's humid note
    sun = re.search(r'<tr data-date="2026-10-25">(.*?)</tr>', en).group(1)
    assert '<td class="v none" data-q="lden" data-v="">too little data</td>' in sun
    assert '<td class="v above" data-q="pm25" data-v="21.0">21.0</td>' in sun
    mon = re.search(r'<tr data-date="2026-10-26">(.*?)</tr>', nl).group(1)
    assert "vochtige lucht: PM mogelijk te hoog (25 % van de tijd)" in mon
    sat = re.search(r'<tr data-date="2026-10-24">(.*?)</tr>', en).group(1)
    assert "quiet: near the microphone&#x27;s own noise (25 %)" in sat
    assert '<p class="nodata">No data from this location yet.</p>' in en  # spare-01
    assert 'href="https://www.openstreetmap.org/?mlat=52.37310&amp;mlon=4.89220#map=18/52.37310/4.89220"' in en
    assert 'href="nl.html"' in en and 'href="index.html"' in nl and '<html lang="nl">' in nl


@pytest.mark.parametrize("lang", ["en", "nl"])
def test_nothing_of_the_node_s_internals_is_public(site, lang):
    text = page(site, lang)
    for secret in INTERNALS:
        assert secret not in text, secret
    for f in ("daily.csv", "daily.json", "hourly.csv", "hourly.json", "series.js"):
        data = (site["out"] / "data" / f).read_text()
        for secret in INTERNALS:
            assert secret not in data, (f, secret)
    assert "<audio" not in text and "http://" not in text.replace("http://www.w3.org", "")  # no CDN


@pytest.mark.parametrize("lang", ["en", "nl"])
@pytest.mark.parametrize("width", [1400, 400])
def test_the_page_in_chromium(site, lang, width):
    url = (site["out"] / ("index.html" if lang == "en" else "nl.html")).as_uri()
    done = browse(url, "--dump-dom", f"--window-size={width},1200")
    assert done.returncode == 0, done.stderr[-3000:]
    dom = done.stdout
    assert 'data-loaded="1"' in dom, f"the page's script did not finish:\n{done.stderr[-2000:]}"
    assert 'data-overflow="0"' in dom, f"the page is wider than {width} px: {re.search(r'data-overflow=.[0-9]+', dom)}"
    section = re.search(rf'<section class="location" id="loc-{NODE}".*?</section>', dom, re.S).group(0)
    assert section.count('class="uplot') == 2 and section.count("<canvas") >= 2, "two plots"
    # what the browser shows is what was written: the values, from the store
    assert who_rows(dom) == who_rows(page(site, lang))
    rows = daily(site)
    columns = {"pm25": "pm25", "pm10": "pm10", "laeq": "laeq_24h", "lday": "lday", "levening": "levening",
               "lnight": "lnight", "lden": "lden"}
    shown = {m[1]: dict(re.findall(r'data-q="(\w+)" data-v="([^"]*)"', m[2]))
             for m in re.finditer(r'<tr data-date="([\d-]+)">(.*?)</tr>', section)}
    assert set(shown) == set(rows)
    for date, cells in shown.items():
        assert cells == {q: rows[date][c] for q, c in columns.items()}, date  # the table is the download
    for secret in INTERNALS:
        assert secret not in dom, secret
    shot = ROOT / "build" / "screens" / f"public-{lang}-{width}.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    done = browse(url, f"--screenshot={shot}", f"--window-size={width},{2600 if width > 800 else 4200}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
