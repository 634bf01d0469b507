"""Ingest's quick path encodes a payload v1 record for the store while it reads it
(store.values.encode_decoded, `Record.enc`) and makes its Values only when asked: what it stores
and what it gives is exactly what the full checks and `encode_record` give, over the benchmark's
stream and over odd values (negative, -0.0, zero, large, tiny, integers, many decimals, nulls,
absent quantities, flags), including the records that must go the old way."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from meetkit_gateway import payload
from meetkit_gateway.payload import QUANTITIES, SUMMARY, SCALAR, Batch, Value
from meetkit_gateway.store import Store
from meetkit_gateway.store import values as store_values
from meetkit_gateway.store.values import encode_record
from meetkit_tools.dev import batches

NOW = time.time()
TS = 1795510800
UNITS = {k: q.unit for k, q in QUANTITIES.items()}


def full(data: bytes, node: str) -> Batch:
    return payload._checked_batch(payload.decode(data), node, NOW)


def both(data: bytes, node: str) -> tuple[Batch, Batch]:
    """The quick path's Batch and the full checks' one, asserted equal, each Value a Value."""
    quick, checked = payload.parse_batch(data, node, NOW, encoded=True), full(data, node)
    assert quick == checked
    for q, c in zip(quick.records, checked.records):
        assert dict(q.values) == c.values and list(q.values) == list(c.values) and len(q.values) == len(c.values)
        assert [type(v) for v in q.values.values()] == [type(v) for v in c.values.values()]
        assert all(type(x) is type(y) for v, w in zip(q.values.values(), c.values.values()) if v is not None
                   for x, y in zip(v, w))
        if q.enc is not None:
            assert q.enc == encode_record(c.values, c.flags)
    return quick, checked


def stored(tmp: Path, batch: Batch) -> list[tuple[Any, ...]]:
    with Store(tmp / "gateway.db") as s:
        s.add_batch(batch, NOW)
        return s.db.execute("SELECT r.seq, r.nv, s.heads, r.vals FROM recs AS r JOIN shapes AS s ON s.id = r.shape"
                            " ORDER BY r.seq").fetchall()


def doc(recs: list[dict[str, Any]], node: str = "ams-001") -> bytes:
    return msgspec.json.encode({"v": 1, "node": node, "boot": 3, "fw": "0.3.0", "board": "esp32-devkitc",
                                "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
                                "units": UNITS, "recs": recs})


def test_the_benchmark_stream_is_encoded_on_the_way_and_stored_the_same(tmp_path):
    streams = batches.streams(4, 120, 1795500000)
    for s in streams:
        for data in s.messages:
            quick, checked = both(data, s.node)
            assert all(r.enc is not None for r in quick.records)  # the quick path took them all
            assert all(r.enc is None for r in checked.records)
    data, node = streams[0].messages[0], streams[0].node
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quick = payload.parse_batch(data, node, NOW, encoded=True)
    assert stored(tmp_path / "a", quick) == stored(tmp_path / "b", full(data, node))


def _number(rng: random.Random, q: str, odd: float) -> float | int:
    """A number within q's rated range: near where a node's are, at the decimals it sends, or with
    chance `odd` at any count of decimals, or an edge."""
    lo, hi = QUANTITIES[q].low, QUANTITIES[q].high
    if rng.random() >= odd:
        near = rng.uniform(950, 1050) if q == "press" else lo + rng.uniform(0, hi - lo) / 8
        return round(near, rng.choice(store_values._TRY[q]))
    pick = rng.random() / 4
    if pick < 0.05:
        return rng.choice([0, 0.0, -0.0, lo, hi, float(lo), float(hi)])
    if pick < 0.1:
        return rng.randint(int(lo), int(hi))
    if pick < 0.15:
        return rng.uniform(lo, hi)  # 15 to 17 digits
    if pick < 0.2:
        return rng.choice([1e-7, 5e-324, 0.1 + 0.2, 1 / 3]) if lo <= 0 else rng.uniform(lo, hi)
    return round(rng.uniform(lo, hi), rng.choice([0, 1, 2, 3, 4, 6]))


def _value(rng: random.Random, q: str, odd: float) -> Any:
    spec = QUANTITIES[q]
    if rng.random() < 0.05:
        return None
    if spec.form == SCALAR or (spec.form != SUMMARY and rng.random() < 0.7):
        return _number(rng, q, odd)
    a = _number(rng, q, odd)
    if rng.random() < 0.8:  # min and max close to avg, as a node's are: the narrow kinds
        k = rng.choice(store_values._TRY[q])
        b = max(spec.low, round(a - rng.uniform(0, 2), k))
        c = min(spec.high, round(a + rng.uniform(0, 2), k))
    else:
        b, c = sorted((_number(rng, q, odd), _number(rng, q, odd)))
    n = rng.choice([spec.n_low, 12, 58, 60, 255] + [256, 70000] * (rng.random() < odd))
    return [a, b, c, n]


_FLAG_CHOICES: list[list[str]] = [["rh_high"], ["missing"], ["warmup", "partial"], ["partial", "warmup"], [],
                                  ["missing", "missing"], ["overload", "floor"]]


def _record(rng: random.Random, seq: int, keys: list[str], odd: float = 0.2) -> dict[str, Any]:
    rec: dict[str, Any] = {"seq": seq, "ts": TS + 60 * seq, "up": 60 * seq, "dur": 60}
    for k in keys:
        rec[k] = _value(rng, k, odd)
    if rng.random() < 0.3:  # on quantities present or not, in the order written or not
        rec["f"] = {rng.choice(list(QUANTITIES)): rng.choice(_FLAG_CHOICES) for _ in range(rng.randint(1, 3))}
    return rec


@pytest.mark.parametrize("seed", range(6))
def test_odd_values_come_out_as_the_full_checks_give_them(seed, tmp_path):
    rng = random.Random(seed)
    taken = fell_back = 0
    for i in range(150):
        alike = sorted(rng.sample(list(QUANTITIES), rng.randint(1, len(QUANTITIES))), key=list(QUANTITIES).index)
        odd = rng.choice([0, 0.01, 0.05, 0.3])
        recs = [_record(rng, s, alike if rng.random() < 0.8 else
                        sorted(rng.sample(list(QUANTITIES), rng.randint(1, 12)), key=list(QUANTITIES).index), odd)
                for s in range(rng.randint(1, 6))]
        data = doc(recs)
        quick, _ = both(data, "ams-001")
        taken += sum(r.enc is not None for r in quick.records)
        fell_back += sum(r.enc is None for r in quick.records)
        if i % 25 == 0:  # the rows the store writes are the same too
            (tmp_path / f"a{i}").mkdir()
            (tmp_path / f"b{i}").mkdir()
            assert stored(tmp_path / f"a{i}", quick) == stored(tmp_path / f"b{i}", full(data, "ams-001"))
    assert taken > 50 and fell_back > 20  # both ways were taken


@pytest.mark.parametrize("values", [
    [0.0, -0.0, 0.0], [-0.0, 0.0, -0.0],  # -0.0 is no decimal: kept as 8 bytes, by `encode`
    [12.345, 12.35, 12.3], [12.3, 12.35, 12.345], [-12.5, -12.55, -12.555], [85, 84.99, -40],
    [-0.01, -0.1, -1e-7], [1e-7, 5e-324, 2.5e-300],
])
def test_a_number_is_taken_the_same_whatever_came_before(values, tmp_path):
    """The Ms kept for numbers seen (a zero never) do not change what a later number gives."""
    for x in values:
        rec = {"seq": 1, "ts": TS, "up": 60, "dur": 60, "temp": [x, x, x, 12], "cov": 0.5, "LA10": x if x >= 0 else 1}
        quick, checked = both(doc([rec]), "ams-001")
        if x == 0 and str(x).startswith("-"):
            assert quick.records[0].enc is None  # to `encode_record`, as before
            assert str(quick.records[0].values["temp"].avg) == "-0.0"


def test_the_kept_numbers_are_bounded_and_taken_again_after_clearing(monkeypatch):
    monkeypatch.setattr(store_values, "_MEMO_MAX", 3)
    for memo in store_values._memos.values():
        memo.clear()
    rng = random.Random(7)
    for _ in range(30):
        both(doc([_record(rng, s, ["pm25", "temp", "rh", "LA10"]) for s in range(4)]), "ams-001")
    assert all(len(m) <= 3 for m in store_values._memos.values())


def test_records_of_several_layouts_in_one_batch():
    recs = [{"seq": 1, "ts": TS, "up": 60, "dur": 60, "pm25": [5.2, 4, 7, 58], "LA10": 50.5},
            {"seq": 2, "ts": TS + 60, "up": 120, "dur": 60, "pm25": None, "LA10": 50},
            {"seq": 3, "ts": TS + 120, "up": 180, "dur": 60, "temp": [12.25, 12.2, 12.3, 12]},
            {"seq": 4, "ts": TS + 180, "up": 240, "dur": 60, "pm25": [5.2, 4, 7, 58], "LA10": 50.5,
             "f": {"pm25": ["rh_high"], "LA10": ["overload"]}}]
    quick, _ = both(doc(recs), "ams-001")
    assert all(r.enc is not None for r in quick.records)
    assert quick.records[1].values == {"pm25": None, "LA10": Value(50.0)}


def test_a_summary_with_min_above_max_is_still_refused_by_the_full_checks():
    rec = {"seq": 1, "ts": TS, "up": 60, "dur": 60, "pm25": [5.2, 7, 4, 58]}
    assert payload._plainly_valid_batch(doc([rec]), "ams-001", NOW, encoded=True) is None
    assert payload.parse_batch(doc([rec]), "ams-001", NOW, encoded=True).refused


def test_encode_decoded_is_encode_record_for_any_numbers():
    """Beyond the rated ranges too: large, tiny, negative, many decimals, ints, counts past a byte."""
    rng = random.Random(11)
    numbers = [0, 1, -1, 0.0, -0.0, 0.5, -0.05, 1e-7, 5e-324, 1e300, 2.0**53, 327.67, 327.68, -327.68, 3276.7,
               32767, 32768, -32768, -32769, 999.99, 1000.5, 1012.34, 1e16, 123456.789, float("inf"), float("nan")]
    for _ in range(3000):
        given: list[Any] = []
        values: dict[str, Any] = {}
        for q in store_values.CODES:
            pick = rng.random()
            if pick < 0.15:
                given.append(msgspec.UNSET)
                continue
            if pick < 0.2:
                given.append(None)
                values[q] = None
                continue

            def number() -> Any:
                if rng.random() < 0.2:
                    return rng.choice(numbers)
                x = round(rng.uniform(-50, 50) * 10 ** rng.randint(-2, 3), rng.randint(0, 8))
                return int(x) if rng.random() < 0.1 else x
            if pick < 0.5:
                x = number()
                given.append(x)
                values[q] = Value(float(x))
            else:
                avg, lo, hi = number(), number(), number()
                if rng.random() < 0.9:
                    lo, hi = min(lo, hi), max(lo, hi)
                n = rng.choice([0, 1, 12, 255, 256, 65535, 2**40])
                given.append([avg, lo, hi, n])
                values[q] = Value(float(avg), float(lo), float(hi), n)
        flags = {rng.choice(store_values.CODES): rng.choice(_FLAG_CHOICES)} if rng.random() < 0.3 else None
        got = store_values.encode_decoded(given, flags, tuple)
        inverted = any(v is not None and v.n is not None and v.min > v.max for v in values.values())
        want = encode_record(values, {q: tuple(f) for q, f in (flags or {}).items()})
        fast = store_values.encode_fast(values, {q: tuple(f) for q, f in (flags or {}).items()})
        assert got == (None if fast is None or inverted else want), (given, flags)
