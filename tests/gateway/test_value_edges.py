"""The edges of every quantity's valid range (docs/payload.md): the bounds themselves are taken,
exactly; a step past them, a boolean or a summary of the wrong shape is rejected with its reason.
The gateway checks plainly valid values on a quick path and everything else in full: both must
agree with the contract."""

from __future__ import annotations

from typing import Any

import pytest

from meetkit_gateway import payload
from meetkit_gateway.payload import QUANTITIES, SCALAR, SUMMARY, Rejected, Value

from .conftest import encode


def parse(key: str, value: Any) -> Value | None:
    q = QUANTITIES[key]
    doc = {"v": 1, "node": "edge-1", "boot": 1, "fw": "0.3.0", "board": "esp32-devkitc", "sensors": {},
           "units": {key: q.unit}, "recs": [{"seq": 0, "ts": 1795510800, "up": 0, "dur": 60, key: value}]}
    return payload.parse_batch(encode(doc), "edge-1").records[0].values[key]


@pytest.mark.parametrize("key", list(QUANTITIES))
def test_the_bounds_are_taken_exactly_and_a_step_past_them_is_not(key):
    q = QUANTITIES[key]
    if q.form != SUMMARY:
        assert parse(key, q.low) == Value(float(q.low)) and parse(key, q.high) == Value(float(q.high))
        assert isinstance(parse(key, int(q.high)).avg, float)
        for past in (q.low - 0.01, q.high + 0.01):
            with pytest.raises(Rejected, match=rf"^out_of_range: recs\[0\]\.{key}: {past:g} is outside"):
                parse(key, past)
        with pytest.raises(Rejected, match=rf"^wrong_type: recs\[0\]\.{key}: must be a number"):
            parse(key, True)
    if q.form != SCALAR:
        assert parse(key, [q.low, q.low, q.high, q.n_low]) == Value(float(q.low), float(q.low), float(q.high), q.n_low)
        assert parse(key, [q.high, q.high, q.high, 2**63 - 1]) == Value(float(q.high), float(q.high), float(q.high),
                                                                         2**63 - 1)
        with pytest.raises(Rejected, match=rf"^out_of_range: recs\[0\]\.{key}: min {q.low - 0.01:g} is outside"):
            parse(key, [q.low, q.low - 0.01, q.high, 1])
        with pytest.raises(Rejected, match=rf"^out_of_range: recs\[0\]\.{key}: avg {q.high + 0.01:g} is outside"):
            parse(key, [q.high + 0.01, q.low, q.high, 1])
        with pytest.raises(Rejected, match=rf"^out_of_range: recs\[0\]\.{key} n: {q.n_low - 1} is outside"):
            parse(key, [q.low, q.low, q.high, q.n_low - 1])
        with pytest.raises(Rejected, match=rf"^bad_value: recs\[0\]\.{key}: min {q.high:g} is above max {q.low:g}"):
            parse(key, [q.low, q.high, q.low, 1])
        with pytest.raises(Rejected, match=rf"^wrong_type: recs\[0\]\.{key} max: must be a number, got a boolean"):
            parse(key, [q.low, q.low, True, 1])
        with pytest.raises(Rejected, match=rf"^wrong_type: recs\[0\]\.{key} n: must be an integer, got a number"):
            parse(key, [q.low, q.low, q.high, 1.0])
        with pytest.raises(Rejected, match=rf"^bad_value: recs\[0\]\.{key}: must be \[avg, min, max, n\], got 3"):
            parse(key, [q.low, q.low, q.high])
    else:
        with pytest.raises(Rejected, match=rf"^wrong_type: recs\[0\]\.{key}: must be a number or null, got an array"):
            parse(key, [q.low, q.low, q.high, 1])
    if q.form == SUMMARY:
        with pytest.raises(Rejected, match=rf"^wrong_type: recs\[0\]\.{key}: must be \[avg, min, max, n\] or null"):
            parse(key, q.low)
    assert parse(key, None) is None
