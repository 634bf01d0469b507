"""What the public page shows of each location, read from the store and the fleet register.

A location is a node of the fleet register: its name and position as the register gives them (the
same the SensorThings forwarder publishes), nothing else of it (no board, serials, firmware,
calibration notes). A node that is not in the register is left out (counted: `Site.unregistered`);
one in the register without data is shown as such.

Each location's PM2.5, PM10 and LAeq readings of the last `days` local days are read in one pass
(rows come by start), a day's values computed when the pass has left it, so memory holds a day at a
time (and the last `PLOT_DAYS` for the hourly plots). Records a reader may not pass on as they are
(plausible.py: an older store's implausible start, length or counters) are left out and counted.
"""

from __future__ import annotations

import datetime as dt
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


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in PUBLIC_KEYS if k in meta}


def gather(store: Store, register: dict[str, dict[str, Any]], tz: ZoneInfo, now: float, days: int) -> Site:
    """Every location of `register` with its values of the `days` local days up to yesterday: a
    day is published once it is over (today is in the last hour's values and the plots)."""
    today = dt.datetime.fromtimestamp(now, tz).date() - dt.timedelta(days=1)  # the last day that is over
    first = today - dt.timedelta(days=days - 1)
    known = set(store.node_ids())
    locations = []
    with store.snapshot():
        for node in sorted(register):
            loc = Location(node, public_meta(register[node]))
            if node in known:
                _fill(store, loc, tz, now, first, today)
            locations.append(loc)
    return Site(now, tz, first, today, locations, sorted(known - set(register)))


class _Days:
    """A location's intervals bucketed by local date, each date computed once the pass is past it."""

    def __init__(self, loc: Location, tz: ZoneInfo, first: dt.date, today: dt.date) -> None:
        self.loc, self.tz = loc, tz
        self.open: dict[dt.date, dict[str, list[Interval]]] = {}
        self.done: dict[dt.date, Day] = {}
        self.first, self.today = first, today
        self._span: tuple[float, float, dt.date] = (0.0, 0.0, first)

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
            if self.first <= d <= self.today:
                self.open.setdefault(d, {}).setdefault(q, []).append(it)
        for d in [d for d in self.open if d < d0]:
            self._close(d)

    def _close(self, d: dt.date) -> None:
        by = self.open.pop(d)
        self.done[d] = Day(d, ind.pm_day(by.get("pm25", []), d, self.tz), ind.pm_day(by.get("pm10", []), d, self.tz),
                           ind.noise_day(by.get("LAeq", []), d, self.tz))

    def finish(self) -> list[Day]:
        for d in list(self.open):
            self._close(d)
        if not self.done:
            return []
        start = min(self.done)  # from the first day with data: the days before it are no news
        out = []
        d = start
        while d <= self.today:
            out.append(self.done.get(d) or Day(d, Mean(None, 0.0), Mean(None, 0.0), ind.noise_day([], d, self.tz)))
            d += dt.timedelta(days=1)
        return out


def _fill(store: Store, loc: Location, tz: ZoneInfo, now: float, first: dt.date, today: dt.date) -> None:
    since = ind.day_span(first, tz)[0] - DUR_MAX  # a record from the evening before may reach past midnight
    plot_from = (int(now) // 3600 + 1 - PLOT_DAYS * 24) * 3600
    days = _Days(loc, tz, first, today)
    recent: dict[str, list[Interval]] = {q: [] for q in QUANTITIES}
    bad: tuple[int, int] | None = None
    for start, dur, boot, seq, q, avg, flags in store.public_intervals(loc.id, since, now, frozenset(QUANTITIES)):
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
    loc.days = days.finish()
    loc.hours = list(range(plot_from, plot_from + PLOT_DAYS * 24 * 3600, 3600))
    for q, items in recent.items():
        energy = q == "LAeq"
        loc.hourly[q] = ind.binned(items, plot_from, 3600, len(loc.hours), energy)
        loc.now[q] = ind.mean(items, [(now - NOW_S, now)], energy)


def valid(days: list[Day], pick: str) -> list[tuple[dt.date, float]]:
    """(date, value) of the days whose `pick` counts: pm25, pm10, laeq, lden, lnight."""
    out = []
    for d in days:
        v = {"pm25": d.pm25.value, "pm10": d.pm10.value, "laeq": d.noise.laeq.value, "lden": d.noise.lden,
             "lnight": d.noise.lnight}[pick]
        if v is not None:
            out.append((d.date, v))
    return out
