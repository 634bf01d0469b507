"""The quick way through a batch (payload._plainly_valid_batch) changes nothing a node or an operator
sees: for every payload, valid or not, `parse_batch` gives the same Batch (with the same refusals
and flags), or the same rejection code and reason, as the full field-by-field checks alone. Batches as the firmware sends them do go the
quick way (else the ingest rate of bench/gateway.py falls back to what it was)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from meetkit_gateway import payload
from meetkit_gateway.payload import Batch, Rejected
from meetkit_tools.dev import batches

from .conftest import EXAMPLE, OLD_FIRMWARE, batch, encode
from .test_rejects import ENVELOPE, RANGE, RECORD, VALUE, _value_case, bad

NOW = time.time()


def outcome(parse: Any, data: bytes, node: str) -> Batch | tuple[str, str] | tuple[str, type]:
    try:
        return parse(data, node, NOW)
    except Rejected as e:
        return e.code, e.reason
    except Exception as e:  # a bug is dead-lettered as `internal`: it must be the same bug
        return "raised", type(e)


def full(data: bytes, node: str, now: float = NOW) -> Batch:
    return payload._checked_batch(payload.decode(data), node, now)


def same(data: bytes, node: str = "ams-001") -> Batch | tuple[str, Any]:
    got = outcome(payload.parse_batch, data, node)
    assert got == outcome(full, data, node)
    return got


FIRMWARE = [m for s in batches.streams(3, 30, 1795500000) for m in s.messages]


@pytest.mark.parametrize("doc", [EXAMPLE, OLD_FIRMWARE, batch(seqs=range(5)), batch(ts0=None)],
                         ids=["example", "old-firmware", "five-records", "no-clock"])
def test_valid_batches_go_the_quick_way_and_come_out_the_same(doc):
    data = encode(doc)
    quick = payload._plainly_valid_batch(data, doc["node"], NOW)
    assert quick is not None
    assert quick == full(data, doc["node"])
    assert [type(v) for r in quick.records for v in r.values.values() if v is not None] == \
        [payload.Value for r in quick.records for v in r.values.values() if v is not None]


def test_firmware_batches_go_the_quick_way():
    for data in FIRMWARE:
        node = json.loads(data)["node"]
        quick = payload._plainly_valid_batch(data, node, NOW)
        assert quick is not None and quick == full(data, node)


@pytest.mark.parametrize("node_id, data", [c[1:3] for c in ENVELOPE], ids=[c[0] for c in ENVELOPE])
def test_every_rejection_is_the_same(node_id, data):
    got = same(data, node_id)
    assert not isinstance(got, Batch)
    assert payload._plainly_valid_batch(data, node_id, NOW) is None


REFUSING = ([(c[0], bad(c[1])) for c in RECORD] + [(c[0], _value_case(c[0], c[1])) for c in VALUE]
            + [(c[0], bad(c[1])) for c in RANGE])


@pytest.mark.parametrize("data", [c[1] for c in REFUSING], ids=[c[0] for c in REFUSING])
def test_refusals_and_range_flags_come_from_the_full_checks_only(data):
    got = same(data)
    assert isinstance(got, Batch) and (got.refused or any(payload.RANGE in fl for r in got.records
                                                          for fl in r.flags.values()))
    assert payload._plainly_valid_batch(data, "ams-001", NOW) is None


DUPLICATES = [
    (b'"boot":3,', b'"boot":3,"boot":3,', "boot"),
    (b'"pm":"pms5003"', b'"pm":"pms5003","pm":"pms5003"', "pm"),
    (b'"temp":"degC"', b'"temp":"degC","temp":"degC"', "temp"),
    (b'"seq":17,', b'"seq":17,"seq":17,', "seq"),
    (b'"cov":1,', b'"cov":1,"cov":1,', "cov"),
    (b'"f":{"pm25":["rh_high"]}', b'"f":{"pm25":["rh_high"],"pm25":["rh_high"]}', "pm25"),
    (b'"err":{"pm":2}', b'"err":{"pm":2,"pm":2}', "pm"),
]


@pytest.mark.parametrize("old, new, key", DUPLICATES, ids=[d[2] + str(i) for i, d in enumerate(DUPLICATES)])
def test_a_key_twice_anywhere_is_still_rejected(old, new, key):
    data = encode(EXAMPLE)
    assert old in data
    assert same(data.replace(old, new, 1)) == ("not_json", f"not JSON: key {key!r} appears twice")


def test_a_colon_inside_a_string_is_taken_by_the_full_checks():
    doc = copy.deepcopy(EXAMPLE)
    doc["fw"] = "0.2.0:dev"
    doc["sensors"]["pm"] = "pms5003:rev2"
    got = same(encode(doc))
    assert isinstance(got, Batch) and got.fw == "0.2.0:dev"


ODD = [None, True, False, 0, -1, 1, 1.5, 2**63, 1e400, "", "x", [], [1, 2, 3, 4], {}, {"a": 1}, [None] * 4,
       [1.0, 2.0, 1.0, 5], [1.0, 0.5, 2.0, 0], [1.0, 0.5, 2.0, 1.5], [True, 0, 1, 1]]


def mutants() -> list[tuple[str, bytes]]:
    """EXAMPLE with one field (of the envelope, a record, a value, flags, err) set to each odd value,
    or removed."""
    out = []

    def add(where: str, change: Any) -> None:
        doc = copy.deepcopy(EXAMPLE)
        change(doc)
        out.append((where, encode(doc)))

    def setter(path: tuple[Any, ...], key: Any, value: Any) -> Any:
        def change(doc: dict[str, Any]) -> None:
            target = doc
            for p in path:
                target = target[p]
            if value is KeyError:
                if isinstance(target, list) or key in target:
                    del target[key]
            else:
                target[key] = value
        return change

    places: list[tuple[tuple[Any, ...], Any]] = [((), k) for k in (*EXAMPLE, "dropped", "extra")]
    places += [(("sensors",), "pm"), (("units",), "rh"), (("units",), "LCeq"), (("recs",), 0)]
    places += [(("recs", 1), k) for k in (*EXAMPLE["recs"][1], "LCeq", "pm25")]
    places += [(("recs", 1, "f"), "pm25"), (("recs", 1, "f"), "LCeq"), (("recs", 1, "err"), "pm")]
    for path, key in places:
        for value in [*ODD, KeyError]:
            add(f"{'.'.join(map(str, path))}.{key}={value!r}", setter(path, key, value))
    return out


@pytest.mark.parametrize("where, data", mutants(), ids=lambda x: x if isinstance(x, str) else "")
def test_any_one_odd_field_gives_the_same_answer(where, data):
    same(data)


def test_values_are_checked_when_made_by_hand():
    with pytest.raises(ValueError):
        payload.Value(1.0, 0.5)
    assert payload.Value(1.0) == payload.Value(1.0, None, None, None)
