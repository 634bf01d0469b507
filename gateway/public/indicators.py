"""Daily and hourly values from stored intervals: PM means, LAeq, and the EU noise indicators.

Pure functions of `Interval`s (a reading's start, length, value and flags); no I/O.

The conventions, which the public page states too:

- A day is the calendar day in the operator's local time (Europe/Amsterdam by default), midnight
  to midnight: 24 hours, 23 on the last Sunday of March, 25 on the last Sunday of October.
- Its noise periods (EU Environmental Noise Directive 2002/49/EC, Annex I, its default hours):
  day 07-19 (12 h), evening 19-23 (4 h), night 00-07 and 23-24 of the same date. The clock
  changes at 02:00 or 03:00, inside the night, so on those two Sundays the day and the evening
  keep their 12 and 4 hours and the night has what the clock gives: 7 h in March, 9 h in October.
- Ld, Le, Ln are the energy means of the LAeq records over their period, each record weighted by
  the seconds of it inside the period (a record crossing a boundary is split there).
- Lden = 10 log10((12 * 10^(Ld/10) + 4 * 10^((Le+5)/10) + 8 * 10^((Ln+10)/10)) / 24): the
  Directive's formula with its fixed weights 12, 4 and 8 hours, also on the two change days.
- A daily PM value is the time-weighted arithmetic mean of the records' means; LAeq,24h the
  energy mean over the day.
- Coverage: a value counts only when the records with a value cover at least `MIN_COVERAGE`
  (75 %) of its span (the day; for Lden each of day, evening and night; for Lnight the night),
  the share the EU air-quality directive asks of a daily mean (18 of 24 hours). Otherwise the
  value is given as None with the coverage, and the page says "too little data".
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple
from zoneinfo import ZoneInfo

MIN_COVERAGE = 0.75
#: the Directive's periods, local clock hours [from, to) of the date
PERIODS = {"day": ((7, 19),), "evening": ((19, 23),), "night": ((0, 7), (23, 24))}
#: the Directive's penalties (dB) and weights (hours) in Lden
PENALTY = {"day": 0.0, "evening": 5.0, "night": 10.0}
WEIGHT = {"day": 12, "evening": 4, "night": 8}
#: the flags that say something to a reader of a mean, by quantity kind
PM_FLAGS = ("rh_high", "range", "partial", "warmup")
NOISE_FLAGS = ("overload", "floor", "partial", "range")


class Interval(NamedTuple):
    """One stored reading as the indicators need it: [start, start + dur) Unix seconds."""

    start: float
    dur: float
    value: float | None  # None: the node had no valid sample (its flags say why)
    flags: tuple[str, ...] = ()


@dataclass
class Mean:
    """A mean over a span: its value (None when the coverage is too low or nothing was there),
    the share of the span covered, and the share of the covered time each flag was on."""

    value: float | None
    coverage: float
    flags: dict[str, float] = field(default_factory=dict)
    raw: float | None = None  # the mean of what was there, whatever the coverage


def _hour(day: dt.date, hour: int, tz: ZoneInfo) -> float:
    """Unix seconds of `hour`:00 local on `day` (24: the next midnight)."""
    if hour == 24:
        day, hour = day + dt.timedelta(days=1), 0
    return dt.datetime.combine(day, dt.time(hour), tz).timestamp()


def day_span(day: dt.date, tz: ZoneInfo) -> tuple[float, float]:
    return _hour(day, 0, tz), _hour(day, 24, tz)


def period_spans(day: dt.date, tz: ZoneInfo) -> dict[str, list[tuple[float, float]]]:
    """Each noise period of `day` as Unix-second spans [from, to)."""
    return {p: [(_hour(day, a, tz), _hour(day, b, tz)) for a, b in hours] for p, hours in PERIODS.items()}


def _accumulate(items: Iterable[Interval], spans: list[tuple[float, float]], energy: bool
                ) -> tuple[float, float, dict[str, float]]:
    """(weighted sum, seconds with a value, seconds flagged per flag) of `items` inside `spans`."""
    total = covered = 0.0
    flagged: dict[str, float] = {}
    for it in items:
        if it.value is None:
            continue
        a, b = it.start, it.start + it.dur
        for lo, hi in spans:
            s = min(b, hi) - max(a, lo)
            if s <= 0:
                continue
            total += s * (10 ** (it.value / 10) if energy else it.value)
            covered += s
            for f in it.flags:
                flagged[f] = flagged.get(f, 0.0) + s
    return total, covered, flagged


def mean(items: Iterable[Interval], spans: list[tuple[float, float]], energy: bool,
         min_coverage: float = MIN_COVERAGE) -> Mean:
    """The time-weighted mean of `items` over `spans`: arithmetic, or energetic (dB) with
    `energy`; None below `min_coverage`. Overlapping records (a node's clock stepped back) count
    twice, so coverage is capped at 1."""
    length = sum(hi - lo for lo, hi in spans)
    total, covered, flagged = _accumulate(items, spans, energy)
    if covered <= 0:
        return Mean(None, 0.0)
    raw = 10 * math.log10(total / covered) if energy else total / covered
    coverage = min(1.0, covered / length)
    flags = {f: min(1.0, s / covered) for f, s in sorted(flagged.items())}
    return Mean(raw if coverage >= min_coverage else None, coverage, flags, raw)


def lden(ld: float, le: float, ln: float) -> float:
    """The Directive's day-evening-night level from the three period levels (dB)."""
    return 10 * math.log10((WEIGHT["day"] * 10 ** ((ld + PENALTY["day"]) / 10)
                            + WEIGHT["evening"] * 10 ** ((le + PENALTY["evening"]) / 10)
                            + WEIGHT["night"] * 10 ** ((ln + PENALTY["night"]) / 10)) / 24)


@dataclass
class NoiseDay:
    laeq: Mean  # LAeq over the whole day
    periods: dict[str, Mean]  # day, evening, night: Ld, Le, Ln
    lden: float | None  # None unless every period has its coverage
    lnight: float | None
    hours: dict[str, float]  # the length of each period on that date, hours (night: 7, 8 or 9)


def noise_day(items: list[Interval], day: dt.date, tz: ZoneInfo) -> NoiseDay:
    spans = period_spans(day, tz)
    periods = {p: mean(items, s, energy=True) for p, s in spans.items()}
    ld, le, ln = (periods[p].value for p in ("day", "evening", "night"))
    value = None if ld is None or le is None or ln is None else lden(ld, le, ln)
    hours = {p: sum(hi - lo for lo, hi in s) / 3600 for p, s in spans.items()}
    return NoiseDay(mean(items, [day_span(day, tz)], energy=True), periods, value, ln, hours)


def pm_day(items: list[Interval], day: dt.date, tz: ZoneInfo) -> Mean:
    return mean(items, [day_span(day, tz)], energy=False)


def days(first: float, last: float, tz: ZoneInfo) -> list[dt.date]:
    """The local dates from the one holding `first` to the one holding `last`."""
    a = dt.datetime.fromtimestamp(first, tz).date()
    b = dt.datetime.fromtimestamp(last, tz).date()
    return [a + dt.timedelta(days=i) for i in range((b - a).days + 1)]


def period_mean(values: Iterable[float], energy: bool) -> float | None:
    """The mean of daily values (dB ones energetically): a long-term value from the days that count."""
    vs = list(values)
    if not vs:
        return None
    if energy:
        return 10 * math.log10(sum(10 ** (v / 10) for v in vs) / len(vs))
    return sum(vs) / len(vs)


def binned(items: Iterable[Interval], t0: float, step: float, count: int, energy: bool,
           min_coverage: float = MIN_COVERAGE) -> list[Mean]:
    """`count` means of `step` seconds from `t0` (hourly plots), a record split across bins."""
    totals = [0.0] * count
    covered = [0.0] * count
    end = t0 + step * count
    for it in items:
        if it.value is None:
            continue
        a, b = max(it.start, t0), min(it.start + it.dur, end)
        x = 10 ** (it.value / 10) if energy else it.value
        while a < b:
            i = int((a - t0) // step)
            hi = min(b, t0 + (i + 1) * step)
            totals[i] += (hi - a) * x
            covered[i] += hi - a
            a = hi
    out = []
    for total, c in zip(totals, covered):
        if c <= 0:
            out.append(Mean(None, 0.0))
            continue
        raw = 10 * math.log10(total / c) if energy else total / c
        cov = min(1.0, c / step)
        out.append(Mean(raw if cov >= min_coverage else None, cov, raw=raw))
    return out
