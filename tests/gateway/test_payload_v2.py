"""Payload v2 (docs/payload.md, "Payload v2"): a boot's envelope once per session, records as arrays
of fixed-point integers, deltas after a batch's first record. It says exactly what v1 says: the
same Batch out of the gateway for the same records, whichever version the node speaks, the
batches made by the firmware's own record module (firmware/lib/recline.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from meetkit_gateway import payload
from meetkit_gateway.payload import NoEnvelope
from meetkit_gateway.store import Store
from meetkit_gateway.store.rows import RECORD_COLUMNS, expand

from meetkit_tools.dev import spoolfile

from .conftest import Running, wait_for
from .test_payload_schema import validator

BATCH_V2_V, ACK_V = validator("batch_v2"), validator("ack")

NOW = time.time()


# the firmware's own record modules, as the node runs them (loaded once, under their firmware names)
recline = spoolfile.firmware_module("recline")
recv2 = spoolfile.firmware_module("recv2")

ENV = ('{"v":1,"node":"ams-001","boot":3,"fw":"0.2.0","board":"esp32-devkitc",'
       '"sensors":{"pm":"pms5003","climate":"bme280","mic":"ics43434"},'
       '"units":{"pm1":"ug/m3","pm25":"ug/m3","pm10":"ug/m3","temp":"degC","rh":"%","press":"hPa",'
       '"LAeq":"dB","LA10":"dB","LA50":"dB","LA90":"dB","LZeq":"dB","cov":"1"},')
ANCHOR_MS = 1795509840_437  # Unix ms at the boot's uptime 0


def parts(i: int, *, pm25: bool = True) -> list[tuple[str, Any]]:
    """One record's quantities as the samplers hand them: fixed-point integers at recline.DEC
    (varied by i, some negative), a summary as (avg, min, max, n)."""
    return [("pm1", (30 + i % 4 * 10 + i % 10, 20, 50 + 10 * i, 58)),
            ("pm25", (52 + 10 * i, 40, 70 + 20 * i, 58) if pm25 else None),
            ("pm10", (89, 60, 120 + 10 * i, 58 - i % 3)),
            ("temp", (-(i % 3) * 100 - (i % 7) * 10 - 5, -(i % 3 + 1) * 100 - 30, 40, 12)),
            ("rh", (8120 + i % 10, 8090, 8150, 12)), ("press", (101320 + i % 10, 101310, 101330, 12)),
            ("LAeq", (5500 + 100 * i + 10 * (i % 10), 4830, 6710 + 100 * i, 60)), ("LA10", 5840 + 100 * i),
            ("LA50", 5390), ("LA90", 4960), ("LZeq", 6380 - 100 * i), ("cov", 907 + 10 * (i % 10))]


def lines(n: int, timed: bool = True) -> tuple[list[Any], list[str]]:
    """n records of boot 3 from seq 16 as the node makes them (recline.record), and their keys."""
    keys = [k for k, _ in parts(0)]
    out = []
    for i in range(n):
        flags = {"pm25": ["rh_high"]} if i == 1 else {"LAeq": ["partial", "floor"]} if i == 3 else {}
        errs = {"pm": 2} if i == 2 else {}
        out.append(recline.record(3, 16 + i, 1795510800 + 60 * i if timed else None, 960 + 60 * i, 60,
                                  parts(i, pm25=i != 4), flags, errs, keys))
    return out, keys


def v1(ls: list[Any], keys: list[str], anchor: int | None) -> bytes:
    return (ENV + '"recs":[' + ",".join(recline.to_json(x, keys, anchor) for x in ls) + "]}").encode()


def v2(ls: list[Any], keys: list[str], anchor: int | None, envelope: bool = True, boot: int = 3,
       dropped: int = 0) -> bytes:
    """The batch the node makes of these lines (recv2.batch, into a buffer as big as the node's)."""
    buf = bytearray(4096)
    env = ENV.replace('"boot":3,', '"boot":%d,' % boot) if envelope else None
    n, size = recv2.batch(buf, boot, ls, env, keys, anchor, dropped)
    assert n == len(ls)
    return bytes(buf[:size])


@pytest.mark.parametrize("timed,anchor", [(True, ANCHOR_MS), (True, None), (False, ANCHOR_MS), (False, None)],
                         ids=["timed", "timed-no-t0", "untimed-anchored", "untimed"])
def test_v2_says_exactly_what_v1_says(timed, anchor):
    ls, keys = lines(6, timed)
    one = payload.parse_batch(v1(ls, keys, anchor), "ams-001", NOW)
    two = payload.parse_batch(v2(ls, keys, anchor), "ams-001", NOW)
    assert not one.refused and not two.refused
    assert two.records == one.records  # the same floats, flags, errors and times
    assert (two.fw, two.board, dict(two.sensors), dict(two.units)) == (one.fw, one.board, one.sensors, one.units)
    assert two.envelope is not None and two.envelope.keys == tuple(keys)
    assert two.records[4].values["pm25"] is None and two.records[3].flags["LAeq"] == ("partial", "floor")
    assert len(v2(ls, keys, anchor, envelope=False)) < len(v1(ls, keys, anchor)) / 2
    assert BATCH_V2_V.is_valid(json.loads(v2(ls, keys, anchor)))
    assert BATCH_V2_V.is_valid(json.loads(v2(ls, keys, anchor, envelope=False)))
    long = v2(ls, keys, anchor, envelope=False, dropped=4)  # the object form: it has more to say
    assert BATCH_V2_V.is_valid(json.loads(long)) and long.startswith(b'{"v":2,"boot":3,"dropped":4,"recs":[[')
    b = payload.parse_batch(long, "ams-001", NOW, envelope_of=lambda n, b: two.envelope)
    assert b.records == one.records and b.dropped == 4


def test_a_batch_without_an_envelope_takes_the_kept_one_or_is_refused_for_want_of_it():
    ls, keys = lines(3)
    kept = payload.parse_batch(v2(ls[:1], keys, ANCHOR_MS), "ams-001", NOW).envelope
    later = payload.parse_batch(v2(ls[1:], keys, ANCHOR_MS, envelope=False), "ams-001", NOW,
                                envelope_of=lambda node, boot: kept if (node, boot) == ("ams-001", 3) else None)
    assert [r.seq for r in later.records] == [17, 18] and later.envelope is None
    assert later.records == payload.parse_batch(v1(ls[1:], keys, ANCHOR_MS), "ams-001", NOW).records
    with pytest.raises(NoEnvelope) as e:
        payload.parse_batch(v2(ls[1:], keys, ANCHOR_MS, envelope=False, boot=4), "ams-001", NOW,
                            envelope_of=lambda node, boot: None)
    assert e.value.boot == 4 and e.value.code == "no_envelope"


def test_a_record_that_cannot_be_read_refuses_itself_and_the_deltas_after_it():
    ls, keys = lines(4)
    doc = json.loads(v2(ls, keys, ANCHOR_MS))
    doc["recs"][1][4] = 3.1  # a float where v2 has integers
    b = payload.parse_batch(json.dumps(doc).encode(), "ams-001", NOW)
    assert [r.seq for r in b.records] == [16]
    # refused whole, their seqs not taken as read (so not acknowledged: the node keeps them)
    assert [(f.seq, f.whole) for f in b.refused] == [(None, True)] * 3 and b.held_seqs() == (16,)
    assert "recs[1] pm1[0]: must be an integer" in b.refused[0].reason
    assert "cannot be read after recs[1]" in b.refused[1].reason
    short = json.loads(v2(ls[:1], keys, ANCHOR_MS))
    short["recs"][0] = short["recs"][0][:5]
    (f,) = payload.parse_batch(json.dumps(short).encode(), "ams-001", NOW).refused
    assert f.whole and "recs[0]: 5 items, too few for the envelope's 12 keys" in f.reason


def test_a_value_out_of_range_is_refused_alone_as_in_v1():
    ls, keys = lines(1)
    doc = json.loads(v2(ls, keys, ANCHOR_MS))
    doc["recs"][0][4 + 4 * keys.index("rh")] = 12000  # 120 %RH (the summaries before it: four numbers each)
    b = payload.parse_batch(json.dumps(doc).encode(), "ams-001", NOW)
    (rec,) = b.records
    assert rec.values["rh"] is None and rec.flags["rh"] == ("refused",)
    (f,) = b.refused
    assert not f.whole and "rh" in f.reason
    # the dead letter is a v1 batch, to be replayed as it is
    body, _, _ = b.dead_letter()
    assert json.loads(body)["v"] == 1 and json.loads(body)["recs"][0]["rh"][0] == 120.0


def _rows(db: Path, node: str) -> list[tuple]:
    """Every reading of the node's records, timed or not, with its record's fields."""
    with Store(db, readonly=True) as s:
        recs = {r[0]: r[1:] for r in s.db.execute(
            "SELECT id, boot, seq, ts, up, dur, fw FROM records WHERE node = ?", (node,))}
        readings = expand(s.keys, s.db.execute(f"SELECT {RECORD_COLUMNS} FROM recs AS r WHERE r.id IN "
                                               f"({','.join('?' * len(recs))})", tuple(recs)))
        return sorted((*recs[g.record_id], g.quantity, g.avg, g.min, g.max, g.n, g.unit, g.flags) for g in readings)


def test_old_and_new_nodes_side_by_side_through_the_gateway(gateway_config, node, acks):
    """A v1 node and a v2 node send the same records: the store holds the same rows for both; the
    v2 node's later batches, without their envelope, are read with the one kept, also after the
    gateway restarted; a batch of a boot whose envelope the gateway never got is not stored, and the
    node is asked for it."""
    g = Running(gateway_config).wait_subscribed()
    ls, keys = lines(6)
    try:
        node.publish("meetkit/old-1/up", v1(ls[:3], keys, ANCHOR_MS).replace(b'"ams-001"', b'"old-1"'))
        node.publish("meetkit/new-1/up", v2(ls[:1], keys, ANCHOR_MS).replace(b'"ams-001"', b'"new-1"'))
        node.publish("meetkit/new-1/up", v2(ls[1:3], keys, ANCHOR_MS, envelope=False))
        got = acks.wait("meetkit/old-1/ack", 1) + acks.wait("meetkit/new-1/ack", 2)
        assert [a["seq"] for a in got] == [[[16, 18]], [16], [[17, 18]]]  # v2's in its compact form
        assert [("v" in a) for a in got] == [True, False, False] and all(ACK_V.is_valid(a) for a in got)
    finally:
        g.stop()
    g = Running(gateway_config).wait_subscribed()  # the envelope comes from the store now
    try:
        node.publish("meetkit/old-1/up", v1(ls[3:], keys, ANCHOR_MS).replace(b'"ams-001"', b'"old-1"'))
        node.publish("meetkit/new-1/up", v2(ls[3:], keys, ANCHOR_MS, envelope=False))
        node.publish("meetkit/new-1/up", v2(ls[:2], keys, ANCHOR_MS, envelope=False, boot=9))
        got = acks.wait("meetkit/old-1/ack", 2)[1:] + acks.wait("meetkit/new-1/ack", 4)[2:]
        assert {"db": g.gateway.db_id, "boot": 9, "seq": [], "env": 1} in got
        assert sorted(json.dumps(a["seq"]) for a in got if a["seq"]) == ["[[19, 21]]", "[[19, 21]]"]
        wait_for(lambda: len(_rows(g.cfg.store.path, "new-1")) == 6 * 12, what="the v2 node's rows")
        assert _rows(g.cfg.store.path, "new-1") == _rows(g.cfg.store.path, "old-1")
        with g.store() as s:
            counters = s.counters()
        assert counters.get("envelope_asked") == 1
        assert not [k for k in counters if k.startswith(("rejected.", "refused_"))]
    finally:
        g.stop()


def test_the_v2_examples_of_payload_md_are_the_gateways():
    """docs/payload.md's two v2 batches are read as written, the second with the first's envelope,
    and the compact acknowledgement shown is what the gateway publishes."""
    from .conftest import DOCS, json_examples

    first, second, ack = json_examples(DOCS / "payload.md")["Payload v2"]
    a = payload.parse_batch(first.encode(), "ams-001", 1795510800 + 3600)
    b = payload.parse_batch(second.encode(), "ams-001", 1795510800 + 3600, envelope_of=lambda n, boot: a.envelope)
    assert not a.refused and not b.refused and BATCH_V2_V.is_valid(json.loads(first))
    r17, r18 = a.records
    assert (r17.seq, r17.ts, r17.values["pm1"], r17.flags, dict(r17.err)) == \
        (17, 1795510800, (3.1, 2.0, 5.0, 58), {"pm25": ("rh_high",)}, {"pm": 2})
    assert (r18.seq, r18.ts, r18.up, r18.values["pm1"], r18.values["LA10"]) == \
        (18, 1795510860, 1080, (3.3, 2.0, 5.0, 58), (59.1, None, None, None))
    assert [(r.seq, r.ts) for r in b.records] == [(19, 1795510920)]
    from meetkit_gateway.acks import Ack
    doc = json.loads(ack)
    assert Ack("ams-001", 3, (17, 19, 20, 21), compact=True).payload(doc["db"]) == \
        json.dumps(doc, separators=(",", ":")).encode() and ACK_V.is_valid(doc)
