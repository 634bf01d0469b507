"""The edges of every quantity's ranges (docs/payload.md, "Quantities"): the rated range's bounds are
taken exactly, without a flag; a step past them, while still physically possible, is kept and
flagged `range`; the physical bounds are taken exactly too, and a step past them, a boolean or a
summary of the wrong shape refuses the value (null, flagged `refused`, its reason kept) while its
record is stored. The gateway checks plainly valid values on a quick path and everything else in
full: both must agree with the contract."""

from __future__ import annotations

import time
from typing import Any

import pytest

from meetkit_gateway import payload
from meetkit_gateway.payload import QUANTITIES, SCALAR, SUMMARY, Value

from .conftest import encode

NOW = time.time()


def parse(key: str, value: Any) -> tuple[Value | None, tuple[str, ...], str | None]:
    """The value as stored, its flags, and the reason it was refused (None when it was not)."""
    q = QUANTITIES[key]
    doc = {"v": 1, "node": "edge-1", "boot": 1, "fw": "0.3.0", "board": "esp32-devkitc", "sensors": {},
           "units": {key: q.unit}, "recs": [{"seq": 0, "ts": 1795510800, "up": 0, "dur": 60, key: value}]}
    b = payload.parse_batch(encode(doc), "edge-1", NOW)
    (rec,) = b.records  # the record is always stored
    refused = [f for f in b.refused if not f.whole]
    assert len(refused) <= 1
    return rec.values[key], rec.flags.get(key, ()), f"{refused[0].code}: {refused[0].reason}" if refused else None


def kept(key: str, value: Any) -> Value | None:
    v, flags, why = parse(key, value)
    assert why is None and flags == (), (flags, why)
    return v


def flagged(key: str, value: Any) -> Value | None:
    v, flags, why = parse(key, value)
    assert why is None and flags == ("range",), (flags, why)
    return v


def refused(key: str, value: Any) -> str:
    v, flags, why = parse(key, value)
    assert v is None and flags == ("refused",) and why is not None
    return why


@pytest.mark.parametrize("key", list(QUANTITIES))
def test_the_bounds_are_taken_exactly_and_a_step_past_them_is_not(key):
    q = QUANTITIES[key]
    assert q.lowest <= q.low < q.high <= q.highest
    rated_only = (q.low, q.high)  # the rated bounds themselves: no flag
    outside = [x for x in (q.low - 0.01, q.high + 0.01) if q.lowest <= x <= q.highest]  # possible, not rated
    impossible = (q.lowest - 0.01, q.highest + 0.01)
    if q.form != SUMMARY:
        for x in rated_only:
            assert kept(key, x) == Value(float(x))
        assert isinstance(kept(key, int(q.high)).avg, float)
        for x in outside:
            assert flagged(key, x) == Value(float(x))
        for x in impossible:
            assert refused(key, x).startswith(f"out_of_range: recs[0].{key}: {x:g} is outside {q.possible()}")
        assert refused(key, True).startswith(f"wrong_type: recs[0].{key}: must be a number")
    if q.form != SCALAR:
        assert kept(key, [q.low, q.low, q.high, q.n_low]) == Value(float(q.low), float(q.low), float(q.high), q.n_low)
        assert kept(key, [q.high, q.high, q.high, 2**63 - 1]) == Value(float(q.high), float(q.high), float(q.high),
                                                                        2**63 - 1)
        for x in outside:
            assert flagged(key, [q.low, min(x, q.low), max(x, q.high), 1]) == Value(
                float(q.low), float(min(x, q.low)), float(max(x, q.high)), 1)
        assert refused(key, [q.low, q.lowest - 0.01, q.high, 1]).startswith(
            f"out_of_range: recs[0].{key}: min {q.lowest - 0.01:g} is outside {q.possible()}")
        assert refused(key, [q.highest + 0.01, q.low, q.high, 1]).startswith(
            f"out_of_range: recs[0].{key}: avg {q.highest + 0.01:g} is outside")
        assert refused(key, [q.low, q.low, q.high, q.n_low - 1]).startswith(
            f"out_of_range: recs[0].{key} n: {q.n_low - 1} is outside")
        assert refused(key, [q.low, q.high, q.low, 1]) == f"bad_value: recs[0].{key}: min {q.high:g} is above max {q.low:g}"
        assert refused(key, [q.low, q.low, True, 1]) == f"wrong_type: recs[0].{key} max: must be a number, got a boolean"
        assert refused(key, [q.low, q.low, q.high, 1.0]) == f"wrong_type: recs[0].{key} n: must be an integer, got a number"
        assert refused(key, [q.low, q.low, q.high]).startswith(
            f"bad_value: recs[0].{key}: must be [avg, min, max, n], got 3")
    else:
        assert refused(key, [q.low, q.low, q.high, 1]).startswith(
            f"wrong_type: recs[0].{key}: must be a number or null, got an array")
    if q.form == SUMMARY:
        assert refused(key, q.low).startswith(f"wrong_type: recs[0].{key}: must be [avg, min, max, n] or null")
    assert kept(key, None) is None


def test_the_rated_and_possible_ranges_are_the_documented_ones():
    """docs/payload.md's table of quantities says the same as the code."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "payload.md").read_text()
    for q in QUANTITIES.values():
        row = next(line for line in text.splitlines() if line.startswith("| `") and f"`{q.key}`" in line.split("|")[1])
        assert f"{q.low:g} … {q.high:g}" in row, (q.key, row)
        assert f"{q.lowest:g} … {q.highest:g}" in row, (q.key, row)
