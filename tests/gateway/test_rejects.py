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
     'recs[1].f.pm25: "foggy" is not a flag (missing, checksum, warmup, rh_high, partial)'),
    ("seq-backwards", "ams-001", bad(rec(1, "seq", 16)), "bad_value",
     "recs[1].seq: 16 after 16; records go oldest first, one seq each"),
    ("unknown-quantity", "ams-001", bad(rec(1, "LAeq", [50.0, 45.0, 60.0, 60])), "unknown_field",
     "recs[1].LAeq: not a field of payload v1"),
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
