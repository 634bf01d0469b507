"""docs/payload.schema.json is the oracle of the gateway's checks: for every message, generated or
mutated, the schema (with the few rules it cannot express, as its description lists them) and the
gateway give the same verdict, on both ways through a batch (the quick path, `_plainly_valid_batch`,
and the full checks, `_checked_batch`):

- rejected: the message fails $defs/envelope (or a rule beyond JSON Schema: JSON itself, no key
  twice, the size, the topic's node);
- refused: it is taken, but some record fails $defs/record_stored or some value $defs/record (or
  a record's ts is far past the gateway's clock, its seq not above the previous one, a summary's min
  above its max): the gateway stores the rest and keeps the refused part as a dead letter;
- flagged: every value kept, some outside their sensor's rated range ($defs/batch_kept but not
  $defs/batch): the gateway flags them `range`;
- clean: $defs/batch: taken as sent.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
from jsonschema import validators

from meetkit_tools.dev import batches
from meetkit_gateway import acks, payload
from meetkit_gateway.payload import QUANTITIES, RANGE, SCALAR, SUMMARY, Rejected

from .conftest import EXAMPLE, OLD_FIRMWARE, encode
from .test_payload_quick import mutants
from .test_rejects import ENVELOPE, RANGE as RANGE_CASES, RECORD, VALUE, _value_case, bad

SCHEMA_PATH = Path(__file__).parents[2] / "docs" / "payload.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
#: the gateway's clock in these tests: an hour after the example's record 17 started
NOW = 1795510800 + 3600
TOPIC_NODE = "ams-001"

# JSON Schema's `integer` admits 17.0; the contract does not (the schema's description says so), so
# the oracle takes an integer to be what JSON writes as one, as Python's json module reads it.
_STRICT_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda checker, x: isinstance(x, int) and not isinstance(x, bool))
_Strict = validators.extend(jsonschema.Draft202012Validator, type_checker=_STRICT_TYPES)


def validator(name: str) -> jsonschema.protocols.Validator:
    """The schema's `$defs/<name>`, as a validator."""
    return _Strict({"$ref": f"#/$defs/{name}", "$defs": SCHEMA["$defs"]})


ENVELOPE_V, RECORD_STORED_V, KEPT_V, BATCH_V = (validator(n) for n in ("envelope", "record_stored", "batch_kept",
                                                                      "batch"))
STATUS_V, ACK_V = validator("status"), validator("ack")
WHOLE_V = _Strict(SCHEMA)


# -- the rules beyond JSON Schema, as the schema's description lists them ------------------------

def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """The JSON in `data`; ValueError when it is not JSON, or has NaN/Infinity or a key twice, or is
    over the contract's 4096 bytes."""
    if len(data) > 4096:
        raise ValueError("over 4096 bytes")
    return json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)


def summaries(rec: dict[str, Any]) -> list[list[Any]]:
    return [v for k, v in rec.items() if k in QUANTITIES and isinstance(v, list)]


def records_beyond_schema_ok(doc: dict[str, Any], now: float) -> bool:
    """The record and value rules the schema cannot express (for records it already takes): ts at
    most 24 h past the gateway's clock, seqs increasing, a summary's min not above its max."""
    recs = doc["recs"]
    return (all(r["ts"] is None or r["ts"] <= now + 86400 for r in recs)
            and all(a["seq"] < b["seq"] for a, b in zip(recs, recs[1:]))
            and all(s[1] <= s[2] for r in recs for s in summaries(r)))


def oracle(data: bytes, node: str = TOPIC_NODE, now: float = NOW) -> str:
    """The verdict of the schema and the rules it lists as beyond it."""
    try:
        doc = strict_json(data)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError too
        return "rejected"
    if not ENVELOPE_V.is_valid(doc) or doc["node"] != node:
        return "rejected"
    if not KEPT_V.is_valid(doc) or not records_beyond_schema_ok(doc, now):
        return "refused"
    return "clean" if BATCH_V.is_valid(doc) else "flagged"


def verdict(parse: Callable[[bytes, str, float], payload.Batch], data: bytes, node: str = TOPIC_NODE,
            now: float = NOW) -> str:
    try:
        b = parse(data, node, now)
    except Rejected:
        return "rejected"
    if b.refused:
        return "refused"
    return "flagged" if any(RANGE in fl for r in b.records for fl in r.flags.values()) else "clean"


def full(data: bytes, node: str, now: float) -> payload.Batch:
    return payload._checked_batch(payload.decode(data), node, now)


def agree(data: bytes, node: str = TOPIC_NODE, now: float = NOW) -> str:
    """The verdict, the same from the schema, the gateway and its full checks alone; the quick path
    takes only what the schema calls clean."""
    expected = oracle(data, node, now)
    assert verdict(full, data, node, now) == expected
    assert verdict(payload.parse_batch, data, node, now) == expected
    if payload._plainly_valid_batch(data, node, now) is not None:
        assert expected == "clean"
    return expected


# -- messages ------------------------------------------------------------------------------------

def test_the_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("where, data", mutants(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_mutant_of_the_example_gets_the_same_verdict(where, data):
    agree(data)


CASES = ([(c[0], c[1], c[2]) for c in ENVELOPE] + [(c[0], TOPIC_NODE, bad(c[1])) for c in RECORD]
         + [(c[0], TOPIC_NODE, _value_case(c[0], c[1])) for c in VALUE]
         + [(c[0], TOPIC_NODE, bad(c[1])) for c in RANGE_CASES])


@pytest.mark.parametrize("node, data", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_case_of_test_rejects_gets_the_same_verdict(node, data):
    assert agree(data, node) != "clean"


def edge_values(key: str) -> list[Any]:
    """For one quantity: its bounds, a step past each, and values of the wrong type or shape."""
    q = QUANTITIES[key]
    numbers = [q.low, q.high, q.low - 0.01, q.high + 0.01, q.lowest, q.highest, q.lowest - 0.01, q.highest + 0.01,
               float(q.high), (q.low + q.high) / 2, 1e400, -1e400]
    out: list[Any] = [None, True, "5", {}, [], [1, 2, 3]]
    if q.form != SUMMARY:
        out += numbers
    if q.form != SCALAR:
        mid = (q.low + q.high) / 2
        out += [[x, min(x, mid), max(x, mid), 5] for x in numbers]
        out += [[mid, mid + 1, mid, 5], [mid, mid, mid, q.n_low], [mid, mid, mid, q.n_low - 1], [mid, mid, mid, 5.0],
                [mid, mid, mid, 2**63 - 1], [mid, mid, mid, 2**63], [mid, mid, mid, 5, 5], [mid, None, mid, 5],
                [mid, mid, mid, True]]
    return out


EDGES = [(f"{k}={v!r}", k, v) for k in QUANTITIES for v in edge_values(k)]


@pytest.mark.parametrize("key, value", [e[1:] for e in EDGES], ids=[e[0] for e in EDGES])
def test_every_edge_of_every_quantity_gets_the_same_verdict(key, value):
    doc = copy.deepcopy(EXAMPLE)
    doc["recs"][1][key] = value
    agree(encode(doc))


# -- random batches ----------------------------------------------------------------------------------

FLAG_CHOICES = [*payload.FLAGS, "range", "refused", "smoke", 3]


def random_value(rng: random.Random, key: str) -> Any:
    q = QUANTITIES[key]
    kind = rng.choices(["rated", "possible", "impossible", "null", "odd"], [95, 1.5, 0.8, 2, 0.7])[0]
    if kind == "null":
        return None
    if kind == "odd":
        return rng.choice([True, "x", {}, [], [1.0, 2.0], 17.0 if q.form != SUMMARY else [1, 1, 1, 1.0]])
    low, high = {"rated": (q.low, q.high), "possible": (q.lowest, q.highest),
                 "impossible": (q.highest, q.highest + 100)}[kind]
    xs = sorted(round(rng.uniform(low, high), rng.choice([0, 1, 2])) for _ in range(3))
    if rng.random() < 0.004:
        xs[0], xs[2] = xs[2], xs[0]  # min above max
    xs = [int(x) if x == int(x) and rng.random() < 0.5 else x for x in xs]
    if q.form == SCALAR or (q.form != SUMMARY and rng.random() < 0.7):
        return xs[1]
    return [xs[1], xs[0], xs[2], rng.choice([q.n_low, 12, 58, 60]) if rng.random() < 0.996 else q.n_low - 1]


def random_batch(rng: random.Random) -> dict[str, Any]:
    keys = list(QUANTITIES)
    present = [k for k in keys if rng.random() < 0.6] or [rng.choice(keys)]
    units = {k: QUANTITIES[k].unit for k in present}
    if rng.random() < 0.02:
        units.pop(rng.choice(present))
    if rng.random() < 0.02:
        units[rng.choice(present)] = "furlongs"
    recs = []
    seq = rng.randrange(0, 1000)
    for i in range(rng.randint(1, 5)):
        seq += 1 if rng.random() < 0.99 else -1
        ts = rng.choice([None, NOW - 3600 * (5 - i), NOW + 86400 + 10, 1767225599, NOW - 100])
        if rng.random() < 0.98:
            ts = NOW - 3600 * (5 - i)
        rec: dict[str, Any] = {"seq": seq, "ts": ts, "up": rng.choice([0, 60 * i, 2**30, -1]),
                               "dur": rng.choice([60, 60, 60, 3900, 3901, 0])}
        if rng.random() < 0.99:
            rec["up"] = 60 * i
        if rng.random() < 0.99:
            rec["dur"] = 60
        for k in present:
            if rng.random() < 0.9:
                rec[k] = random_value(rng, k)
        if rng.random() < 0.1:
            rec["f"] = {rng.choice([*present, "LCeq"]): rng.sample(FLAG_CHOICES, rng.randint(0, 2))}
        if rng.random() < 0.05:
            rec["err"] = {"pm": rng.choice([0, 2, 2, 2, -1])}
        if rng.random() < 0.005:
            rec["LCeq"] = 50.0
        if rng.random() < 0.01:
            rec["seq"] = float(rec["seq"])
        recs.append(rec)
    doc: dict[str, Any] = {"v": 1, "node": TOPIC_NODE, "boot": 3 if rng.random() < 0.97 else 2**30, "fw": "0.3.0",
                           "board": "esp32-devkitc", "sensors": {"pm": "pms5003"}, "units": units}
    if rng.random() < 0.3:
        doc["dropped"] = rng.choice([0, 5, 5, 5, 5, -1])
    doc["recs"] = recs
    return doc


def test_random_batches_get_the_same_verdict():
    """A seeded stream of batches with something odd here and there (values in each range, of the
    wrong type, min above max, unknown flags and fields, units missing or wrong, seqs backwards,
    times in the future): every verdict occurs, and the schema and the gateway agree on each."""
    rng = random.Random(14)
    seen: dict[str, int] = {}
    for _ in range(1000):
        got = agree(encode(random_batch(rng)))
        seen[got] = seen.get(got, 0) + 1
    assert set(seen) == {"rejected", "refused", "flagged", "clean"}, seen
    assert min(seen.values()) >= 40, seen


def test_firmware_batches_are_clean_and_go_the_quick_way():
    for s in batches.streams(2, 40, NOW - 40 * 60):
        for data in s.messages:
            assert oracle(data, s.node) == "clean"
            assert payload._plainly_valid_batch(data, s.node, NOW) is not None


@pytest.mark.parametrize("doc", [EXAMPLE, OLD_FIRMWARE], ids=["example", "old-firmware"])
def test_the_examples_are_clean_on_both_paths(doc):
    data = encode(doc)
    assert agree(data) == "clean" and WHOLE_V.is_valid(doc)
    assert payload._plainly_valid_batch(data, TOPIC_NODE, NOW) is not None


# -- what the schema cannot express, each on its own ---------------------------------------------------

BEYOND = [
    # id, message, what the gateway does with it
    ("key-twice", encode(EXAMPLE).replace(b'"boot":3,', b'"boot":3,"boot":3,', 1), "rejected"),
    ("nan", encode(EXAMPLE).replace(b"12.34", b"NaN", 1), "rejected"),
    ("over-4096-bytes", encode(EXAMPLE)[:-1] + b" " * 4096 + b"}", "rejected"),
    ("ts-25h-past-the-clock", bad(lambda b: b["recs"][1].update(ts=NOW + 25 * 3600)), "refused"),
    ("seq-backwards", bad(lambda b: b["recs"][1].update(seq=15)), "refused"),
    ("seq-repeated", bad(lambda b: b["recs"][1].update(seq=16)), "refused"),
    ("min-above-max", bad(lambda b: b["recs"][1].update(temp=[12.3, 12.5, 12.4, 12])), "refused"),
    ("integer-written-with-a-fraction", bad(lambda b: b["recs"][1].update(dur=60.0)), "refused"),
]


@pytest.mark.parametrize("data, outcome", [c[1:] for c in BEYOND], ids=[c[0] for c in BEYOND])
def test_what_the_schema_cannot_express_is_checked_all_the_same(data, outcome):
    """JSON Schema takes these (what it sees of them is valid), the gateway does not, and the
    oracle's own rules (the schema's description) say so."""
    doc = json.loads(data)  # Python's reader: a key twice gives the last one, NaN a float
    if len(data) <= 4096 and b"NaN" not in data:
        assert jsonschema.Draft202012Validator(SCHEMA).is_valid(doc)  # integer 60.0 too, by JSON Schema's rules
    assert verdict(full, data, TOPIC_NODE, NOW) == verdict(payload.parse_batch, data, TOPIC_NODE, NOW) == outcome
    assert oracle(data) == outcome


def test_node_must_be_the_topics():
    data = encode(EXAMPLE)
    assert BATCH_V.is_valid(EXAMPLE)
    assert verdict(payload.parse_batch, data, "ams-002") == oracle(data, "ams-002") == "rejected"


def test_a_time_a_day_past_the_clock_depends_on_the_clock():
    data = bad(lambda b: b["recs"][1].update(ts=NOW + 86400))
    assert agree(data, now=NOW) == "clean"
    assert agree(data, now=NOW - 1) == "refused"


# -- status and ack -----------------------------------------------------------------------------------

STATUS = {"v": 1, "node": "ams-001", "boot": 3, "online": True, "fw": "0.1.0", "up": 1020, "rssi": -61}


def status_mutants() -> list[tuple[str, dict[str, Any]]]:
    out = [("as-is", STATUS), ("last-will", {"v": 1, "node": "ams-001", "online": False})]
    odd = [None, True, 0, -1, 1, 1.5, 2**30, -128, -129, "", "x", [], {}]
    for key in (*STATUS, "extra"):
        for value in [*odd, KeyError]:
            doc = {k: v for k, v in STATUS.items() if k != key or value is not KeyError}
            if value is not KeyError:
                doc[key] = value
            out.append((f"{key}={value!r}", doc))
    return out


@pytest.mark.parametrize("doc", [m[1] for m in status_mutants()], ids=[m[0] for m in status_mutants()])
def test_status_messages_get_the_same_verdict(doc):
    try:
        payload.parse_status(encode(doc), TOPIC_NODE)
        taken = True
    except Rejected:
        taken = False
    assert taken == (STATUS_V.is_valid(doc) and doc["node"] == TOPIC_NODE)


def test_every_acknowledgement_the_gateway_makes_passes_the_schema():
    rng = random.Random(14)
    for _ in range(300):
        seqs = tuple(rng.sample(range(0, 2**30 - 1, rng.choice([1, 3, 100000])), rng.randint(1, 30)))
        doc = json.loads(acks.Ack("ams-001", rng.randrange(2**30), seqs).payload("3f9c0a1b2c3d4e5f"))
        assert ACK_V.is_valid(doc) and WHOLE_V.is_valid(doc), doc
        flat = [s for r in doc["seq"] for s in r]
        assert flat == sorted(flat) and all(a <= b for a, b in doc["seq"])  # beyond the schema


# -- a region (docs/payload.md, "Safe in the region") -------------------------------------------------

REGION_STATUS = {**STATUS, "via": 1, "held": 240}


@pytest.mark.parametrize("key,value", [(k, v) for k in ("via", "held")
                                       for v in (0, 1, 15, 16, -1, 2**30 - 1, 2**30, 1.5, None, "1", True, [])])
def test_status_via_and_held_get_the_same_verdict(key, value):
    doc = {**REGION_STATUS, key: value}
    try:
        st = payload.parse_status(encode(doc), TOPIC_NODE)
        taken = True
    except Rejected:
        taken = False
    assert taken == STATUS_V.is_valid(doc)
    assert taken == (isinstance(value, int) and not isinstance(value, bool)
                     and 0 <= value <= (15 if key == "via" else 2**30 - 1))
    if taken:
        assert getattr(st, key) == value


def test_every_acknowledgement_with_safe_and_every_standalone_one_passes_the_schema():
    rng = random.Random(16)
    for _ in range(300):
        seqs = tuple(rng.sample(range(0, 2**30 - 1, rng.choice([1, 3, 100000])), rng.randint(1, 30)))
        pair = rng.choice([None, (rng.randrange(2**30), rng.randrange(2**30)), (0, 0), (2**30 - 1, 2**30 - 1)])
        doc = json.loads(acks.Ack("ams-001", rng.randrange(2**30), seqs).payload("3f9c0a1b2c3d4e5f", pair))
        assert doc["safe"] == ([] if pair is None else list(pair))
        assert ACK_V.is_valid(doc) and WHOLE_V.is_valid(doc), doc
        alone = json.loads(acks.safe_payload("3f9c0a1b2c3d4e5f", pair))
        assert set(alone) == {"v", "db", "safe"} and ACK_V.is_valid(alone), alone


@pytest.mark.parametrize("doc", [
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "boot": 3, "seq": [[16, 17]], "safe": [3]},
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "boot": 3, "seq": [[16, 17]], "safe": [3, 12, 1]},
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "boot": 3, "seq": [[16, 17]], "safe": [-1, 12]},
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "boot": 3, "seq": [[16, 17]], "safe": [3, 2**30]},
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "boot": 3, "seq": [[16, 17]], "safe": None},
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "boot": 3, "safe": [3, 17]},  # half a batch ack
    {"v": 1, "db": "3f9c0a1b2c3d4e5f", "seq": [[16, 17]], "safe": [3, 17]},
    {"v": 1, "db": "3f9c0a1b2c3d4e5f"},  # neither a batch's nor a safe acknowledgement
])
def test_the_schema_refuses_a_malformed_safe_acknowledgement(doc):
    assert not ACK_V.is_valid(doc)


def test_the_region_examples_of_payload_md_pass_the_schema():
    text = (Path(__file__).parents[2] / "docs" / "payload.md").read_text()
    section = text.split("### Safe in the region", 1)[1].split("\n## ", 1)[0]
    block = section.split("```json", 1)[1].split("```", 1)[0]
    docs = [json.loads(line) for line in block.splitlines() if line.strip()]
    assert len(docs) == 2 and "boot" in docs[0] and "boot" not in docs[1]
    for doc in docs:
        assert ACK_V.is_valid(doc), doc
