"""The public page's indicators (gateway/public/indicators.py) against values computed by hand:
Lden and Lnight per the EU Environmental Noise Directive in Europe/Amsterdam time, on an ordinary
day, on both days the clock changes (last Sunday of March: 23 h; of October: 25 h), on days with
gaps; daily PM means and the coverage rule (75 %)."""

from __future__ import annotations

import datetime as dt
from typing import Callable
from zoneinfo import ZoneInfo

import pytest

from meetkit_gateway.public import indicators as ind
from meetkit_gateway.public.indicators import Interval

AMS = ZoneInfo("Europe/Amsterdam")


def minutes(day: dt.date, level: Callable[[dt.datetime], float | None], step: int = 60) -> list[Interval]:
    """One record of `step` seconds for every step of the local day, as a node sends them (by UTC
    seconds, so the hour the clock repeats in October is there twice), its value `level(local
    time of its start)`; None: no record (a gap)."""
    t, end = ind.day_span(day, AMS)
    out = []
    while t < end:
        v = level(dt.datetime.fromtimestamp(t, AMS))
        if v is not None:
            out.append(Interval(t, step, v))
        t += step
    return out


def by_period(day: float | None, evening: float | None, night: float | None,
              late_night: float | None = None) -> Callable[[dt.datetime], float | None]:
    """A level per period; `late_night` for 23-24 when it differs from 00-07."""
    def level(x: dt.datetime) -> float | None:
        if 7 <= x.hour < 19:
            return day
        if 19 <= x.hour < 23:
            return evening
        if x.hour == 23 and late_night is not None:
            return late_night
        return night
    return level


def test_an_ordinary_day_gives_the_directive_s_lden():
    d = ind.noise_day(minutes(dt.date(2026, 11, 24), by_period(60, 50, 45)), dt.date(2026, 11, 24), AMS)
    assert d.hours == {"day": 12, "evening": 4, "night": 8}
    assert [round(d.periods[p].value, 6) for p in ("day", "evening", "night")] == [60, 50, 45]
    # 10 log10((12·10^6 + 4·10^5.5 + 8·10^5.5) / 24) = 10 log10(658113.9) = 58.183
    assert d.lden == pytest.approx(58.183, abs=5e-4)
    assert d.lnight == pytest.approx(45, abs=1e-9)
    # LAeq,24h, 12 h at 60, 4 h at 50, 8 h at 45: 10 log10((12·10^6 + 4·10^5 + 8·10^4.5) / 24) = 10 log10(527208) = 57.220
    assert d.laeq.value == pytest.approx(57.220, abs=5e-4)
    assert d.laeq.coverage == 1.0


def test_levels_within_a_period_are_energy_means_weighted_by_duration():
    # the night: 00-05 and 23-24 at 40 dB (6 h), 05-07 at 50 dB (2 h)
    def level(x: dt.datetime) -> float:
        return 50 if 5 <= x.hour < 7 else by_period(60, 50, 40)(x)  # type: ignore[return-value]

    d = ind.noise_day(minutes(dt.date(2026, 11, 24), level), dt.date(2026, 11, 24), AMS)
    # 10 log10((6·10^4 + 2·10^5) / 8) = 10 log10(32500) = 45.119
    assert d.lnight == pytest.approx(45.119, abs=5e-4)


def test_the_march_change_day_has_a_night_of_seven_hours():
    day = dt.date(2026, 3, 29)  # last Sunday of March 2026: 02:00 becomes 03:00
    items = minutes(day, by_period(60, 50, 40, late_night=50))
    lo, hi = ind.day_span(day, AMS)
    assert (hi - lo) / 3600 == 23 and len(items) == 23 * 60
    d = ind.noise_day(items, day, AMS)
    assert d.hours == {"day": 12, "evening": 4, "night": 7}
    assert d.periods["night"].coverage == 1.0
    # night: 00-07 is 6 h of time at 40 dB, 23-24 1 h at 50 dB:
    # Ln = 10 log10((6·10^4 + 10^5) / 7) = 10 log10(22857.1) = 43.590
    assert d.lnight == pytest.approx(43.590, abs=5e-4)
    # Lden = 10 log10((12·10^6 + 4·10^5.5 + 8·10^((43.590+10)/10)) / 24) = 57.986 (weights stay 12, 4, 8)
    assert d.lden == pytest.approx(57.986, abs=5e-4)


def test_the_october_change_day_has_a_night_of_nine_hours():
    day = dt.date(2026, 10, 25)  # last Sunday of October 2026: 03:00 becomes 02:00 again
    items = minutes(day, by_period(60, 50, 40, late_night=50))
    lo, hi = ind.day_span(day, AMS)
    assert (hi - lo) / 3600 == 25 and len(items) == 25 * 60
    d = ind.noise_day(items, day, AMS)
    assert d.hours == {"day": 12, "evening": 4, "night": 9}
    assert d.periods["night"].coverage == 1.0
    # night: 00-07 is 8 h at 40 dB (02:00-03:00 twice), 23-24 1 h at 50 dB:
    # Ln = 10 log10((8·10^4 + 10^5) / 9) = 10 log10(20000) = 43.010
    assert d.lnight == pytest.approx(43.010, abs=5e-4)
    # Lden = 10 log10((12·10^6 + 4·10^5.5 + 8·10^((43.010+10)/10)) / 24) = 57.920
    assert d.lden == pytest.approx(57.920, abs=5e-4)


def test_the_days_around_the_changes_are_ordinary():
    for day in (dt.date(2026, 3, 28), dt.date(2026, 3, 30), dt.date(2026, 10, 24), dt.date(2026, 10, 26)):
        d = ind.noise_day(minutes(day, by_period(60, 50, 45)), day, AMS)
        assert d.hours == {"day": 12, "evening": 4, "night": 8}, day
        assert d.lden == pytest.approx(58.183, abs=5e-4), day


def test_a_gap_in_the_day_period_leaves_its_energy_mean_to_the_hours_measured():
    # day: 07-15 at 60 dB (8 h), 15-17 no records (the node was off), 17-19 at 65 dB (2 h): 10 of 12 h
    def level(x: dt.datetime) -> float | None:
        if 15 <= x.hour < 17:
            return None
        if 17 <= x.hour < 19:
            return 65
        return by_period(60, 50, 50)(x)

    d = ind.noise_day(minutes(dt.date(2026, 11, 24), level), dt.date(2026, 11, 24), AMS)
    assert d.periods["day"].coverage == pytest.approx(10 / 12)
    # Ld = 10 log10((8·10^6 + 2·10^6.5) / 10) = 61.561
    assert d.periods["day"].value == pytest.approx(61.561, abs=5e-4)
    # Lden = 10 log10((12·10^6.1561 + 4·10^5.5 + 8·10^6) / 24) = 10 log10(1.10295e6) = 60.423
    assert d.lden == pytest.approx(60.423, abs=5e-4)
    assert d.laeq.coverage == pytest.approx(22 / 24)


def test_a_period_under_three_quarters_covered_gives_no_lden():
    # the evening has 2 of its 4 hours (19-21): Lden cannot be given; Lnight can
    def level(x: dt.datetime) -> float | None:
        return None if 21 <= x.hour < 23 else by_period(60, 50, 45)(x)

    d = ind.noise_day(minutes(dt.date(2026, 11, 24), level), dt.date(2026, 11, 24), AMS)
    assert d.periods["evening"].coverage == pytest.approx(0.5)
    assert d.periods["evening"].value is None and d.periods["evening"].raw == pytest.approx(50)
    assert d.lden is None
    assert d.lnight == pytest.approx(45)
    # and a night with 5 h 59 min of its 8 h (just under 75 %): no Lnight, no Lden
    def short_night(x: dt.datetime) -> float | None:
        return None if (x.hour < 2 or (x.hour == 2 and x.minute == 0)) else by_period(60, 50, 45)(x)

    d = ind.noise_day(minutes(dt.date(2026, 11, 24), short_night), dt.date(2026, 11, 24), AMS)
    assert d.periods["night"].coverage == pytest.approx((6 * 60 - 1) / (8 * 60))
    assert d.lnight is None and d.lden is None and d.periods["day"].value == pytest.approx(60)


def test_a_record_across_a_period_boundary_is_split_there():
    # 10 minutes from 18:55 at 70 dB: 5 in the day, 5 in the evening
    t = dt.datetime(2026, 11, 24, 18, 55, tzinfo=AMS).timestamp()
    spans = ind.period_spans(dt.date(2026, 11, 24), AMS)
    day = ind.mean([Interval(t, 600, 70.0)], spans["day"], energy=True, min_coverage=0)
    evening = ind.mean([Interval(t, 600, 70.0)], spans["evening"], energy=True, min_coverage=0)
    assert day.coverage * 12 * 3600 == pytest.approx(300) and evening.coverage * 4 * 3600 == pytest.approx(300)
    assert day.value == pytest.approx(70) and evening.value == pytest.approx(70)


def test_a_daily_pm_mean_is_time_weighted_and_needs_18_of_24_hours():
    day = dt.date(2026, 11, 24)
    # 18 h at 10 µg/m³ in 60 s records, then 6 h without: exactly 75 %, it counts
    items = minutes(day, lambda x: 10.0 if x.hour < 18 else None)
    # and one 10-minute record at 40 µg/m³ in the gap: 18 h 10 min measured
    items.append(Interval(dt.datetime(2026, 11, 24, 20, 0, tzinfo=AMS).timestamp(), 600, 40.0, ("rh_high",)))
    m = ind.pm_day(items, day, AMS)
    # (18·3600·10 + 600·40) / (18·3600 + 600) = 672000 / 65400 = 10.275
    assert m.value == pytest.approx(10.275, abs=5e-4)
    assert m.coverage == pytest.approx(65400 / 86400)
    assert m.flags == {"rh_high": pytest.approx(600 / 65400)}
    short = ind.pm_day(minutes(day, lambda x: 10.0 if (x.hour, x.minute) < (17, 59) else None), day, AMS)
    assert short.value is None and short.raw == pytest.approx(10) and short.coverage < 0.75


def test_null_values_are_no_coverage():
    day = dt.date(2026, 11, 24)
    items = [i._replace(value=None) if 7 <= dt.datetime.fromtimestamp(i.start, AMS).hour < 19 else i
             for i in minutes(day, lambda x: 12.0)]
    m = ind.pm_day(items, day, AMS)
    assert m.coverage == pytest.approx(0.5) and m.value is None


def test_long_term_means():
    assert ind.period_mean([10, 20], energy=False) == 15
    # 10 log10((10^5 + 10^6) / 2) = 57.404
    assert ind.period_mean([50, 60], energy=True) == pytest.approx(57.404, abs=5e-4)
    assert ind.period_mean([], energy=True) is None
