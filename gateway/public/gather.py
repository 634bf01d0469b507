"""What the public page shows of each location, read from the store and the fleet register.

A location is a node of the fleet register: its name and position as the register gives them (the
same the SensorThings forwarder publishes), nothing else of it (no board, serials, firmware,
calibration notes). A node that is not in the register is left out (counted: `Site.unregistered`);
one in the register without data is shown as such.

A day's values are computed from its PM2.5, PM10 and LAeq readings, read in a pass by start (a
day's values computed when the pass has left it: memory holds a day at a time, and the last
`PLOT_DAYS` for the hourly plots). Days that are over seldom change, so each is kept with a
fingerprint of the store's records that can touch it (per hour: how many, the newest reception,
the highest id; `Store.public_hours`, no value read) and the next run computes again only the days
whose fingerprint changed (records that came late from a node's spool, replayed, or pruned), and
reads the last `PLOT_DAYS` for the plots. The cache is the last run's file `.publish-cache.json` in
the site's folder; without it every day is computed. Records a reader may not pass on as they are
(plausible.py: an older store's implausible start, length or counters) are left out and counted.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from .. import plausible
from ..payload import DUR_MAX
from ..store import Store
from . import indicators as ind
from .indicators import Interval, Mean, NoiseDay

QUANTITIES = ("pm25", "pm10", "LAeq")
PLOT_DAYS = 7
NOW_S = 3600  # "the last hour"
#: WHO 2021 air quality guideline levels (µg/m³) and WHO 2018 road traffic noise guidelines (dB)
WHO = {"pm25": {"day": 15.0, "year": 5.0}, "pm10": {"day": 45.0, "year": 15.0}, "lden": 53.0, "lnight": 45.0}
#: what of the register a public page may show
PUBLIC_KEYS = ("name", "lat", "lon", "height_m", "installed")


@dataclass
class Day:
    date: dt.date
    pm25: Mean
    pm10: Mean
    noise: NoiseDay


@dataclass
class Location:
    id: str
    meta: dict[str, Any]  # PUBLIC_KEYS only
    days: list[Day] = field(default_factory=list)  # oldest first
    now: dict[str, Mean] = field(default_factory=dict)  # quantity -> the last hour's mean
    last: float | None = None  # end of the newest interval with a value
    hourly: dict[str, list[Mean]] = field(default_factory=dict)  # quantity -> PLOT_DAYS * 24 hours
    hours: list[int] = field(default_factory=list)  # the hourly bins' starts
    implausible: int = 0  # records left out

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.id))


@dataclass
class Site:
    generated: float
    tz: ZoneInfo
    first: dt.date
    today: dt.date  # the last day shown: the day before the page's
    locations: list[Location]
    unregistered: list[str]  # nodes with data that the register does not name: not published
    cache: dict[str, Any] = field(default_factory=dict)  # each day's fingerprint and values, for the next run
    counts: dict[str, int] = field(default_factory=dict)  # days computed, days reused from the cache


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in PUBLIC_KEYS if k in meta}


def gather(store: Store, register: dict[str, dict[str, Any]], tz: ZoneInfo, now: float, days: int,
           cache: dict[str, Any] | None = None) -> Site:
    """Every location of `register` with its values of the `days` local days up to yesterday: a
    day is published once it is over (today is in the last hour's values and the plots). `cache`:
    the last run's `Site.cache`; its days whose records did not change are taken as they are."""
    today = dt.datetime.fromtimestamp(now, tz).date() - dt.timedelta(days=1)  # the last day that is over
    first = today - dt.timedelta(days=days - 1)
    locations = []
    counts = {"computed": 0, "reused": 0}
    with store.snapshot():
        known = set(store.node_ids())
        key = cache_key(store, tz)
        old = cache.get("locations", {}) if cache and cache.get("key") == key else {}
        new: dict[str, Any] = {}
        for node in sorted(register):
            loc = Location(node, public_meta(register[node]))
            if node in known:
                _fill(store, loc, tz, now, first, today, old.get(node, {}), new, counts)
            locations.append(loc)
    return Site(now, tz, first, today, locations, sorted(known - set(register)), {"key": key, "locations": new},
                counts)


CACHE_VERSION = 1


def cache_key(store: Store, tz: ZoneInfo) -> list[Any]:
    """What a cached day depends on besides its records: this code's rules, the zone, the store."""
    return [CACHE_VERSION, ind.MIN_COVERAGE, tz.key, store.db_id]


class _Days:
    """A location's intervals of the `wanted` dates bucketed by local date, each date computed
    once the pass (rows come by start) is past it."""

    def __init__(self, tz: ZoneInfo, wanted: set[dt.date]) -> None:
        self.tz, self.wanted = tz, wanted
        self.open: dict[dt.date, dict[str, list[Interval]]] = {}
        self.done: dict[dt.date, Day] = {}
        self._span: tuple[float, float, dt.date] = (0.0, 0.0, dt.date.min)

    def date(self, t: float) -> dt.date:
        lo, hi, d = self._span
        if lo <= t < hi:  # nearly always: the rows come by start
            return d
        d = dt.datetime.fromtimestamp(t, self.tz).date()
        self._span = (*ind.day_span(d, self.tz), d)
        return d

    def add(self, q: str, it: Interval) -> None:
        d0 = self.date(it.start)
        d1 = self.date(it.start + it.dur - 1e-3) if it.dur > 0 else d0
        for d in {d0, d1}:
            if d in self.wanted:
                self.open.setdefault(d, {}).setdefault(q, []).append(it)
        if self.open and min(self.open) < d0:
            for d in [d for d in self.open if d < d0]:
                self._close(d)

    def _close(self, d: dt.date) -> None:
        by = self.open.pop(d)
        self.done[d] = compute_day(d, by, self.tz)

    def finish(self) -> dict[dt.date, Day]:
        for d in list(self.open):
            self._close(d)
        return self.done


def compute_day(d: dt.date, by: dict[str, list[Interval]], tz: ZoneInfo) -> Day:
    return Day(d, ind.pm_day(by.get("pm25", []), d, tz), ind.pm_day(by.get("pm10", []), d, tz),
               ind.noise_day(by.get("LAeq", []), d, tz))


HOUR_LOOKBACK = 2  # hours before a day whose records may reach into it (DUR_MAX is 65 minutes)


def fingerprints(hours: list[tuple[int, int, float, int]], dates: list[dt.date], tz: ZoneInfo) -> dict[dt.date, str]:
    """A digest per date of the store's hourly rows that can touch it: equal digests, equal day
    (the rows count, date and number every record added, replayed or pruned). Dates no record
    touches are left out."""
    keys = [h[0] for h in hours]
    out = {}
    for d in dates:
        lo, hi = ind.day_span(d, tz)
        a, b = bisect.bisect_left(keys, lo // 3600 - HOUR_LOOKBACK), bisect.bisect_left(keys, hi / 3600)
        if a < b:
            out[d] = hashlib.sha256(repr(hours[a:b]).encode()).hexdigest()[:20]
    return out


def _spans(dates: list[dt.date], tz: ZoneInfo, extra: tuple[float, float]) -> list[tuple[float, float]]:
    """The ranges of interval starts to read, merged: each date's (from DUR_MAX before it) and `extra`."""
    spans = sorted([(ind.day_span(d, tz)[0] - DUR_MAX, ind.day_span(d, tz)[1]) for d in dates] + [extra])
    out: list[tuple[float, float]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _fill(store: Store, loc: Location, tz: ZoneInfo, now: float, first: dt.date, today: dt.date,
          cached: dict[str, Any], cache_out: dict[str, Any], counts: dict[str, int]) -> None:
    """`loc`'s days (from `cached` those whose fingerprint is unchanged), last hour and plots;
    `cache_out` gets each day's fingerprint and values."""
    since = ind.day_span(first, tz)[0] - DUR_MAX  # a record from the evening before may reach past midnight
    dates = [first + dt.timedelta(days=i) for i in range((today - first).days + 1)]
    prints = fingerprints(store.public_hours(loc.id, since, now), dates, tz)
    reused: dict[dt.date, Day] = {}
    for d, fp in prints.items():
        hit = cached.get(d.isoformat())
        if hit is not None and hit[0] == fp:
            try:
                reused[d] = day_from_doc(d, hit[1])
            except (KeyError, TypeError, ValueError, IndexError):
                pass  # a cache of another version: computed again
    dirty = [d for d in prints if d not in reused]
    plot_from = (int(now) // 3600 + 1 - PLOT_DAYS * 24) * 3600
    days = _Days(tz, set(dirty))
    recent: dict[str, list[Interval]] = {q: [] for q in QUANTITIES}
    bad: tuple[int, int] | None = None
    for lo, hi in _spans(dirty, tz, (plot_from - DUR_MAX, now)):
        for start, dur, boot, seq, q, avg, flags in store.public_intervals(loc.id, lo, min(hi, now),
                                                                           frozenset(QUANTITIES)):
            if not plausible.record(start, dur, boot, seq, now):
                if bad != (boot, seq):  # a record's readings come together: count the record once
                    loc.implausible += 1
                    bad = (boot, seq)
                continue
            value = plausible.finite(avg)
            it = Interval(start, dur, value, tuple(f for f in flags.split(",") if f))
            days.add(q, it)
            if start + dur > plot_from:
                recent[q].append(it)
                if value is not None and (loc.last is None or start + dur > loc.last):
                    loc.last = start + dur
    computed = days.finish()
    counts["computed"] += len(computed)
    counts["reused"] += len(reused)
    every = reused | computed
    cache_out[loc.id] = {d.isoformat(): [prints[d], day_doc(every[d])] for d in sorted(every)}
    if every:  # from the first day with data: the days before it are no news
        loc.days = [every.get(d) or compute_day(d, {}, tz) for d in dates if d >= min(every)]
    if loc.last is None:
        newest = store.newest_start(loc.id, upto=now)
        loc.last = None if newest is None else float(newest)
    loc.hours = list(range(plot_from, plot_from + PLOT_DAYS * 24 * 3600, 3600))
    for q, items in recent.items():
        energy = q == "LAeq"
        loc.hourly[q] = ind.binned(items, plot_from, 3600, len(loc.hours), energy)
        loc.now[q] = ind.mean(items, [(now - NOW_S, now)], energy)


def _mean_doc(m: Mean) -> list[Any]:
    return [m.value, m.coverage, m.flags, m.raw]


def _mean(doc: list[Any]) -> Mean:
    value, coverage, flags, raw = doc
    return Mean(value, float(coverage), {str(k): float(v) for k, v in flags.items()}, raw)


def day_doc(d: Day) -> dict[str, Any]:
    """A day's values as the cache keeps them (JSON: floats come back exact)."""
    n = d.noise
    return {"pm25": _mean_doc(d.pm25), "pm10": _mean_doc(d.pm10), "laeq": _mean_doc(n.laeq),
            "periods": {p: _mean_doc(m) for p, m in n.periods.items()}, "lden": n.lden, "lnight": n.lnight,
            "hours": n.hours}


def day_from_doc(d: dt.date, doc: dict[str, Any]) -> Day:
    return Day(d, _mean(doc["pm25"]), _mean(doc["pm10"]),
               NoiseDay(_mean(doc["laeq"]), {p: _mean(doc["periods"][p]) for p in ind.PERIODS}, doc["lden"],
                        doc["lnight"], {p: float(doc["hours"][p]) for p in ind.PERIODS}))


def valid(days: list[Day], pick: str) -> list[tuple[dt.date, float]]:
    """(date, value) of the days whose `pick` counts: pm25, pm10, laeq, lden, lnight."""
    out = []
    for d in days:
        v = {"pm25": d.pm25.value, "pm10": d.pm10.value, "laeq": d.noise.laeq.value, "lden": d.noise.lden,
             "lnight": d.noise.lnight}[pick]
        if v is not None:
            out.append((d.date, v))
    return out
