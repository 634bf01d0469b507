"""The public site: two pages (English index.html, Dutch nl.html), the plots' data, the downloads.

    DIR/index.html, DIR/nl.html        per location: the last hour, the WHO comparison, 7 days of
                                       hourly plots, the daily table; what is measured, and how well
    DIR/data/daily.csv, daily.json     every day of every location: means, coverage, flag shares
    DIR/data/hourly.csv, hourly.json   the last 7 days' hourly means
    DIR/data/series.js                 the plots' data, as a script: the page works from a file
                                       (file:// forbids fetch) as from any static host
    DIR/assets/                        the page's CSS and JS, uPlot (vendored, no CDN) and its licence
    DIR/.publish-cache.json            each day's values and the fingerprint of its records, for the
                                       next run (gather.py); nothing of a node

The tables are HTML as written: the page reads without JavaScript; the script draws the plots.
Each file is replaced whole (a temporary file renamed over it), the pages last, so a web server
serving DIR while it is published never sends half a file.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from . import texts
from .gather import WHO, Day, Location, Site, valid
from .indicators import MIN_COVERAGE, PERIODS, Mean, period_mean

HERE = Path(__file__).resolve().parent
VENDOR = HERE.parent / "static" / "vendor"
ASSETS = {HERE / "static" / "public.css": "public.css", HERE / "static" / "public.js": "public.js",
          VENDOR / "uPlot.iife.min.js": "uPlot.iife.min.js", VENDOR / "uPlot.min.css": "uPlot.min.css",
          VENDOR / "uPlot.LICENSE": "uPlot.LICENSE.txt"}
DAILY_ROWS = 31  # days in a page's table; the downloads have all
#: the flags a reader of the page is told about, by what they affect
PM_NOTES = ("rh_high", "range")
NOISE_NOTES = ("floor", "overload", "range")
NOTE_MIN = 0.01  # a flag on less of the time than this is not worth a note
CACHE = ".publish-cache.json"


def write(site: Site, out: Path) -> list[Path]:
    """Write the site into `out` (made if missing); the files written."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "assets").mkdir(exist_ok=True)
    written = [_replace(out / CACHE, json.dumps(site.cache, separators=(",", ":")).encode())]
    for src, name in ASSETS.items():
        written.append(_replace(out / "assets" / name, src.read_bytes()))
    daily, hourly = daily_rows(site), hourly_rows(site)
    written.append(_replace(out / "data" / "daily.csv", _csv(daily)))
    written.append(_replace(out / "data" / "hourly.csv", _csv(hourly)))
    written.append(_replace(out / "data" / "daily.json", _json(site, "daily", daily)))
    written.append(_replace(out / "data" / "hourly.json", _json(site, "hourly", hourly)))
    written.append(_replace(out / "data" / "series.js", series_js(site)))
    for lang, page in texts.PAGES.items():
        written.append(_replace(out / page, render(site, lang).encode()))
    return written


def _replace(path: Path, data: bytes) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the web server out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- numbers, dates ---------------------------------------------------------------------------------------

def num(v: float | None, lang: str, digits: int = 1) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}".replace(".", texts.DECIMAL[lang])


def day_label(d: dt.date, lang: str) -> str:
    return f"{texts.DAYS[lang][d.weekday()]} {d.day} {texts.MONTHS[lang][d.month - 1]} {d.year}"


def time_label(t: float, site: Site, lang: str) -> str:
    x = dt.datetime.fromtimestamp(t, site.tz)
    return f"{x.day} {texts.MONTHS[lang][x.month - 1]} {x.year} {x:%H:%M}"


def _pct(share: float, lang: str) -> str:
    return f"{round(share * 100)} %"


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


# -- the downloads ----------------------------------------------------------------------------------------

DAILY_COLUMNS = ("location", "name", "date", "pm25", "pm25_coverage", "pm25_rh_high", "pm10", "pm10_coverage",
                 "pm10_rh_high", "laeq_24h", "laeq_coverage", "lday", "lday_coverage", "levening",
                 "levening_coverage", "lnight", "lnight_coverage", "night_hours", "lden")
HOURLY_COLUMNS = ("location", "name", "hour", "pm25", "pm25_coverage", "pm10", "pm10_coverage", "laeq",
                  "laeq_coverage")


def daily_rows(site: Site) -> list[dict[str, Any]]:
    """One row per location and day: a value is None (empty) when its day has too little data;
    coverage is the share of the span measured (0..1), rh_high the share of the measured time
    flagged humid."""
    out = []
    for loc in site.locations:
        for d in loc.days:
            n = d.noise
            out.append({
                "location": loc.id, "name": loc.name, "date": d.date.isoformat(),
                "pm25": _round(d.pm25.value), "pm25_coverage": round(d.pm25.coverage, 3),
                "pm25_rh_high": round(d.pm25.flags.get("rh_high", 0.0), 3),
                "pm10": _round(d.pm10.value), "pm10_coverage": round(d.pm10.coverage, 3),
                "pm10_rh_high": round(d.pm10.flags.get("rh_high", 0.0), 3),
                "laeq_24h": _round(n.laeq.value), "laeq_coverage": round(n.laeq.coverage, 3),
                "lday": _round(n.periods["day"].value), "lday_coverage": round(n.periods["day"].coverage, 3),
                "levening": _round(n.periods["evening"].value),
                "levening_coverage": round(n.periods["evening"].coverage, 3),
                "lnight": _round(n.lnight), "lnight_coverage": round(n.periods["night"].coverage, 3),
                "night_hours": n.hours["night"], "lden": _round(n.lden),
            })
    return out


def hourly_rows(site: Site) -> list[dict[str, Any]]:
    """One row per location and hour of the last PLOT_DAYS days with any measurement; the hour's
    start in local time with its offset."""
    out = []
    for loc in site.locations:
        for i, t in enumerate(loc.hours):
            ms = {q: loc.hourly[q][i] for q in ("pm25", "pm10", "LAeq")}
            if all(m.coverage == 0 for m in ms.values()):
                continue
            out.append({"location": loc.id, "name": loc.name,
                        "hour": dt.datetime.fromtimestamp(t, site.tz).isoformat(),
                        "pm25": _round(ms["pm25"].value), "pm25_coverage": round(ms["pm25"].coverage, 3),
                        "pm10": _round(ms["pm10"].value), "pm10_coverage": round(ms["pm10"].coverage, 3),
                        "laeq": _round(ms["LAeq"].value), "laeq_coverage": round(ms["LAeq"].coverage, 3)})
    return out


def _csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue().encode()


def _json(site: Site, kind: str, rows: list[dict[str, Any]]) -> bytes:
    doc = {
        "generated": dt.datetime.fromtimestamp(site.generated, dt.timezone.utc).isoformat().replace("+00:00", "Z"),
        "timezone": site.tz.key,
        "rules": {"min_coverage": MIN_COVERAGE, "day": "calendar day, local time",
                  "periods_local_hours": {p: [list(h) for h in hours] for p, hours in PERIODS.items()},
                  "lden": "10*log10((12*10^(Lday/10) + 4*10^((Levening+5)/10) + 8*10^((Lnight+10)/10))/24)",
                  "units": {"pm25": "ug/m3", "pm10": "ug/m3", "noise": "dB(A)"}},
        "who": WHO,
        "locations": [{"id": loc.id, **_meta_json(loc.meta)} for loc in site.locations],
        kind: rows,
    }
    return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode()


def _meta_json(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in meta.items()}


def series_js(site: Site) -> bytes:
    doc = {"tz": site.tz.key, "locations": {
        loc.id: {"t": loc.hours, **{q.lower(): [_round(m.value) for m in ms] for q, ms in loc.hourly.items()}}
        for loc in site.locations if loc.hours}}
    return ("window.MEETKIT_PUBLIC = " + json.dumps(doc, separators=(",", ":")) + ";\n").encode()


# -- the pages --------------------------------------------------------------------------------------------

def render(site: Site, lang: str) -> str:
    t = texts.LANGUAGES[lang]
    e = html.escape
    tz = site.tz.key
    other = "nl" if lang == "en" else "en"
    head = (f'<!doctype html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{e(t["title"])}</title>\n'
            '<link rel="stylesheet" href="assets/uPlot.min.css">\n<link rel="stylesheet" href="assets/public.css">\n'
            '</head>\n')
    nav = "".join(f'<li><a href="#loc-{e(loc.id)}">{e(loc.name)}</a></li>' for loc in site.locations)
    downloads = (f'<p class="downloads">{e(t["downloads"])}: {e(t["dl_daily"])} '
                 '<a href="data/daily.csv" download>CSV</a> · <a href="data/daily.json" download>JSON</a>; '
                 f'{e(t["dl_hourly"])} <a href="data/hourly.csv" download>CSV</a> · '
                 '<a href="data/hourly.json" download>JSON</a></p>')
    body = [
        f'<body data-lang="{lang}" data-tz="{e(tz)}">',
        '<header>',
        f'<p class="lang"><a href="{texts.PAGES[other]}" hreflang="{other}">{e(t["other"])}</a></p>',
        f'<h1>{e(t["title"])}</h1>',
        f'<p class="intro">{e(t["intro"].format(generated=time_label(site.generated, site, lang), tz=tz))}</p>',
        downloads,
        f'<nav><h2>{e(t["locations"])}</h2><ul>{nav}</ul></nav>',
        '</header>', '<main>',
    ]
    body += [_location(site, loc, lang) for loc in site.locations]
    body += [f'<section id="about"><h2>{e(t["about_head"])}</h2>{t["about"].format(tz=e(tz))}</section>',
             '</main>', f'<footer><p>{e(t["footer"])}</p><p>{e(t["generated"].format(t=time_label(site.generated, site, lang)))}'
             ' · <a href="assets/uPlot.LICENSE.txt">uPlot</a></p></footer>',
             '<script src="assets/uPlot.iife.min.js"></script>', '<script src="data/series.js"></script>',
             '<script src="assets/public.js"></script>', '</body>', '</html>', '']
    return head + "\n".join(body)


def _where(loc: Location, site: Site, lang: str) -> str:
    t, e, m = texts.LANGUAGES[lang], html.escape, loc.meta
    parts = []
    if "lat" in m:
        lat, lon = f"{m['lat']:.5f}", f"{m['lon']:.5f}"
        parts.append(f'<a class="map" rel="noopener" href="https://www.openstreetmap.org/?mlat={lat}&amp;mlon={lon}'
                     f'#map=18/{lat}/{lon}">{lat}, {lon}</a>')
    else:
        parts.append(e(t["no_position"]))
    if "height_m" in m:
        parts.append(e(t["height"].format(h=num(m["height_m"], lang))))
    if "installed" in m:
        parts.append(e(t["installed"].format(d=day_label(m["installed"], lang))))
    return " · ".join(parts)


def _location(site: Site, loc: Location, lang: str) -> str:
    t, e = texts.LANGUAGES[lang], html.escape
    out = [f'<section class="location" id="loc-{e(loc.id)}" data-location="{e(loc.id)}">',
           f'<h2>{e(loc.name)}</h2>', f'<p class="where">{_where(loc, site, lang)}</p>']
    if not loc.days:
        out += [f'<p class="nodata">{e(t["no_data"])}</p>', '</section>']
        return "\n".join(out)
    out.append(_now(site, loc, lang))
    out.append(_who(loc, lang))
    out.append(f'<h3>{e(t["plots"])}</h3><div class="plots">'
               f'<div class="plot" data-plot="pm" data-location="{e(loc.id)}" data-label="{e(t["plot_pm"])}"></div>'
               f'<div class="plot" data-plot="noise" data-location="{e(loc.id)}" data-label="{e(t["plot_noise"])}">'
               '</div></div>')
    out.append(_daily(loc, lang))
    out.append('</section>')
    return "\n".join(out)


def _now(site: Site, loc: Location, lang: str) -> str:
    t, e = texts.LANGUAGES[lang], html.escape
    cards = []
    for q, label, unit in (("pm25", t["pm25"], "µg/m³"), ("pm10", t["pm10"], "µg/m³"), ("LAeq", t["noise"], "dB(A)")):
        m = loc.now.get(q)
        if m is not None and m.value is not None:
            value = f'<span class="v" data-q="{q}">{num(m.value, lang)}</span> <span class="u">{unit}</span>'
        else:
            last = t["now_last"].format(t=time_label(loc.last, site, lang)) if loc.last else ""
            value = f'<span class="none" data-q="{q}">{e(t["now_none"])}</span> <span class="u">{e(last)}</span>'
        cards.append(f'<div class="card"><div class="q">{e(label)}</div><div>{value}</div></div>')
    return (f'<h3>{e(t["now"])}</h3><p class="small">{e(t["now_note"])}</p>'
            f'<div class="now">{"".join(cards)}</div>')


def _who(loc: Location, lang: str) -> str:
    """Each indicator on the newest day it counts, and over every day that counts, beside WHO's."""
    t, e = texts.LANGUAGES[lang], html.escape
    rows = []

    def row(key: str, label: str, v: float | None, guide: str, limit: float, note: str) -> None:
        cls = "" if v is None else (" above" if v > limit else " below")
        state = "" if v is None else t["above"] if v > limit else t["below"]
        rows.append(f'<tr class="who-row{cls}" data-indicator="{key}"><td>{e(label)}</td>'
                    f'<td class="v" data-v="{"" if v is None else round(v, 2)}">{num(v, lang)}</td>'
                    f'<td data-label="{e(t["who"])}">{e(guide)}</td><td>{e(state)}{"; " if state and note else ""}{e(note)}</td></tr>')

    for q in ("pm25", "pm10"):
        days = valid(loc.days, q)
        day_limit, year_limit = WHO[q]["day"], WHO[q]["year"]
        if not days:
            row(f"{q}_day", t[q], None, t["who_24h"].format(v=num(day_limit, lang, 0)), day_limit, t["no_valid_day"])
            continue
        d, v = days[-1]
        above = sum(1 for _, x in days if x > day_limit)
        row(f"{q}_day", t[f"{q}_day"].format(d=day_label(d, lang)), v, t["who_24h"].format(v=num(day_limit, lang, 0)),
            day_limit, t["days_above"].format(k=above, n=len(days), v=num(day_limit, lang, 0)))
        row(f"{q}_long", t[f"{q}_long"].format(n=len(days)), period_mean((x for _, x in days), energy=False),
            t["who_year"].format(v=num(year_limit, lang, 0)), year_limit, t["indicative"] if len(days) < 274 else "")
    for key in ("lden", "lnight"):
        days = valid(loc.days, key)
        limit = WHO[key]
        guide = t["who_noise"].format(v=num(limit, lang, 0))
        if not days:
            row(f"{key}_day", t[key], None, guide, limit, t["no_valid_day"])
            continue
        d, v = days[-1]
        row(f"{key}_day", t[f"{key}_day"].format(d=day_label(d, lang)), v, guide, limit, "")
        row(f"{key}_long", t[f"{key}_long"].format(n=len(days)), period_mean((x for _, x in days), energy=True),
            guide, limit, t["indicative"] if len(days) < 274 else "")
    return (f'<h3>{e(t["who_head"])}</h3><div class="scroll"><table class="who"><thead><tr>'
            f'<th>{e(t["indicator"])}</th><th>{e(t["here"])}</th><th>{e(t["who"])}</th><th>{e(t["note"])}</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _cell(q: str, v: float | None, lang: str, limit: float | None = None, mean: Mean | None = None) -> str:
    t = texts.LANGUAGES[lang]
    if v is None:
        measured = mean is not None and mean.coverage > 0
        text = t["too_little"] if measured or q.startswith("l") else "–"
        return f'<td class="v none" data-q="{q}" data-v="">{html.escape(text)}</td>'
    cls = " above" if limit is not None and v > limit else ""
    return f'<td class="v{cls}" data-q="{q}" data-v="{round(v, 2)}">{num(v, lang)}</td>'


def _notes(d: Day, lang: str) -> str:
    t = texts.LANGUAGES[lang]
    notes: dict[str, float] = {}
    for m, flags in ((d.pm25, PM_NOTES), (d.pm10, PM_NOTES), (d.noise.laeq, NOISE_NOTES)):
        for f in flags:
            share = m.flags.get(f, 0.0)
            if share >= NOTE_MIN:
                notes[f] = max(notes.get(f, 0.0), share)
    return "; ".join(t[f"flag_{f}"].format(p=_pct(s, lang)) for f, s in notes.items())


def _daily(loc: Location, lang: str) -> str:
    t, e = texts.LANGUAGES[lang], html.escape
    head = "".join(f"<th>{e(t[k])}</th>" for k in ("date", "pm25", "pm10", "laeq24", "lday", "levening", "lnight",
                                                    "lden", "notes"))
    rows = []
    for d in reversed(loc.days[-DAILY_ROWS:]):
        n = d.noise
        rows.append(f'<tr data-date="{d.date.isoformat()}"><td class="date">{e(day_label(d.date, lang))}</td>'
                    + _cell("pm25", d.pm25.value, lang, WHO["pm25"]["day"], d.pm25)
                    + _cell("pm10", d.pm10.value, lang, WHO["pm10"]["day"], d.pm10)
                    + _cell("laeq", n.laeq.value, lang, None, n.laeq)
                    + _cell("lday", n.periods["day"].value, lang)
                    + _cell("levening", n.periods["evening"].value, lang)
                    + _cell("lnight", n.lnight, lang, WHO["lnight"])
                    + _cell("lden", n.lden, lang, WHO["lden"])
                    + f'<td class="notes">{e(_notes(d, lang))}</td></tr>')
    return (f'<h3>{e(t["daily_head"])}</h3><p class="small">{e(t["daily_note"].format(n=DAILY_ROWS))}</p>'
            f'<div class="scroll"><table class="daily"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')

