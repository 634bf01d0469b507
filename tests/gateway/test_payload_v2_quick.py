"""The quick way through payload v2's packed records (payload._quick_packed, packed.quick_records)
and short batches (payload._plainly_valid_short) changes nothing a node or an operator sees: for
every batch the firmware makes, and for hostile ones (base64 cut short or garbled, bits that run
out, a code too long, padding not zero, values out of range, times not plausible), `parse_batch`
gives the same Batch, with the same records, values, flags, refusals and dead letter, or the same
rejection, as the checked way alone. And the firmware's batches do go the quick way (else the
gateway's ingest of v2 costs several times v1's again: python -m bench.payload_v2)."""

from __future__ import annotations

import base64
import json
import random
import time
from typing import Any, Callable

import pytest

from meetkit_gateway import packed, payload
from meetkit_gateway.payload import Batch, Rejected

from .test_payload_v2 import ANCHOR_MS, lines, node_batches, parts, recline, scenario, v2

NOW = time.time()
NODE = "ams-001"


def outcome(parse: Callable[[], Batch]) -> Any:
    """What the gateway makes of a batch: the Batch with its records' dicts in order, its dead
    letter and acknowledged seqs, or the rejection."""
    try:
        b = parse()
    except Rejected as e:
        return type(e).__name__, e.code, e.reason, getattr(e, "boot", None)
    except Exception as e:  # a bug is dead-lettered as `internal`: it must be the same bug
        return "raised", type(e)
    order = [(list(r.values.items()), list(r.flags.items()), list(r.err.items()),
              [type(x) for v in r.values.values() if v is not None for x in v]) for r in b.records]
    return b, order, b.dead_letter(), b.held_seqs()


def both(data: bytes, kept: dict[int, payload.Envelope], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The outcome of `parse_batch` (the quick way first), asserted equal to the checked way's."""
    envelope_of = lambda node, boot: kept.get(boot)  # noqa: E731
    got = outcome(lambda: payload.parse_batch(data, NODE, NOW, envelope_of=envelope_of))
    with monkeypatch.context() as m:
        m.setattr(payload, "_quick_packed", lambda *a: None)
        checked = outcome(lambda: payload._checked_batch(payload.decode(data, short_batch=True), NODE, NOW,
                                                         envelope_of))
    assert got == checked, data[:120]
    return got


def quick_took(data: bytes, kept: dict[int, payload.Envelope]) -> bool:
    """The batch's records were read the quick way (a short batch: the whole batch)."""
    if data[:1] == b"[":
        return payload._plainly_valid_short(data, NODE, NOW, lambda n, boot: kept.get(boot)) is not None
    doc = json.loads(data)
    env = kept.get(doc["boot"]) or payload.parse_batch(data, NODE, NOW).envelope
    return payload._quick_packed(doc["recs"], env, NOW) is not None


def firmware_batches(per: int) -> tuple[list[bytes], dict[int, payload.Envelope]]:
    """The scenario's v2 batches, `per` records a batch, and the envelopes they carry."""
    batches = [two for two, _ in node_batches(scenario(), per)]
    kept = {}
    for data in batches:
        env = payload.parse_batch(data, NODE, NOW, envelope_of=lambda n, boot: kept.get(boot)).envelope
        if env is not None:
            kept[json.loads(data)["boot"]] = env
    return batches, kept


@pytest.mark.parametrize("per", [1, 5, 15])
def test_firmware_batches_go_the_quick_way_and_say_what_the_checks_say(per, monkeypatch):
    batches, kept = firmware_batches(per)
    seen = 0
    for data in batches:
        b, *_ = both(data, kept, monkeypatch)
        assert not b.refused and quick_took(data, kept), data[:120]
        seen += len(b.records)
    assert seen == len(scenario()), "every record of both boots"


def _recs(data: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """The batch's object (None for the short form) and its packed records' bytes."""
    doc = json.loads(data)
    if isinstance(doc, list):
        return None, base64.b64decode(doc[2])
    return doc, base64.b64decode(doc["recs"])


def _with(doc: dict[str, Any] | None, boot: int, text: str) -> bytes:
    if doc is None:
        return json.dumps([2, boot, text], separators=(",", ":")).encode()
    return json.dumps(dict(doc, recs=text), separators=(",", ":")).encode()


def test_hostile_packed_records_end_as_the_checks_say(monkeypatch):
    """Bytes cut at every length, bits flipped, bytes added, base64 garbled: the same records
    taken, the same refusals (from the first record that cannot be read on), the same dead letter."""
    batches, kept = firmware_batches(5)
    rnd = random.Random(17)
    taken = refused = 0
    for data in batches[:3] + batches[-2:]:
        doc, raw = _recs(data)
        boot = 3 if doc is None and json.loads(data)[1] == 3 else (doc or {"boot": json.loads(data)[1]})["boot"]
        texts = [base64.b64encode(raw[:n]).decode() for n in range(len(raw))]
        for _ in range(40):
            b = bytearray(raw)
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            texts.append(base64.b64encode(bytes(b)).decode())
        texts += [base64.b64encode(raw + bytes([x])).decode() for x in (0, 1, 0x80, 0xFF)]
        good = base64.b64encode(raw).decode()
        texts += [good[:-1], good + "=", good.replace("A", "!", 1), good[:8] + " " + good[8:], "=" + good,
                  good + "AAAA", "AAAAAAAAAAAA", "é" + good]
        for text in texts:
            got = both(_with(doc, boot, text), kept, monkeypatch)
            if isinstance(got[0], Batch):
                taken += len(got[0].records)
                refused += len(got[0].refused)
    assert taken and refused, "some records read, some refused"


def test_packed_records_with_key_frames_are_read_as_the_checks_read_them(monkeypatch):
    """A key frame in a batch (the spool writes them, a node sends none): the quick way leaves it to
    the checked reader, which reads it."""
    ls, keys = lines(3)
    kept = {3: payload.parse_batch(v2(ls[:1], keys, ANCHOR_MS), NODE, NOW).envelope}
    for r in ls:
        r[2] = r[2] or 0
    text = base64.b64encode(b"".join(recline.pack(r, None)[1:] for r in ls)).decode()
    data = json.dumps([2, 3, text]).encode()
    b, *_ = both(data, kept, monkeypatch)
    assert [r.seq for r in b.records] == [16, 17, 18] and not quick_took(data, kept)


def _one(change: Callable[[list[tuple[str, Any]]], None], **record: Any) -> bytes:
    """Records 16..18 of boot 3, the second changed as `change` and `record` say, as the node sends them."""
    ls, keys = lines(3)
    p = parts(1)
    change(p)
    fields = dict(dict(zip(("boot", "seq", "ts", "up", "dur"), ls[1][:5])), **record)
    ls[1] = recline.record(fields["boot"], fields["seq"], fields["ts"], fields["up"], fields["dur"], p,
                           {}, {}, keys)
    return v2(ls, keys, ANCHOR_MS)


def _set(key: str, value: Any) -> Callable[[list[tuple[str, Any]]], None]:
    def change(p: list[tuple[str, Any]]) -> None:
        p[[k for k, _ in p].index(key)] = (key, value)
    return change


@pytest.mark.parametrize("data", [
    _one(_set("rh", (12000, 11000, 12500, 12))),   # 120 %RH: refused
    _one(_set("pm1", (12000, 9000, 15000, 58))),   # 1200 ug/m3: kept, flagged range
    _one(_set("temp", (-10000, -10000, -9000, 12))),   # -100 degC: refused
    _one(_set("temp", (2000, 2100, 1900, 12))),   # min above max
    _one(_set("pm10", (100, 90, 110, 0))),   # n 0 of a PM summary
    _one(_set("LAeq", (5000, 4000, 6000, 0))),   # n 0 of LAeq: taken (under a second of audio)
    _one(_set("cov", 1200)),   # a fraction of 1.2
    _one(_set("LA10", -6000)),   # -60 dB: refused
    _one(_set("LA50", 15000)),   # 150 dB: range
    _one(_set("pm25", None)),   # a null in the middle: the next record's value whole
    _one(lambda p: None, ts=1795510800 + 400 * 86400),   # far past the gateway's clock
    _one(lambda p: None, ts=1700000000),   # before 2026
    _one(lambda p: None, dur=4000),
    _one(lambda p: None, up=2**30 + 5),
    _one(lambda p: None, seq=2**30 - 1),   # the last seq a node may send, then one past it
], ids=["rh", "pm1-range", "temp", "min-max", "n0", "laeq-n0", "cov", "la10", "la50-range", "null",
        "future", "past", "dur", "up", "seq"])
def test_values_and_times_the_checks_refuse_or_flag_are_the_checks(data, monkeypatch):
    kept = {3: payload.parse_batch(v2(lines(1)[0], lines(1)[1], ANCHOR_MS), NODE, NOW).envelope}
    got = both(data, kept, monkeypatch)
    short = json.dumps([2, 3, json.loads(data)["recs"]]).encode()
    assert both(short, kept, monkeypatch)[1:] == got[1:]


@pytest.mark.parametrize("data", [
    b'[2, 3, "AAAA"]', b'[2,3,""]', b'[2,3,"AAAA","AAAA"]', b'[2,true,"AAAA"]', b'[2,1073741824,"AAAA"]',
    b'[2,-1,"AAAA"]', b'[2.0,3,"AAAA"]', b'[2,3,"\\u00e9AAA"]', b'[2,3,null]', b'[2,3,"AAAA"', b'[2,3,"\xff"]',
    b'[2,4,"AAAA"]', b'[2,3,"AAAA"] ', b'[3,3,"AAAA"]', b"[2,3]", b'[2,3,["AAAA"]]',
])
def test_short_batches_out_of_the_ordinary_end_as_the_checks_say(data, monkeypatch):
    """The short form's quick reading (msgspec) takes no more than the checks' json.loads does."""
    ls, keys = lines(2)
    kept = {3: payload.parse_batch(v2(ls, keys, ANCHOR_MS), NODE, NOW).envelope}
    both(data, kept, monkeypatch)
    good = v2(ls, keys, ANCHOR_MS, envelope=False)
    assert quick_took(good, kept) and both(good.replace(b",", b", "), kept, monkeypatch)[0].records


def test_an_envelope_the_checks_refuse_values_of_is_left_to_them(monkeypatch):
    """Keys of no quantity, a wrong unit, a summary coded as a plain number: the quick way does not
    take the envelope, the checks refuse what they refuse."""
    ls, keys = lines(3)
    for change in ((b'"LZeq":"dB"', b'"LZeq":"dBA"'), (b'"k":[325,', b'"k":[5,'), (b'"keys":["pm1"', b'"keys":["pm0"'),
                   (b'"units":{"pm1":"ug/m3"', b'"units":{"pm0":"ug/m3","pm1":"ug/m3"')):
        data = v2(ls, keys, ANCHOR_MS).replace(*change)
        assert data != v2(ls, keys, ANCHOR_MS)
        got = both(data, {}, monkeypatch)
        env = payload.parse_batch(data, NODE, NOW).envelope if isinstance(got[0], Batch) else None
        if env is not None and change[0] != b'"units":{"pm1":"ug/m3"':
            assert payload._quick_envelope(env) is None


def test_the_tables_give_what_the_reader_gives():
    """Every code the tables hold reads as the code-at-a-time reader reads it."""
    q = packed.quick((325, 291, 324, 290, 377, 7, 0))
    assert q is packed.quick((325, 291, 324, 290, 377, 7, 0)), "made once a shape"
    for text, v in list(packed._SIGNED.items())[::37]:
        assert text is not None
        bits = packed._Bits(b"")
        bits.bits = text
        k = len(text) - 2 * (len(text) - len(text.lstrip("0"))) - 1
        assert bits.zg(k) == v and bits.left() == 0 and packed._NEGATED[text] == -v
    for text, u in packed._UNSIGNED.items():
        assert text is not None and packed._unsigned(text) == u and packed._COUNTS[text] == u + 1
