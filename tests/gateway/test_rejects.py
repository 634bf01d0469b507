"""Bad input is judged as narrowly as it can be (docs/payload.md, "What the gateway does with a
batch"): a broken envelope rejects the whole message; a bad record refuses that record only; an
impossible value refuses that value only (its record is stored without it, flagged `refused`); a
value outside its sensor's rated range but possible is kept and flagged `range`. What is refused
is kept as a dead letter with a reason and counted, and the node is acknowledged exactly the seqs
the database holds.

Every bad batch here is the example of payload.md (records 16 and 17) with one thing changed in its
envelope or in record 17 (index 1): record 16 must come through untouched whenever the envelope is
sound."""

from __future__ import annotations

import copy
import json
from typing import Any, Callable

import pytest

from meetkit_gateway import payload
from meetkit_gateway.store import Store
from tests.metrics import parse_exposition, sample

from .conftest import Running, batch, encode, example, wait_for

INT_MAX = 2**63 - 1


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


# -- whole messages ---------------------------------------------------------------------------------

ENVELOPE = [
    # id, topic node, payload, code, reason (exact)
    ("not-json", "ams-001", b'{"v":1,"node":"ams-001",', "not_json",
     "not JSON: Expecting property name enclosed in double quotes: line 1 column 25 (char 24)"),
    ("not-utf8", "ams-001", b'{"v":1,"node":"\xff"}', "not_json", None),
    ("not-an-object", "ams-001", b"[1,2]", "wrong_type", "the message must be a JSON object, got an array"),
    ("nan", "ams-001", encode(example()).replace(b"12.34", b"NaN"), "not_json", "not JSON: NaN is not a JSON number"),
    ("wrong-version", "ams-001", bad(lambda b: b.update(v=3)), "version",
     "v: payload version 3 is not known (this gateway knows 1 and 2)"),
    ("version-as-string", "ams-001", bad(lambda b: b.update(v="1")), "version",
     'v: payload version "1" is not known (this gateway knows 1 and 2)'),
    ("node-mismatch", "ams-002", encode(example()), "node_mismatch",
     "node: 'ams-001' does not match the topic's node 'ams-002'"),
    ("bad-node-id", "AMS_1", bad(lambda b: b.update(node="AMS_1")), "bad_value",
     "node: 'AMS_1' is not a node id ([a-z0-9-]{1,32})"),
    ("missing-envelope-field", "ams-001", bad(lambda b: b.pop("boot")), "missing_field", "boot: missing"),
    ("boot-as-float", "ams-001", bad(lambda b: b.update(boot=3.5)), "wrong_type", "boot: must be an integer, got a number"),
    ("boot-beyond-contract", "ams-001", bad(lambda b: b.update(boot=2**32)), "implausible",
     f"boot: {2**32} is outside 0..{2**30 - 1}"),
    ("boot-huge", "ams-001", bad(lambda b: b.update(boot=INT_MAX)), "implausible",
     f"boot: {INT_MAX} is outside 0..{2**30 - 1}"),
    ("recs-not-array", "ams-001", bad(lambda b: b.update(recs={})), "wrong_type", "recs: must be an array, got an object"),
    ("recs-empty", "ams-001", bad(lambda b: b.update(recs=[])), "bad_value", "recs: must hold at least one record"),
    ("unknown-envelope-field", "ams-001", bad(lambda b: b.update(extra=1)), "unknown_field", "extra: not a field of payload v1"),
    ("duplicate-key", "ams-001", encode(example()).replace(b'"boot":3,', b'"boot":3,"boot":4,'), "not_json",
     "not JSON: key 'boot' appears twice"),
    ("oversized", "ams-001", oversized(), "oversized", None),
]

#: the seqs a whole-message rejection acknowledges: those that can be read within the contract
ENVELOPE_ACKED = {"node-mismatch": [[16, 17]], "bad-node-id": [[16, 17]], "missing-envelope-field": None,
                  "wrong-version": [[16, 17]], "version-as-string": [[16, 17]], "unknown-envelope-field": [[16, 17]],
                  "boot-as-float": None, "boot-beyond-contract": None, "boot-huge": None, "oversized": None}


@pytest.mark.parametrize("node_id, body, code, reason", [c[1:] for c in ENVELOPE], ids=[c[0] for c in ENVELOPE])
def test_a_broken_envelope_dead_letters_the_whole_message(gateway, node, acks, node_id, body, code, reason, request):
    topic = f"meetkit/{node_id}/up"
    node.publish(topic, body)
    gateway.wait_committed(1)
    with gateway.store() as s:
        c = s.counts()
        (dl,) = s.dead_letters()
        counters = s.counters()
    assert (c.records, c.readings) == (0, 0)
    assert (dl.topic, dl.payload, dl.code) == (topic, body[:4096], code)
    if reason is not None:
        assert dl.reason == reason
    assert counters == {f"rejected.{code}": 1}
    assert c.rejected == {code: 1}
    case = request.node.callspec.id
    if case in ENVELOPE_ACKED and ENVELOPE_ACKED[case] is not None:
        (ack,) = acks.wait(f"meetkit/{node_id}/ack", 1)
        assert ack["seq"] == ENVELOPE_ACKED[case]


def test_no_acknowledgement_carries_a_boot_outside_the_contract(gateway, node, acks):
    """A batch rejected for its boot is kept, but the node is not told: an acknowledgement for a
    boot no node can have would be out of contract (a good batch after it is, as a marker)."""
    node.publish("meetkit/ams-001/up", bad(lambda b: b.update(boot=2**40)))
    node.publish("meetkit/ams-001/up", batch(boot=5, seqs=[0]))
    (ack,) = acks.wait("meetkit/ams-001/ack", 1)
    assert (ack["boot"], ack["seq"]) == (5, [[0, 0]])


def test_oversized_reason_says_the_size_and_the_limit(gateway, node):
    body = encode(batch(seqs=range(60)))
    node.publish("meetkit/ams-001/up", body)
    gateway.wait_committed(1)
    with gateway.store() as s:
        (dl,) = s.dead_letters()
    assert dl.reason == f"{len(body)} bytes, the limit is 4096 (kept the first 4096 of {len(body)} bytes)"
    assert dl.payload == body[:4096] and dl.size == 4096


# -- records refused on their own ---------------------------------------------------------------------

RECORD = [
    # id, change of record 17, code, reason, its seq acknowledged
    ("missing-record-field", lambda b: b["recs"][1].pop("dur"), "missing_field", "recs[1].dur: missing", True),
    ("negative-seq", rec(1, "seq", -1), "out_of_range", f"recs[1].seq: -1 is outside 0..{2**30 - 1}", False),
    ("seq-beyond-contract", rec(1, "seq", INT_MAX), "implausible", f"recs[1].seq: {INT_MAX} is outside 0..{2**30 - 1}",
     False),
    ("zero-dur", rec(1, "dur", 0), "out_of_range", f"recs[1].dur: 0 is outside 1..3900", True),
    ("dur-beyond-any-interval", rec(1, "dur", 10**9), "implausible", "recs[1].dur: 1000000000 is outside 1..3900", True),
    ("up-beyond-contract", rec(1, "up", 2**40), "implausible", f"recs[1].up: {2**40} is outside 0..{2**30 - 1}", True),
    ("seq-as-string", rec(1, "seq", "17"), "wrong_type", "recs[1].seq: must be an integer, got a string", False),
    ("ts-as-string", rec(1, "ts", "2026-11-24T08:00:00Z"), "wrong_type", "recs[1].ts: must be an integer, got a string",
     True),
    ("ts-zero", rec(1, "ts", 0), "implausible", None, True),
    ("ts-2100", rec(1, "ts", 4102444800), "implausible", None, True),
    ("ts-2-62", rec(1, "ts", 2**62), "implausible", None, True),
    ("ts-1e13", rec(1, "ts", 10**13), "implausible", None, True),
    # its seq is 16: the acknowledgement names 16 once (both records are held)
    ("seq-backwards", rec(1, "seq", 16), "bad_value", "recs[1].seq: 16 after 16; records go oldest first, one seq each",
     False),
    ("flags-not-an-object", rec(1, "f", ["rh_high"]), "wrong_type", "recs[1].f: must be an object, got an array", True),
    ("err-negative", rec(1, "err", {"pm": -2}), "out_of_range", f"recs[1].err.pm: -2 is outside 0..{INT_MAX}", True),
    ("record-not-an-object", lambda b: b["recs"].__setitem__(1, 17), "wrong_type",
     "recs[1]: must be an object, got an integer", False),
]


@pytest.mark.parametrize("change, code, reason, acked", [c[1:] for c in RECORD], ids=[c[0] for c in RECORD])
def test_a_bad_record_is_refused_alone(gateway, node, acks, change, code, reason, acked):
    body = bad(change)
    node.publish("meetkit/ams-001/up", body)
    gateway.wait_committed(1)
    with gateway.store() as s:
        counts = s.counts()
        (dl,) = s.dead_letters()
        counters = s.counters()
        untimed = s.untimed()
    # record 16 is stored whole (pm1, pm25 null and flagged, temp); without record 17 its start is unknown
    assert (counts.records, counts.readings, untimed) == (1, 3, 1)
    assert (dl.topic, dl.code, dl.node) == ("meetkit/ams-001/up", code, "ams-001")
    if reason is not None:
        assert dl.reason == reason
    # the dead letter is a batch of the envelope and the refused record as received: replayable
    doc = json.loads(dl.payload)
    sent = json.loads(body)
    assert {k: v for k, v in doc.items() if k != "recs"} == {k: v for k, v in sent.items() if k != "recs"}
    assert doc["recs"] == [sent["recs"][1]]
    assert counters == {"batches": 1, "records": 1, f"refused_records.{code}": 1}
    (ack,) = acks.wait("meetkit/ams-001/ack", 1)
    assert ack["seq"] == ([[16, 17]] if acked else [[16, 16]])


def test_implausible_times_name_the_date_and_the_gateway_clock(gateway, node):
    node.publish("meetkit/ams-001/up", bad(rec(1, "ts", 10**13)))
    node.publish("meetkit/ams-001/up", bad(lambda b: (b["recs"][1].update(ts=0), b.update(boot=4))))
    gateway.wait_committed(2)
    with gateway.store() as s:
        past, future = s.dead_letters()  # newest first
    assert future.reason.startswith("recs[1].ts: 10000000000000 (318857-05-20T17:46:40Z) is ")
    assert "days past the gateway's clock" in future.reason and "the node's clock (or the gateway's) is wrong" in future.reason
    assert past.reason == ("recs[1].ts: 0 (1970-01-01T00:00:00Z) is before 2026-01-01, when no meetkit node "
                           "measured yet: the node's clock is wrong")


def test_a_poisoned_record_costs_only_itself(gateway, node, acks):
    """The audit's case: a 12-record batch whose record 6 is broken (here: a time ten thousand
    years ahead) stores the 11 others, keeps record 6 as a dead letter and acknowledges all 12."""
    doc = batch(seqs=range(12))
    doc["recs"][6]["ts"] = 10**13
    node.publish("meetkit/ams-001/up", doc)
    gateway.wait_committed(1)
    with gateway.store() as s:
        stored = sorted({r.seq for r in s.readings(since=0)})
        (dl,) = s.dead_letters()
    assert stored == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert [r["seq"] for r in json.loads(dl.payload)["recs"]] == [6]
    (ack,) = acks.wait("meetkit/ams-001/ack", 1)
    assert ack["seq"] == [[0, 11]]


# -- values refused on their own ---------------------------------------------------------------------

VALUE = [
    # id, change, quantity refused, code, reason
    ("missing-unit", lambda b: b["units"].pop("LZeq"), "LZeq", "missing_field", "units.LZeq: missing, recs[1] has LZeq"),
    ("impossible-max", rec(1, "LZeq", [55.2, 48.1, 812.0, 60]), "LZeq", "out_of_range",
     "recs[1].LZeq: max 812 is outside -50..194 dB, what can be measured"),
    ("negative-pm", rec(1, "pm25", [-1, -3, 7, 58]), "pm25", "out_of_range",
     "recs[1].pm25: avg -1 is outside 0..65535 ug/m3, what can be measured"),
    ("rh-above-100", rec(1, "rh", [101.5, 99.0, 103.0, 12]), "rh", "out_of_range",
     "recs[1].rh: avg 101.5 is outside 0..100 %, what can be measured"),
    ("value-as-number", rec(1, "rh", 81.2), "rh", "wrong_type", "recs[1].rh: must be [avg, min, max, n] or null, got a number"),
    ("n-as-bool", rec(1, "rh", [81.2, 80.9, 81.5, True]), "rh", "wrong_type", "recs[1].rh n: must be an integer, got a boolean"),
    ("three-elements", rec(1, "rh", [81.2, 80.9, 81.5]), "rh", "bad_value", "recs[1].rh: must be [avg, min, max, n], got 3 elements"),
    ("min-above-max", rec(1, "rh", [81.2, 85.0, 81.5, 12]), "rh", "bad_value", "recs[1].rh: min 85 is above max 81.5"),
    ("wrong-unit", lambda b: b["units"].update(press="Pa"), "press", "bad_value",
     "units.press: 'Pa', payload v1 measures press in 'hPa'"),
    ("cov-above-one", rec(1, "cov", 1.2), "cov", "out_of_range", "recs[1].cov: 1.2 is outside 0..1, what can be measured"),
    ("cov-negative", rec(1, "cov", -0.1), "cov", "out_of_range", "recs[1].cov: -0.1 is outside 0..1, what can be measured"),
    ("cov-as-array", rec(1, "cov", [1, 1, 1, 60]), "cov", "wrong_type", "recs[1].cov: must be a number or null, got an array"),
    ("cov-wrong-unit", lambda b: b["units"].update(cov="%"), "cov", "bad_value", "units.cov: '%', payload v1 measures cov in '1'"),
    ("LA10-as-string", rec(1, "LA10", "58.4"), "LA10", "wrong_type", "recs[1].LA10: must be a number or null, got a string"),
    ("LA50-as-array", rec(1, "LA50", [53.9, 50.0, 57.0, 60]), "LA50", "wrong_type",
     "recs[1].LA50: must be a number or null, got an array"),
    ("LA90-as-bool", rec(1, "LA90", True), "LA90", "wrong_type", "recs[1].LA90: must be a number or null, got a boolean"),
    ("LA10-infinite", lambda b: None, "LA10", "out_of_range", "recs[1].LA10: inf is not a finite number"),
    ("LAeq-min-above-max", rec(1, "LAeq", [55.2, 67.1, 48.3, 60]), "LAeq", "bad_value", "recs[1].LAeq: min 67.1 is above max 48.3"),
    ("LAeq-as-number", rec(1, "LAeq", 55.2), "LAeq", "wrong_type", "recs[1].LAeq: must be [avg, min, max, n] or null, got a number"),
    ("LAeq-negative-n", rec(1, "LAeq", [55.2, 48.3, 67.1, -1]), "LAeq", "out_of_range", f"recs[1].LAeq n: -1 is outside 0..{INT_MAX}"),
    ("LZeq-as-string", rec(1, "LZeq", "63.8"), "LZeq", "wrong_type",
     "recs[1].LZeq: must be a number, [avg, min, max, n] (firmware 0.1.0) or null, got a string"),
    ("LZeq-impossible", rec(1, "LZeq", 250.5), "LZeq", "out_of_range", "recs[1].LZeq: 250.5 is outside -50..194 dB, what can be measured"),
    ("LZeq-old-form-min-above-max", rec(1, "LZeq", [55.2, 67.3, 48.1, 60]), "LZeq", "bad_value",
     "recs[1].LZeq: min 67.3 is above max 48.1"),
    ("LZeq-old-form-zero-n", rec(1, "LZeq", [55.2, 48.1, 67.3, 0]), "LZeq", "out_of_range", f"recs[1].LZeq n: 0 is outside 1..{INT_MAX}"),
    ("noise-unit-missing", lambda b: b["units"].pop("LA90"), "LA90", "missing_field", "units.LA90: missing, recs[1] has LA90"),
]


def _value_case(case: str, change: Callable[[dict[str, Any]], Any]) -> bytes:
    if case == "LA10-infinite":
        return encode(example()).replace(b'"LA10":58.4', b'"LA10":1e400')
    return bad(change)


@pytest.mark.parametrize("case, change, quantity, code, reason", VALUE, ids=[c[0] for c in VALUE])
def test_an_impossible_value_is_refused_and_its_record_kept(gateway, node, acks, case, change, quantity, code, reason):
    body = _value_case(case, change)
    node.publish("meetkit/ams-001/up", body)
    gateway.wait_committed(1)
    with gateway.store() as s:
        readings = {(r.seq, r.quantity): r for r in s.readings()}
        (dl,) = s.dead_letters()
        counters = s.counters()
    full = set(payload.QUANTITIES)
    assert {q for (seq, q) in readings if seq == 17} == full
    refused = readings[17, quantity]
    assert (refused.avg, refused.min, refused.max, refused.n) == (None, None, None, None)
    assert "refused" in refused.flag_names
    for q in full - {quantity}:  # the record's other values are as sent
        assert readings[17, q].avg is not None and "refused" not in readings[17, q].flag_names, q
    assert {seq for (seq, _) in readings} == {16, 17}
    assert (dl.code, dl.reason) == (code, reason + " (the record was stored without it)")
    assert json.loads(dl.payload)["recs"] == [json.loads(body)["recs"][1]]
    assert counters == {"batches": 1, "records": 2, f"refused_values.{code}": 1}
    (ack,) = acks.wait("meetkit/ams-001/ack", 1)
    assert ack["seq"] == [[16, 17]]


def test_a_field_of_no_quantity_is_refused_and_the_rest_kept(gateway, node):
    node.publish("meetkit/ams-001/up", bad(rec(1, "LCeq", 61.0)))
    gateway.wait_committed(1)
    with gateway.store() as s:
        readings = {(r.seq, r.quantity) for r in s.readings()}
        (dl,) = s.dead_letters()
    assert {q for (seq, q) in readings if seq == 17} == set(payload.QUANTITIES)
    assert (dl.code, dl.reason) == ("unknown_field", "recs[1].LCeq: not a field of payload v1 (the record was stored "
                                                     "without it)")


def test_an_unknown_flag_is_refused_and_the_value_kept(gateway, node):
    node.publish("meetkit/ams-001/up", bad(rec(1, "f", {"LAeq": ["overload", "clipped"]})))
    gateway.wait_committed(1)
    with gateway.store() as s:
        laeq = {r.seq: r for r in s.readings(quantity="LAeq")}[17]
        (dl,) = s.dead_letters()
    assert (laeq.avg, laeq.flag_names) == (55.2, ("overload",))
    assert dl.reason.startswith('recs[1].f.LAeq: "clipped" is not a flag (missing, checksum, warmup')


# -- values outside the rated range, kept ----------------------------------------------------------

RANGE = [
    # the New Year's Eve case: a PMS5003 in fireworks smoke
    ("pm10-in-smoke", rec(1, "pm10", [2150.0, 1210.0, 3020.0, 58]), "pm10", 2150.0),
    ("temp-above-bme280", rec(1, "temp", [91.5, 88.0, 92.0, 12]), "temp", 91.5),
    ("temp-below-bme280", rec(1, "temp", [-41.0, -42.0, -40.5, 12]), "temp", -41.0),
    ("LA90-above-140", rec(1, "LA90", 141), "LA90", 141.0),
    ("LAeq-max-above-140", rec(1, "LAeq", [55.2, 48.3, 141.0, 60]), "LAeq", 55.2),
    ("LZeq-150", rec(1, "LZeq", 150.5), "LZeq", 150.5),
    ("press-1150", rec(1, "press", [1150.0, 1149.0, 1151.0, 12]), "press", 1150.0),
]


@pytest.mark.parametrize("change, quantity, avg", [c[1:] for c in RANGE], ids=[c[0] for c in RANGE])
def test_a_value_outside_the_rated_range_is_kept_and_flagged(gateway, node, change, quantity, avg):
    node.publish("meetkit/ams-001/up", bad(change))
    gateway.wait_committed(1)
    with gateway.store() as s:
        r = {(g.seq, g.quantity): g for g in s.readings()}[17, quantity]
        counts = s.counts()
        counters = s.counters()
    assert r.avg == avg and "range" in r.flag_names
    assert counts.dead_letters == 0
    assert counters == {"batches": 1, "records": 2, "flagged.range": 1}


def test_the_unit_of_a_quantity_no_record_has_takes_nothing(gateway, node):
    node.publish("meetkit/ams-001/up", bad(lambda b: b["units"].update(LCeq="dB")))
    gateway.wait_committed(1)
    with gateway.store() as s:
        assert s.counts().dead_letters == 0
        assert s.counters() == {"batches": 1, "records": 2}


# -- status and the stream around bad input ------------------------------------------------------------

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


def test_a_retained_message_is_taken_once(gateway_config, broker, node):
    """A retained message on an up topic (no node publishes one: a misconfigured client) comes
    again at every new subscription; the gateway takes it once, good or bad."""
    node.publish("meetkit/ams-001/up", b"retained garbage", retain=True)
    node.publish("meetkit/ams-002/up", batch(node="ams-002", seqs=[0]), retain=True)
    for run in range(3):  # each start is a new connection, and the broker replays both
        g = Running(gateway_config).wait_subscribed()
        try:
            wait_for(lambda: g.gateway.writer.committed >= 2, what="both retained messages")
        finally:
            g.stop()
    with Store(gateway_config.store.path, readonly=True) as s:
        assert s.counts().dead_letters == 1
        assert s.counts().records == 1
        c = s.counters()
    assert (c["rejected.not_json"], c["batches"], c["retained_again"]) == (1, 1, 4)


def test_metrics_count_what_was_refused_alone(gateway, node):
    import urllib.request

    from meetkit_gateway.http import StatusServer

    doc = example()
    doc["recs"][1]["pm25"] = [-1, -3, 7, 58]  # impossible: the value refused
    doc["recs"][1]["pm10"] = [2150.0, 1210.0, 3020.0, 58]  # beyond the rating: kept, flagged
    node.publish("meetkit/ams-001/up", doc)
    node.publish("meetkit/ams-001/up", bad(lambda b: (b["recs"][1].update(ts=0), b.update(boot=4))))
    gateway.wait_committed(2)
    with StatusServer(gateway.cfg.store.path, port=0, cache_s=0) as srv:
        with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as r:
            fams = parse_exposition(r.read().decode())
    assert sample(fams, "meetkit_values_refused_total", code="out_of_range") == 1
    assert sample(fams, "meetkit_values_flagged_total", flag="range") == 1
    assert sample(fams, "meetkit_records_refused_total", code="implausible") == 1
    assert sample(fams, "meetkit_dead_letters") == 2


def test_a_wired_board_status_without_a_signal_is_taken(gateway, node):
    """An Ethernet board has no Wi-Fi signal: its status says "rssi":null (firmware/lib/uplink.py)."""
    node.publish("meetkit/poe-01/status", {"v": 1, "node": "poe-01", "boot": 2, "online": True, "fw": "0.2.0",
                                           "up": 30, "rssi": None})
    gateway.wait_committed(1)
    with gateway.store() as s:
        (n,) = s.nodes()
        assert (n.node, n.online, n.rssi, s.counts().dead_letters) == ("poe-01", True, None, 0)
