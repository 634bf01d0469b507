"""The noise indicators of payload v1 (docs/payload.md, "Quantities"): LAeq as
[LAeq, LAFmin, LAFmax, n], LA10/LA50/LA90, LZeq and cov as plain numbers, LZeq's older array form,
and the flags overload and floor, from the broker to SQLite."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meetkit_gateway.payload import Rejected, Value, parse_batch
from meetkit_gateway.store import Store

from .conftest import OLD_FIRMWARE, encode, example


def readings(path: Any, seq: int | None = None) -> dict[str, tuple]:
    """quantity -> (avg, min, max, n, unit, flags) as the store holds them."""
    with Store(path, readonly=True) as s:
        return {g.quantity: (g.avg, g.min, g.max, g.n, g.unit, g.flags) for g in s.readings()
                if seq is None or g.seq == seq}


def noise_record(**fields: Any) -> dict[str, Any]:
    """The example batch with fields of its second record replaced."""
    b = copy.deepcopy(example())
    b["recs"][1].update(fields)
    return b


def test_a_record_with_every_noise_indicator_is_stored(gateway, node):
    node.publish("meetkit/ams-001/up", example())
    gateway.wait_committed(1)
    got = readings(gateway.cfg.store.path, seq=17)
    assert {q: got[q] for q in ("LAeq", "LA10", "LA50", "LA90", "LZeq", "cov")} == {
        "LAeq": (55.2, 48.3, 67.1, 60, "dB", ""),  # LAeq, LAFmin, LAFmax, seconds of audio
        "LA10": (58.4, None, None, None, "dB", ""),
        "LA50": (53.9, None, None, None, "dB", ""),
        "LA90": (49.6, None, None, None, "dB", ""),
        "LZeq": (63.8, None, None, None, "dB", ""),
        "cov": (1.0, None, None, None, "1", ""),
    }
    with gateway.store() as s:
        assert s.counts().dead_letters == 0
        by_q = {g.quantity: g for g in s.readings() if g.seq == 17}
    assert [q for q in by_q] == ["pm1", "pm25", "pm10", "temp", "rh", "press",
                                 "LAeq", "LA10", "LA50", "LA90", "LZeq", "cov"]
    assert by_q["LA10"].scalar and by_q["cov"].scalar and by_q["LZeq"].scalar
    assert not by_q["LAeq"].scalar and not by_q["pm25"].scalar


def test_lzeq_as_firmware_0_1_0_sent_it_is_still_accepted(gateway, node):
    node.publish("meetkit/ams-001/up", OLD_FIRMWARE)
    gateway.wait_committed(1)
    assert readings(gateway.cfg.store.path) == {
        "pm25": (5.2, 4.0, 7.0, 58, "ug/m3", ""),
        "temp": (12.34, 12.3, 12.4, 12, "degC", ""),
        "LZeq": (55.2, 48.1, 67.3, 60, "dB", ""),
    }
    with gateway.store() as s:
        assert s.counts().dead_letters == 0
        (lzeq,) = s.readings(quantity="LZeq")
    assert not lzeq.scalar


def test_overload_and_floor_flags_are_stored(gateway, node):
    b = noise_record(f={"LAeq": ["partial", "overload", "floor"], "LA90": ["floor"], "LZeq": ["overload"]})
    node.publish("meetkit/ams-001/up", b)
    gateway.wait_committed(1)
    got = readings(gateway.cfg.store.path, seq=17)
    assert got["LAeq"][-1] == "partial,overload,floor"
    assert got["LA90"][-1] == "floor"
    assert got["LZeq"][-1] == "overload"
    assert got["LA10"][-1] == ""
    with gateway.store() as s:
        flags = {g.quantity: g.flag_names for g in s.readings() if g.seq == 17}
    assert flags["LAeq"] == ("partial", "overload", "floor")
    assert flags["LA90"] == ("floor",)


def test_no_audio_stores_null_indicators_with_their_flags(gateway, node):
    b = noise_record(cov=0, f={"LAeq": ["missing"]})
    b["recs"][1].update(LAeq=None, LA10=None, LA50=None, LA90=None, LZeq=None)
    node.publish("meetkit/ams-001/up", b)
    gateway.wait_committed(1)
    got = readings(gateway.cfg.store.path, seq=17)
    assert got["LAeq"] == (None, None, None, None, "dB", "missing")
    assert got["LA10"] == (None, None, None, None, "dB", "")
    assert got["cov"] == (0.0, None, None, None, "1", "")


# -- parsing only ---------------------------------------------------------------------------------


def parse(b: dict[str, Any]) -> dict[str, Value | None]:
    return dict(parse_batch(encode(b), b["node"]).records[-1].values)


def test_values_of_the_noise_indicators():
    v = parse(example())
    assert v["LAeq"] == Value(55.2, 48.3, 67.1, 60) and not v["LAeq"].scalar
    assert v["LA10"] == Value(58.4) and v["LA10"].scalar
    assert (v["LA10"].min, v["LA10"].max, v["LA10"].n) == (None, None, None)
    assert v["cov"] == Value(1.0)
    assert v["LZeq"] == Value(63.8)
    assert parse(OLD_FIRMWARE)["LZeq"] == Value(55.2, 48.1, 67.3, 60)


@pytest.mark.parametrize("laeq", [
    [50.0, 50.1, 50.3, 60],  # steady sound: rounding and the Fast lag put LAFmin a hair above LAeq
    [70.0, 40.0, 69.9, 60],  # LAFmax below LAeq
    [55.0, 55.0, 55.0, 60],
    [55.0, 48.0, 67.0, 0],  # less than a second of audio processed (cov says how much)
])
def test_laeq_need_not_lie_between_lafmin_and_lafmax(laeq):
    assert parse(noise_record(LAeq=laeq))["LAeq"] == Value(*laeq)


@pytest.mark.parametrize("cov", [0, 0.5, 1, 1.0])
def test_coverage_from_0_to_1(cov):
    assert parse(noise_record(cov=cov))["cov"] == Value(float(cov))


@pytest.mark.parametrize("fields, code, reason", [
    ({"cov": 1.2}, "out_of_range", "recs[1].cov: 1.2 is outside 0..1, what can be measured"),
    ({"LA10": "58.4"}, "wrong_type", "recs[1].LA10: must be a number or null, got a string"),
    ({"LA90": [49.6, 48.0, 51.0, 60]}, "wrong_type", "recs[1].LA90: must be a number or null, got an array"),
    ({"LAeq": [55.2, 67.1, 48.3, 60]}, "bad_value", "recs[1].LAeq: min 67.1 is above max 48.3"),
    ({"LAeq": [55.2, 48.3, 67.1]}, "bad_value", "recs[1].LAeq: must be [avg, min, max, n], got 3 elements"),
    ({"LZeq": {"avg": 63.8}}, "wrong_type",
     "recs[1].LZeq: must be a number, [avg, min, max, n] (firmware 0.1.0) or null, got an object"),
    ({"f": {"LAeq": ["clipping"]}}, "bad_value",
     'recs[1].f.LAeq: "clipping" is not a flag (missing, checksum, warmup, rh_high, partial, overload, floor)'),
])
def test_bad_noise_fields_are_refused_naming_the_field(fields, code, reason):
    """Each is refused on its own: the record keeps its other noise indicators."""
    b = parse_batch(encode(noise_record(**fields)), "ams-001")
    (refusal,) = b.refused
    assert (refusal.code, refusal.reason, refusal.whole, refusal.seq) == (code, reason, False, 17)
    values = b.records[-1].values
    assert all(values[q] is not None for q in ("LAeq", "LA10", "LA50", "LA90", "LZeq", "cov") if q not in fields)


def test_a_value_is_a_summary_or_a_scalar_never_half_of_each():
    assert Value(1.0).scalar
    assert not Value(1.0, 0.5, 2.0, 3).scalar
    with pytest.raises(ValueError):
        Value(1.0, 0.5, 2.0)
    with pytest.raises(ValueError):
        Value(1.0, n=3)


def test_store_reads_back_scalars_and_summaries(tmp_path):
    with Store(tmp_path / "g.db") as s:
        s.add_batch(parse_batch(encode(example()), "ams-001"))
        s.add_batch(parse_batch(encode(OLD_FIRMWARE), "ams-001"))
        (latest,) = s.latest()
        lzeq = {(g.boot, g.seq): g for g in s.readings(quantity="LZeq")}
    assert (latest.boot, latest.seq) == (3, 17)
    la50 = latest.readings["LA50"]
    assert (la50.avg, la50.min, la50.max, la50.n, la50.unit) == (53.9, None, None, None, "dB")
    laeq = latest.readings["LAeq"]
    assert (laeq.avg, laeq.min, laeq.max, laeq.n) == (55.2, 48.3, 67.1, 60)
    assert lzeq[(3, 17)].scalar and (lzeq[(3, 17)].avg, lzeq[(3, 17)].n) == (63.8, None)
    assert not lzeq[(2, 40)].scalar and (lzeq[(2, 40)].min, lzeq[(2, 40)].max) == (48.1, 67.3)
