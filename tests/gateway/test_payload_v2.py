"""Payload v2 (docs/payload.md, "Payload v2"): a boot's envelope once per session, its records packed
(the spool's bits, in base64; "Packed records"), or as arrays of fixed-point integers (the array
form, still read). It says exactly what v1 says: the same Batch out of the gateway for the same
records, whichever version the node speaks, the batches made by the firmware's own modules
(firmware/lib/recline.py, recv2.py) and read by the gateway's own reader (gateway/packed.py)."""

from __future__ import annotations

import base64
import json
import random
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
BATCH_BUF = 1800 + 512  # node.py's batch buffer


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
       dropped: int = 0, size: int = BATCH_BUF) -> bytes:
    """The batch the node makes of these records (recv2.batch, into a buffer as big as the node's)."""
    buf = bytearray(size)
    env = ENV.replace('"boot":3,', '"boot":%d,' % boot) if envelope else None
    n, used = recv2.batch(buf, boot, ls, env, keys, anchor, dropped)
    assert n == len(ls)
    return bytes(buf[:used])



def scenario(seed: int = 11) -> list[tuple[int, list[Any], list[str], int | None]]:
    """A node's records over two boots, (boot, record, keys, anchor ms): 50 records of boot 3 with
    every sensor, the clock known from record 6 on (the first six untimed, sent with the anchor's
    time), nulls, flags, error counts, a seq gap (records dropped while the spool was full), values
    that jump, fall below zero and come back from null; then a new boot 4 of a board without a
    microphone (other keys, its own envelope), never timed."""
    rnd = random.Random(seed)
    out = []
    keys = [k for k, _ in parts(0)]
    seq = 0
    for i in range(50):
        p = parts(i, pm25=i % 9 != 4)
        if i % 13 == 7:
            p[keys.index("LAeq")] = ("LAeq", None)
        if i % 17 == 3:
            p[keys.index("LA10")] = ("LA10", None)
        if i in (20, 21):   # a jump and back
            p[keys.index("press")] = ("press", (95000 + rnd.randrange(9000), 94000, 104000, 12))
            p[keys.index("pm10")] = ("pm10", (rnd.randrange(9000), 0, 9999, 3))
        if i % 5 == 2:   # noise that wanders
            p[keys.index("LA90")] = ("LA90", 3000 + rnd.randrange(6000))
        flags = {"pm25": ["rh_high"]} if i % 6 == 1 else {"LAeq": ["partial", "floor"]} if i % 10 == 3 else \
            {"pm1": ["missing"], "climate" if False else "temp": ["warmup"]} if i == 30 else {}
        errs = {"pm": 1 + i % 4} if i % 8 == 2 else {"pm": 1, "climate": 3, "mic": 200} if i == 31 else {}
        seq += 1 if i != 40 else 9   # eight records dropped
        ts = 1795510800 + 60 * i if i >= 6 else None
        out.append((3, recline.record(3, seq, ts, 960 + 60 * i + i % 3, 60 + (i == 25), p, flags, errs, keys), keys,
                    ANCHOR_MS))
    keys4 = [k for k in keys if not k.startswith(("LA", "LZ", "cov"))]
    for i in range(17):
        p = [(k, v) for k, v in parts(i) if k in keys4]
        out.append((4, recline.record(4, i, None, 5 + 60 * i, 60, p, {"temp": ["partial"]} if i == 2 else {}, {}, keys4),
                    keys4, None))
    return out


def node_batches(recs: list[tuple[int, list[Any], list[str], int | None]], per: int,
                 bytes_waiting: bool = False) -> list[tuple[bytes, list[bytes]]]:
    """The records sent `per` a batch, a boot's first batch with its envelope, as the node does, and
    v1's batches of the same records (5 a batch: 15 would be over v1's 4 KB): [(v2, [v1, ...])]. bytes_waiting: the records as the outbox keeps them
    while they wait (recline.pack(rec, None))."""
    out = []
    boots = sorted({b for b, _, _, _ in recs})
    for boot in boots:
        mine = [(r, k, a) for b, r, k, a in recs if b == boot]
        keys, anchor = mine[0][1], mine[0][2]
        env = ENV.replace('"boot":3,', '"boot":%d,' % boot)
        if boot == 4:   # no microphone
            env = env.replace(',"mic":"ics43434"', "").replace(',"LAeq":"dB","LA10":"dB","LA50":"dB","LA90":"dB",'
                                                                '"LZeq":"dB","cov":"1"', "")
        rs = [r for r, _, _ in mine]
        i = 0
        while i < len(rs):
            chunk = rs[i:i + per]
            sent = [recline.pack(r, None) if bytes_waiting else r for r in chunk]
            buf = bytearray(BATCH_BUF)
            n, used = recv2.batch(buf, boot, sent, env if i == 0 else None, keys, anchor, 2 if i == per else 0)
            assert n == len(chunk), "a batch of 15 fits the node's buffer"
            ones = [(env + '"recs":[' + ",".join(recline.to_json(x, keys, anchor) for x in chunk[j:j + 5]) + "]}").encode()
                    for j in range(0, len(chunk), 5)]
            out.append((bytes(buf[:used]), ones))
            i += n
    return out


@pytest.mark.parametrize("per", [1, 5, 15])
def test_packed_batches_say_exactly_what_v1_says(per):
    """Every record of a scenario, sent 1, 5 or 15 a batch: each v2 batch is the Batch its v1 batch
    is, read with the envelope of the boot's first batch; the records waiting in the outbox as
    bytes make the same batches."""
    recs = scenario()
    kept: dict[int, payload.Envelope] = {}
    seen = []
    batches = node_batches(recs, per)
    assert batches == node_batches(recs, per, bytes_waiting=True)
    for two, ones in batches:
        doc = json.loads(two)
        assert BATCH_V2_V.is_valid(doc), two[:200]
        b2 = payload.parse_batch(two, "ams-001", NOW, envelope_of=lambda n, boot: kept.get(boot))
        b1s = [payload.parse_batch(one, "ams-001", NOW) for one in ones]
        if b2.envelope is not None:
            kept[b2.boot] = b2.envelope
            assert isinstance(doc, dict) and isinstance(doc["recs"], str)
        assert b2.records == tuple(r for b1 in b1s for r in b1.records) and b2.refused == ()
        assert not any(b1.refused for b1 in b1s)
        b1 = b1s[0]
        assert (b2.boot, b2.fw, b2.board, dict(b2.sensors), dict(b2.units)) == \
            (b1.boot, b1.fw, b1.board, dict(b1.sensors), dict(b1.units))
        if b2.envelope is None:
            assert len(two) < sum(map(len, ones)) / 4, "without the envelope, a quarter of v1's bytes or less"
        seen += [(b2.boot, r.seq) for r in b2.records]
    assert seen == [(b, r[1]) for b, r, _, _ in recs], "every record once, in order"
    # what the scenario holds, as v1 says it
    got = {(b, r.seq): r for two, _ in batches for b in [json.loads(two)[1] if two[:1] == b"[" else
                                                         json.loads(two)["boot"]]
           for r in payload.parse_batch(two, "ams-001", NOW, envelope_of=lambda n, boot: kept.get(boot)).records}
    assert got[(3, 1)].ts == (ANCHOR_MS + 960 * 1000 + 500) // 1000, "untimed: the anchor's time, as v1"
    assert got[(3, 5)].values["pm25"] is None and got[(3, 8)].values["LAeq"] is None
    assert got[(3, 31)].flags == {"pm1": ("missing",), "temp": ("warmup",)}
    assert dict(got[(3, 32)].err) == {"pm": 1, "climate": 3, "mic": 200}
    assert (3, 41) not in got and got[(3, 49)].seq == 49
    assert got[(4, 0)].ts is None and set(got[(4, 2)].values) == {"pm1", "pm25", "pm10", "temp", "rh", "press"}


def test_a_batch_holds_what_fits_and_the_rest_goes_in_the_next():
    """A buffer too small for all the records: the batch holds the first n, exactly, and those after
    go in the next batch, read with the envelope kept."""
    recs = [r for b, r, _, _ in scenario() if b == 3][:30]
    keys = [k for k, _ in parts(0)]
    buf = bytearray(700)
    n, used = recv2.batch(buf, 3, recs, ENV, keys, ANCHOR_MS, 0)
    assert 1 < n < 30 and used <= len(buf)
    first = payload.parse_batch(bytes(buf[:used]), "ams-001", NOW)
    n2, used2 = recv2.batch(buf, 3, recs[n:], None, keys, ANCHOR_MS, 0)
    second = payload.parse_batch(bytes(buf[:used2]), "ams-001", NOW, envelope_of=lambda n, b: first.envelope)
    want = [r for i in range(0, n + n2, 5)
            for r in payload.parse_batch(v1(recs[i:min(i + 5, n + n2)], keys, ANCHOR_MS), "ams-001", NOW).records]
    assert list(first.records + second.records) == want and n + n2 < 30


def test_the_envelope_says_how_each_key_is_coded():
    ls, keys = lines(2)
    b = payload.parse_batch(v2(ls, keys, ANCHOR_MS), "ams-001", NOW)
    assert b.envelope is not None and b.envelope.codes == tuple(recline._K[k] for k in keys)
    assert payload.Envelope.from_json(b.envelope.to_json()) == b.envelope, "kept in the store as it came"


def test_packed_records_that_cannot_be_read_are_refused_from_there_on_and_not_acknowledged():
    ls, keys = lines(6)
    doc = json.loads(v2(ls, keys, ANCHOR_MS))
    whole = base64.b64decode(doc["recs"])
    cut = dict(doc, recs=base64.b64encode(whole[:-3]).decode())   # the last record cut short
    b = payload.parse_batch(json.dumps(cut).encode(), "ams-001", NOW)
    assert [r.seq for r in b.records] == [16, 17, 18, 19, 20]
    (f,) = b.refused
    assert f.whole and f.seq is None and b.held_seqs() == (16, 17, 18, 19, 20)
    assert "recs: packed record 5: the bytes end inside a record" in f.reason
    body, code, _ = b.dead_letter()
    assert code == "bad_value" and json.loads(body)["recs"] == [cut["recs"]], "kept as received"
    for bad, why in (("not base64!", "not base64"), ("AAAAAAAAAAAA", "a code longer"),
                     (base64.b64encode(whole + b"\x01").decode(), "packed record 6")):
        b = payload.parse_batch(json.dumps(dict(doc, recs=bad)).encode(), "ams-001", NOW)
        assert b.refused[-1].whole and b.refused[-1].seq is None and why in b.refused[-1].reason, bad
    # an envelope without k cannot read packed records: one kept (of the array form) is asked for again
    old = payload.Envelope("0.2.0", "esp32-devkitc", {}, {"pm1": "ug/m3"}, ("pm1",), (1,), None, (1,))
    with pytest.raises(NoEnvelope) as e:
        payload.parse_batch(b'[2,3,"AAAA"]', "ams-001", NOW, envelope_of=lambda n, boot: old)
    assert "has no k" in e.value.reason
    no_k = json.loads(v2(ls, keys, ANCHOR_MS))
    del no_k["k"]
    b = payload.parse_batch(json.dumps(no_k).encode(), "ams-001", NOW)
    assert not b.records and "need the envelope's k" in b.refused[0].reason


def test_a_value_out_of_range_is_refused_alone_as_in_v1():
    ls, keys = lines(2)
    p = parts(0)
    p[keys.index("rh")] = ("rh", (12000, 11000, 12500, 12))  # 120 %RH
    ls[1] = recline.record(3, 17, 1795510860, 1020, 60, p, {}, {}, keys)
    b = payload.parse_batch(v2(ls, keys, ANCHOR_MS), "ams-001", NOW)
    assert b.records == payload.parse_batch(v1(ls, keys, ANCHOR_MS), "ams-001", NOW).records
    rec = b.records[1]
    assert rec.values["rh"] is None and rec.flags["rh"] == ("refused",)
    (f,) = b.refused
    assert not f.whole and "rh" in f.reason and b.held_seqs() == (16, 17)
    # the dead letter is a v1 batch, to be replayed as it is
    body, _, _ = b.dead_letter()
    assert json.loads(body)["v"] == 1 and json.loads(body)["recs"][0]["rh"][0] == 120.0


def test_a_batch_without_an_envelope_takes_the_kept_one_or_is_refused_for_want_of_it():
    ls, keys = lines(3)
    kept = payload.parse_batch(v2(ls[:1], keys, ANCHOR_MS), "ams-001", NOW).envelope
    later = payload.parse_batch(v2(ls[1:], keys, ANCHOR_MS, envelope=False), "ams-001", NOW,
                                envelope_of=lambda node, boot: kept if (node, boot) == ("ams-001", 3) else None)
    assert [r.seq for r in later.records] == [17, 18] and later.envelope is None
    assert later.records == payload.parse_batch(v1(ls[1:], keys, ANCHOR_MS), "ams-001", NOW).records
    long = v2(ls[1:], keys, ANCHOR_MS, envelope=False, dropped=4)  # the object form: it has more to say
    assert BATCH_V2_V.is_valid(json.loads(long)) and long.startswith(b'{"v":2,"boot":3,"dropped":4,"recs":"')
    b = payload.parse_batch(long, "ams-001", NOW, envelope_of=lambda n, b: kept)
    assert b.records == later.records and b.dropped == 4
    # the node says `dropped` whenever it is not 0: a batch without it (the short form, the envelope's
    # batch) says 0, as the firmware's v1 "dropped":0 does (the page and `nodes` show 0, not unknown)
    assert later.dropped == 0 and payload.parse_batch(v2(ls[:1], keys, ANCHOR_MS), "ams-001", NOW).dropped == 0
    with pytest.raises(NoEnvelope) as e:
        payload.parse_batch(v2(ls[1:], keys, ANCHOR_MS, envelope=False, boot=4), "ams-001", NOW,
                            envelope_of=lambda node, boot: None)
    assert e.value.boot == 4 and e.value.code == "no_envelope"


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
        acks.wait("meetkit/new-1/ack", 1)  # not in one commit with the next: one ack for both, then
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
    they are what the firmware makes of those records, and the compact acknowledgement shown is
    what the gateway publishes."""
    from .conftest import DOCS, json_examples

    first, second, ack = json_examples(DOCS / "payload.md")["Payload v2"]
    a = payload.parse_batch(first.encode(), "ams-001", 1795510800 + 3600)
    b = payload.parse_batch(second.encode(), "ams-001", 1795510800 + 3600, envelope_of=lambda n, boot: a.envelope)
    assert not a.refused and not b.refused and BATCH_V2_V.is_valid(json.loads(first))
    assert BATCH_V2_V.is_valid(json.loads(second))
    r17, r18 = a.records
    assert (r17.seq, r17.ts, r17.values["pm1"], r17.flags, dict(r17.err)) == \
        (17, 1795510800, (3.1, 2.0, 5.0, 58), {"pm25": ("rh_high",)}, {"pm": 2})
    assert (r18.seq, r18.ts, r18.up, r18.values["pm1"], r18.values["LA10"]) == \
        (18, 1795510860, 1080, (3.3, 2.0, 5.0, 58), (59.1, None, None, None))
    assert [(r.seq, r.ts) for r in b.records] == [(19, 1795510920)]
    # the array form's examples say the same records
    old_first, old_second = json_examples(DOCS / "payload.md")["The array form"]
    c = payload.parse_batch(old_first.encode(), "ams-001", 1795510800 + 3600)
    d = payload.parse_batch(old_second.encode(), "ams-001", 1795510800 + 3600, envelope_of=lambda n, boot: c.envelope)
    assert (c.records, d.records) == (a.records, b.records) and BATCH_V2_V.is_valid(json.loads(old_first))
    from meetkit_gateway.acks import Ack
    doc = json.loads(ack)
    assert Ack("ams-001", 3, (17, 19, 20, 21), compact=True).payload(doc["db"]) == \
        json.dumps(doc, separators=(",", ":")).encode() and ACK_V.is_valid(doc)


def test_array_records_that_cannot_be_read_refuse_themselves_and_the_deltas_after_them():
    """The array form (docs/payload.md, "The array form"), as nodes sent it before packed records."""
    from .conftest import DOCS, json_examples

    first, _ = json_examples(DOCS / "payload.md")["The array form"]
    doc = json.loads(first)
    doc["recs"].append([1, 0, 60, 0] + [0] * 33)   # record 19, like 18
    doc["recs"][1][4] = 3.1  # a float where v2 has integers
    b = payload.parse_batch(json.dumps(doc).encode(), "ams-001", 1795510800 + 3600)
    assert [r.seq for r in b.records] == [17]
    # refused whole, their seqs not taken as read (so not acknowledged: the node keeps them)
    assert [(f.seq, f.whole) for f in b.refused] == [(None, True)] * 2 and b.held_seqs() == (17,)
    assert "recs[1] pm1[0]: must be an integer" in b.refused[0].reason
    assert "cannot be read after recs[1]" in b.refused[1].reason
    short = json.loads(first)
    short["recs"] = [short["recs"][0][:5]]
    (f,) = payload.parse_batch(json.dumps(short).encode(), "ams-001", 1795510800 + 3600).refused
    assert f.whole and "recs[0]: 5 items, too few for the envelope's 12 keys" in f.reason
