"""A record's readings in one BLOB (gateway/store/values.py) come back exactly as the node sent
them, through the store and every reader: decimals at any resolution, and what fixed point cannot
hold (infinities, -0.0, 5e-324, a float no decimal of a node gives), null values with their flags,
flags in any order, a unit other than the contract's."""

from __future__ import annotations

import math
import random
from typing import Any

from meetkit_gateway.payload import QUANTITIES, Batch, Record, Value
from meetkit_gateway.store import Store
from meetkit_gateway.store.values import decode, encode, encode_record

T0 = 1795510800
INF = float("inf")


def same(a: Any, b: Any) -> bool:
    """Equal, a float to the bit (the sign of a zero; nan is nan)."""
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    return type(a) is type(b) and a == b


def test_decimals_at_any_resolution_come_back_as_the_very_same_floats():
    rng = random.Random(17)
    for _ in range(20_000):
        q = rng.choice(list(QUANTITIES))
        avg = round(rng.uniform(-2000, 2000), rng.randrange(0, 6))
        lo, hi = (round(avg - rng.uniform(0, 500), rng.randrange(0, 6)), round(avg + rng.uniform(0, 500), rng.randrange(0, 6)))
        v = rng.choice([Value(avg), Value(avg, lo, hi, rng.randrange(0, 100_000))])
        (got,) = decode(*encode_record({q: v}, {})[:2], {})
        assert all(same(a, b) for a, b in zip(got[1:5], v)), (q, v, got)


def test_what_fixed_point_cannot_hold_is_kept_as_it_is():
    odd = [("pm25", (1e308, -1e308, 5e-324, 2**63 - 1), ("range", "refused"), None),
           ("temp", (INF, -INF, -0.0, 12), ("partial", "warmup"), None),  # flags not in the gateway's order
           ("rh", (-0.0, None, None, None), ("rh_high", "rh_high"), None),  # a flag twice
           ("cov", (0.1 + 0.2, None, None, None), (), None),
           ("press", (float("nan"), 1.0, 2.0, 3), (), None),
           ("LAeq", (None, None, None, None), ("refused",), "dB(A)"),  # a unit the contract refuses
           ("LZeq", (5.0, None, None, 7), (), None),  # n without min and max: an older store's
           ("co2", (415.5, None, None, None), ("x",), "ppm")]  # a quantity and a flag not in the contract
    got = {r[0]: r for r in decode(*encode(odd), {"LZeq": "dB"})}
    for q, v, flags, unit in odd:
        r = got[q]
        assert all(same(a, b) for a, b in zip(r[1:5], v)), (q, v, r)
        assert r[5] == (unit or QUANTITIES[q].unit if q in QUANTITIES else unit) and r[6] == ",".join(flags), r


def test_every_reader_gives_the_values_the_node_sent(tmp_path):
    values = {"pm1": Value(3.1, 2.0, 5.0, 58), "pm25": None, "temp": Value(12.34, 12.3, 12.4, 12),
              "rh": Value(81.25, 80.9, 81.5, 12), "press": Value(1013.21, 1013.1, 1013.3, 12),
              "LAeq": Value(55.23, 48.31, 67.12, 60), "LA10": Value(58.4), "cov": Value(0.998), "LZeq": Value(-0.0)}
    flags = {"pm25": ("missing",), "temp": ("range",), "LA50": ("floor",)}
    with Store(tmp_path / "g.db") as s:
        s.add_batch(Batch("ams-001", 1, "0.3.0", "esp32-devkitc", {"pm": "pms5003"},
                          {q: QUANTITIES[q].unit for q in QUANTITIES}, (Record(0, T0, 0, 60, values, flags),)), T0 + 61)
        listed = {g.quantity: g for g in s.readings()}
        forwarded = {g.quantity: g for g in s.forward_readings(0, 1)}
        exported = {g.quantity: g for g in s.export_readings("ams-001", T0, T0 + 60)}
        assert listed == forwarded == exported
        assert set(listed) == set(values) | set(flags)
        for q, v in values.items():
            g = listed[q]
            assert all(same(a, b) for a, b in zip((g.avg, g.min, g.max, g.n), v or (None,) * 4)), (q, g)
            assert g.flags == ",".join(flags.get(q, ())) and g.unit == QUANTITIES[q].unit
        assert (listed["LA50"].avg, listed["LA50"].flags) == (None, "floor")
        assert s.series("ams-001", T0, ("temp", "LAeq")) == [(T0, "temp", 12.34), (T0, "LAeq", 55.23)]
