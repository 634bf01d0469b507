"""Each kind of bad input ends up whole in the dead-letter table with a reason and a counter, and
nothing of its batch reaches the records or readings. In every bad batch the first record is valid,
so a gateway that stored a batch partly would fail these tests."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest

from .conftest import batch, encode, example


def bad(change: Callable[[dict[str, Any]], Any]) -> bytes:
    b = copy.deepcopy(example())
    change(b)
    return encode(b)


def rec(i: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["recs"][i].__setitem__(key, value)


def oversized() -> bytes:
    b = batch(seqs=range(60))
    assert len(encode(b)) > 4096
    return encode(b)


CASES = [
    # id, topic node, payload, code, reason (exact)
    ("not-json", "ams-001", b'{"v":1,"node":"ams-001",', "not_json",
     "not JSON: Expecting property name enclosed in double quotes: line 1 column 25 (char 24)"),
    ("not-utf8", "ams-001", b'{"v":1,"node":"\xff"}', "not_json", None),
    ("not-an-object", "ams-001", b"[1,2]", "wrong_type", "the message must be a JSON object, got an array"),
    ("nan", "ams-001", encode(example()).replace(b"12.34", b"NaN"), "not_json", "not JSON: NaN is not a JSON number"),
    ("wrong-version", "ams-001", bad(lambda b: b.update(v=2)), "version",
     "v: payload version 2 is not known (this gateway knows 1)"),
    ("version-as-string", "ams-001", bad(lambda b: b.update(v="1")), "version",
     'v: payload version "1" is not known (this gateway knows 1)'),
    ("node-mismatch", "ams-002", encode(example()), "node_mismatch",
     "node: 'ams-001' does not match the topic's node 'ams-002'"),
    ("bad-node-id", "AMS_1", bad(lambda b: b.update(node="AMS_1")), "bad_value",
     "node: 'AMS_1' is not a node id ([a-z0-9-]{1,32})"),
    ("missing-envelope-field", "ams-001", bad(lambda b: b.pop("boot")), "missing_field", "boot: missing"),
    ("missing-record-field", "ams-001", bad(lambda b: b["recs"][1].pop("dur")), "missing_field", "recs[1].dur: missing"),
    ("missing-unit", "ams-001", bad(lambda b: b["units"].pop("LZeq")), "missing_field", "units.LZeq: missing, recs[1] has LZeq"),
    ("out-of-range-avg", "ams-001", bad(rec(1, "temp", [91.5, 12.3, 12.4, 12])), "out_of_range",
     "recs[1].temp: avg 91.5 is outside -45..90 degC"),
    ("out-of-range-max", "ams-001", bad(rec(1, "LZeq", [55.2, 48.1, 812.0, 60])), "out_of_range",
     "recs[1].LZeq: max 812 is outside 0..140 dB"),
    ("negative-pm", "ams-001", bad(rec(1, "pm25", [-1, -3, 7, 58])), "out_of_range",
     "recs[1].pm25: avg -1 is outside 0..2000 ug/m3"),
    ("negative-seq", "ams-001", bad(rec(1, "seq", -1)), "out_of_range", None),
    ("zero-dur", "ams-001", bad(rec(1, "dur", 0)), "out_of_range", None),
    ("seq-as-string", "ams-001", bad(rec(1, "seq", "17")), "wrong_type", "recs[1].seq: must be an integer, got a string"),
    ("boot-as-float", "ams-001", bad(lambda b: b.update(boot=3.5)), "wrong_type", "boot: must be an integer, got a number"),
    ("ts-as-string", "ams-001", bad(rec(1, "ts", "2026-11-24T08:00:00Z")), "wrong_type",
     "recs[1].ts: must be an integer, got a string"),
    ("value-as-number", "ams-001", bad(rec(1, "rh", 81.2)), "wrong_type",
     "recs[1].rh: must be [avg, min, max, n] or null, got a number"),
    ("n-as-bool", "ams-001", bad(rec(1, "rh", [81.2, 80.9, 81.5, True])), "wrong_type",
     "recs[1].rh n: must be an integer, got a boolean"),
    ("recs-not-array", "ams-001", bad(lambda b: b.update(recs={})), "wrong_type", "recs: must be an array, got an object"),
    ("three-elements", "ams-001", bad(rec(1, "rh", [81.2, 80.9, 81.5])), "bad_value",
     "recs[1].rh: must be [avg, min, max, n], got 3 elements"),
    ("min-above-max", "ams-001", bad(rec(1, "rh", [81.2, 85.0, 81.5, 12])), "bad_value",
     "recs[1].rh: min 85 is above max 81.5"),
    ("wrong-unit", "ams-001", bad(lambda b: b["units"].update(temp="degF")), "bad_value",
     "units.temp: 'degF', payload v1 measures temp in 'degC'"),
    ("unknown-flag", "ams-001", bad(rec(1, "f", {"pm25": ["foggy"]})), "bad_value",
     'recs[1].f.pm25: "foggy" is not a flag (missing, checksum, warmup, rh_high, partial, overload, floor)'),
    ("unknown-flag-on-noise", "ams-001", bad(rec(1, "f", {"LAeq": ["overload", "clipped"]})), "bad_value",
     'recs[1].f.LAeq: "clipped" is not a flag (missing, checksum, warmup, rh_high, partial, overload, floor)'),
    ("seq-backwards", "ams-001", bad(rec(1, "seq", 16)), "bad_value",
     "recs[1].seq: 16 after 16; records go oldest first, one seq each"),
    ("unknown-quantity", "ams-001", bad(rec(1, "LCeq", 61.0)), "unknown_field",
     "recs[1].LCeq: not a field of payload v1"),
    ("unknown-unit-quantity", "ams-001", bad(lambda b: b["units"].update(LCeq="dB")), "unknown_field",
     "units.LCeq: not a quantity of payload v1"),
    # the noise indicators
    ("cov-above-one", "ams-001", bad(rec(1, "cov", 1.2)), "out_of_range", "recs[1].cov: 1.2 is outside 0..1"),
    ("cov-negative", "ams-001", bad(rec(1, "cov", -0.1)), "out_of_range", "recs[1].cov: -0.1 is outside 0..1"),
    ("cov-as-array", "ams-001", bad(rec(1, "cov", [1, 1, 1, 60])), "wrong_type",
     "recs[1].cov: must be a number or null, got an array"),
    ("cov-wrong-unit", "ams-001", bad(lambda b: b["units"].update(cov="%")), "bad_value",
     "units.cov: '%', payload v1 measures cov in '1'"),
    ("LA10-as-string", "ams-001", bad(rec(1, "LA10", "58.4")), "wrong_type",
     "recs[1].LA10: must be a number or null, got a string"),
    ("LA50-as-array", "ams-001", bad(rec(1, "LA50", [53.9, 50.0, 57.0, 60])), "wrong_type",
     "recs[1].LA50: must be a number or null, got an array"),
    ("LA90-as-bool", "ams-001", bad(rec(1, "LA90", True)), "wrong_type",
     "recs[1].LA90: must be a number or null, got a boolean"),
    ("LA90-out-of-range", "ams-001", bad(rec(1, "LA90", 141)), "out_of_range", "recs[1].LA90: 141 is outside 0..140 dB"),
    ("LA10-too-large", "ams-001", encode(example()).replace(b'"LA10":58.4', b'"LA10":1e400'), "out_of_range",
     "recs[1].LA10: inf is not a finite number"),
    ("LAeq-min-above-max", "ams-001", bad(rec(1, "LAeq", [55.2, 67.1, 48.3, 60])), "bad_value",
     "recs[1].LAeq: min 67.1 is above max 48.3"),
    ("LAeq-as-number", "ams-001", bad(rec(1, "LAeq", 55.2)), "wrong_type",
     "recs[1].LAeq: must be [avg, min, max, n] or null, got a number"),
    ("LAeq-max-out-of-range", "ams-001", bad(rec(1, "LAeq", [55.2, 48.3, 141.0, 60])), "out_of_range",
     "recs[1].LAeq: max 141 is outside 0..140 dB"),
    ("LAeq-negative-n", "ams-001", bad(rec(1, "LAeq", [55.2, 48.3, 67.1, -1])), "out_of_range",
     f"recs[1].LAeq n: -1 is outside 0..{2**63 - 1}"),
    ("LZeq-as-string", "ams-001", bad(rec(1, "LZeq", "63.8")), "wrong_type",
     "recs[1].LZeq: must be a number, [avg, min, max, n] (firmware 0.1.0) or null, got a string"),
    ("LZeq-out-of-range", "ams-001", bad(rec(1, "LZeq", 150.5)), "out_of_range", "recs[1].LZeq: 150.5 is outside 0..140 dB"),
    ("LZeq-old-form-min-above-max", "ams-001", bad(rec(1, "LZeq", [55.2, 67.3, 48.1, 60])), "bad_value",
     "recs[1].LZeq: min 67.3 is above max 48.1"),
    ("LZeq-old-form-zero-n", "ams-001", bad(rec(1, "LZeq", [55.2, 48.1, 67.3, 0])), "out_of_range",
     f"recs[1].LZeq n: 0 is outside 1..{2**63 - 1}"),
    ("noise-unit-missing", "ams-001", bad(lambda b: b["units"].pop("LA90")), "missing_field",
     "units.LA90: missing, recs[1] has LA90"),
    ("unknown-envelope-field", "ams-001", bad(lambda b: b.update(extra=1)), "unknown_field", "extra: not a field of payload v1"),
    ("duplicate-key", "ams-001", encode(example()).replace(b'"boot":3,', b'"boot":3,"boot":4,'), "not_json",
     "not JSON: key 'boot' appears twice"),
    ("oversized", "ams-001", oversized(), "oversized", None),
]


@pytest.mark.parametrize("node_id, payload, code, reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_batch_is_dead_lettered_whole(gateway, node, node_id, payload, code, reason):
    topic = f"meetkit/{node_id}/up"
    node.publish(topic, payload)
    gateway.wait_committed(1)
    with gateway.store() as s:
        c = s.counts()
        (dl,) = s.dead_letters()
        counters = s.counters()
    assert (c.records, c.readings) == (0, 0)
    assert (dl.topic, dl.payload, dl.code) == (topic, payload, code)
    if reason is not None:
        assert dl.reason == reason
    assert counters == {f"rejected.{code}": 1}
    assert c.rejected == {code: 1}


def test_oversized_reason_says_the_size_and_the_limit(gateway, node):
    payload = encode(batch(seqs=range(60)))
    node.publish("meetkit/ams-001/up", payload)
    gateway.wait_committed(1)
    with gateway.store() as s:
        (dl,) = s.dead_letters()
    assert dl.reason == f"{len(payload)} bytes, the limit is 4096"


def test_bad_status_is_dead_lettered(gateway, node):
    topic = "meetkit/ams-001/status"
    node.publish(topic, {"v": 1, "node": "ams-001", "online": "yes"})
    node.publish(topic, {"v": 1, "node": "ams-001", "online": True, "rssi": 12})
    gateway.wait_committed(2)
    with gateway.store() as s:
        assert [(d.topic, d.code, d.reason) for d in reversed(s.dead_letters())] == [
            (topic, "wrong_type", "online: must be true or false, got a string"),
            (topic, "out_of_range", "rssi: 12 is outside -128..0 dBm"),
        ]
        assert s.nodes() == []


def test_good_batches_around_a_bad_one_are_stored(gateway, node):
    node.publish("meetkit/ams-001/up", batch(seqs=[1]))
    node.publish("meetkit/ams-001/up", b"garbage")
    node.publish("meetkit/ams-001/up", batch(seqs=[2]))
    gateway.wait_committed(3)
    with gateway.store() as s:
        assert sorted({(g.node, g.seq) for g in s.readings()}) == [("ams-001", 1), ("ams-001", 2)]
        assert s.counters() == {"batches": 2, "records": 2, "rejected.not_json": 1}
