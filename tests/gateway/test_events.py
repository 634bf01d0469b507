"""A node's events (<prefix>/<node>/event) and its status's `mode` and `cfg`, held to docs/payload.md
and to docs/payload.schema.json as the oracle: for every example event of payload.md and every
mutant of it, the gateway takes it exactly when the schema does (and the rules the schema cannot
express hold); what it refuses is dead-lettered with a reason that names the field; what it takes
is stored, and what it says of its node (the configuration version it runs) with it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from meetkit_gateway import payload
from meetkit_gateway.ingest import Inbound, ingest
from meetkit_gateway.payload import Rejected
from meetkit_gateway.store import Store
from meetkit_gateway.topics import Topics

from .conftest import DOCS, encode
from .test_payload_schema import validator

EVENT_V, STATUS_V = validator("event"), validator("status")
NODE = "ams-001"


def payload_md_events() -> list[dict[str, Any]]:
    """The whole events payload.md writes out (`{"v":1,"node":"ams-001","kind":...}` in its text)."""
    text = (DOCS / "payload.md").read_text()
    found = re.findall(r"`(\{\"v\":1,\"node\":\"ams-001\",\"kind\":[^`]*\})`", text)
    return [json.loads(f) for f in found]


EXAMPLES = payload_md_events()
#: one of each kind and form, besides payload.md's
MORE = [
    {"v": 1, "node": NODE, "kind": "config", "state": "refused", "reason": "bad mac"},
    {"v": 1, "node": NODE, "kind": "ota", "state": "accepted", "release": "0.3.0"},
    {"v": 1, "node": NODE, "kind": "ota", "state": "rolled_back", "release": "0.3.0", "back_to": "0.2.0",
     "reason": "no batch acknowledged within 900 s"},
    {"v": 1, "node": NODE, "kind": "safe_mode", "crashes": 3},
    {"v": 1, "node": NODE, "kind": "selftest", "state": "refused", "reason": "another node's"},
    {"v": 1, "node": NODE, "kind": "cmd", "state": "refused", "reason": "bad mac"},
    {"v": 1, "node": NODE, "kind": "cmd", "state": "refused", "id": 12, "reason": "unknown command 'reboot'"},
    {"v": 1, "node": NODE, "kind": "config", "state": "reverted", "version": 3, "back_to": 0,
     "reason": "not proved in 3 starts under version 3"},
]


def test_payload_md_writes_out_an_event_of_every_kind_but_safe_mode_and_ota():
    kinds = {e["kind"] for e in EXAMPLES}
    assert {"config", "crash", "selftest"} <= kinds, kinds


def utf8(doc: Any) -> bytes:
    """As a node writes it: compact JSON, UTF-8 (MicroPython's json does not escape "é")."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def verdict(doc: Any, node: str = NODE) -> str | None:
    """None when the gateway takes the event, else its reason code."""
    try:
        payload.parse_event(utf8(doc) if not isinstance(doc, bytes) else doc, node)
    except Rejected as e:
        return e.code
    return None


def oracle(doc: Any, node: str = NODE) -> bool:
    """The schema's verdict with the rules it cannot express (the topic's node, the trace's bytes,
    the message's 4096 bytes)."""
    if len(utf8(doc)) > payload.MAX_MESSAGE_BYTES or not EVENT_V.is_valid(doc):
        return False
    if doc["node"] != node:
        return False
    return not (doc["kind"] == "crash" and len(doc["trace"].encode()) > payload.TRACE_MAX_BYTES)


_ODD = (None, "", "x", -1, 0, 1, 2**30, 1.5, True, [], {}, ["pass", "ok"], ["maybe", "x"], {"a": 1})


def mutants() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i, base in enumerate(EXAMPLES + MORE):
        tag = f"{i}-{base['kind']}"
        out.append((f"{tag}-as-is", base))
        out.append((f"{tag}+extra", {**base, "extra": 1}))
        out.append((f"{tag}-other-node", {**base, "node": "ams-002"}))
        out.append((f"{tag}-kind-reboot", {**base, "kind": "reboot"}))
        for key in base:
            out.append((f"{tag}-no-{key}", {k: v for k, v in base.items() if k != key}))
            for j, odd in enumerate(_ODD):
                out.append((f"{tag}-{key}={j}", {**base, key: odd}))
            for sub, value in (base[key].items() if isinstance(base[key], dict) else ()):
                for j, odd in enumerate(_ODD):
                    out.append((f"{tag}-{key}.{sub}={j}", {**base, key: {**base[key], sub: odd}}))
        for other in ("state", "reason", "version", "id", "checks", "release", "back_to", "trial_s"):
            if other not in base:
                out.append((f"{tag}+{other}", {**base, other: "refused" if other == "state" else
                                                "bad mac" if other == "reason" else 7}))
    crash = next(e for e in EXAMPLES if e["kind"] == "crash")
    for n in (1499, 1500, 1501):
        out.append((f"trace-{n}-bytes", {**crash, "trace": "é" * (n // 2) + "x" * (n % 2)}))
    return out


@pytest.mark.parametrize("doc", [m[1] for m in mutants()], ids=[m[0] for m in mutants()])
def test_every_mutant_of_the_examples_gets_the_schemas_verdict(doc):
    assert (verdict(doc) is None) == oracle(doc), verdict(doc)


def test_the_mutants_take_and_refuse_some_of_each_kind():
    taken = {k: 0 for k in payload.EVENT_KINDS}
    refused = dict(taken)
    for _, doc in mutants():
        kind = doc.get("kind")
        if isinstance(kind, str) and kind in taken:
            (taken if verdict(doc) is None else refused)[kind] += 1
    assert all(taken.values()) and all(refused.values()), (taken, refused)


@pytest.mark.parametrize("doc, code, reason", [
    (b"{\"v\":1,", payload.NOT_JSON, "not JSON"),
    ({"v": 2, "node": NODE, "kind": "crash"}, payload.VERSION_UNKNOWN, "v: payload version 2 is not known"),
    ({"v": 1, "node": NODE, "kind": "reboot"}, payload.BAD_VALUE,
     'kind: "reboot" is not one of config, ota, cmd, crash, safe_mode, selftest'),
    ({"v": 1, "node": "ams-002", "kind": "safe_mode", "crashes": 3}, payload.NODE_MISMATCH,
     "node: 'ams-002' does not match the topic's node 'ams-001'"),
    ({"v": 1, "node": NODE, "kind": "config", "applied": []}, payload.MISSING_FIELD,
     'version: missing (or "state":"refused" with a reason)'),
    ({"v": 1, "node": NODE, "kind": "config", "state": "refused"}, payload.MISSING_FIELD,
     'reason: missing (a "refused" event says why)'),
    ({"v": 1, "node": NODE, "kind": "config", "version": 3, "refused": {"interval_s": 5}}, payload.WRONG_TYPE,
     "refused.interval_s: must be a string, got an integer"),
    ({"v": 1, "node": NODE, "kind": "config", "state": "reverted", "version": 8, "reason": "no broker"},
     payload.MISSING_FIELD, 'back_to: missing (a "reverted" configuration event names it)'),
    ({"v": 1, "node": NODE, "kind": "config", "state": "proved", "version": 8, "back_to": 7}, payload.UNKNOWN_FIELD,
     'back_to: only with "state":"reverted"'),
    ({"v": 1, "node": NODE, "kind": "config", "state": "rolled_back", "reason": "x"}, payload.BAD_VALUE,
     'state: "rolled_back" is not one of refused, proved, reverted'),
    ({"v": 1, "node": NODE, "kind": "ota", "state": "downloading"}, payload.BAD_VALUE,
     'state: "downloading" is not one of accepted, refused, installed, proved, rolled_back'),
    ({"v": 1, "node": NODE, "kind": "crash", "boot": 1, "at_up": 5, "count": 1, "trace": "x" * 1501},
     payload.OUT_OF_RANGE, "trace: 1501 bytes, a node sends at most 1500"),
    ({"v": 1, "node": NODE, "kind": "crash", "boot": 1, "at_up": 5, "count": -1, "trace": "x"},
     payload.OUT_OF_RANGE, "count: -1 is outside 0..1073741823"),
    ({"v": 1, "node": NODE, "kind": "selftest", "id": 4, "checks": {"mic": ["fail"]}}, payload.WRONG_TYPE,
     'checks.mic: must be ["pass" or "fail", "<detail>"], got an array of 1'),
    ({"v": 1, "node": NODE, "kind": "selftest", "id": 4, "checks": {"mic": ["meh", "x"]}}, payload.BAD_VALUE,
     'checks.mic[0]: "meh" is not one of pass, fail'),
    ({"v": 1, "node": NODE, "kind": "safe_mode", "crashes": 3, "since": 5}, payload.UNKNOWN_FIELD,
     "since: not a field of payload v1"),
])
def test_a_bad_event_is_refused_with_a_reason_naming_the_field(doc, code, reason):
    with pytest.raises(Rejected) as e:
        payload.parse_event(encode(doc), NODE)
    assert e.value.code == code and e.value.reason.startswith(reason), e.value.reason


STATUS = {"v": 1, "node": NODE, "online": True, "boot": 3, "fw": "0.2.0", "mode": "trial", "cfg": 7}


@pytest.mark.parametrize("doc", [STATUS, {**STATUS, "mode": "normal", "cfg": 0}, {**STATUS, "mode": "safe"},
                                 {**STATUS, "mode": "updating"}, {**STATUS, "mode": ""}, {**STATUS, "mode": 1},
                                 {**STATUS, "cfg": -1}, {**STATUS, "cfg": 2**30}, {**STATUS, "cfg": "7"},
                                 {**STATUS, "cfg": 7.0}, {**STATUS, "cfg": None}])
def test_a_status_with_mode_and_cfg_gets_the_schemas_verdict(doc):
    try:
        status = payload.parse_status(encode(doc), NODE)
    except Rejected:
        taken = False
    else:
        taken = True
        assert (status.mode, status.cfg) == (doc["mode"], doc["cfg"])
    assert taken == STATUS_V.is_valid(doc)


def _msg(topic: str, doc: Any, at: float) -> Inbound:
    return Inbound(topic, encode(doc) if not isinstance(doc, bytes) else doc, at)


def test_events_are_stored_with_their_nodes_state_and_bad_ones_dead_lettered(tmp_path: Path):
    topics, t0 = Topics(), time.time()
    with Store(tmp_path / "g.db") as store:
        with store.transaction():
            ingest(store, topics, _msg("meetkit/ams-001/status", STATUS, t0))
            for i, e in enumerate(EXAMPLES + MORE):
                ingest(store, topics, _msg("meetkit/ams-001/event", e, t0 + i))
            ingest(store, topics, _msg("meetkit/ams-001/event", {"v": 1, "node": NODE, "kind": "reboot"}, t0))
            ingest(store, topics, _msg("meetkit/ams-002/event", EXAMPLES[0], t0))  # ams-001's, on ams-002's topic
        events = store.events()
        assert [e.body for e in events] == EXAMPLES + MORE
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert [e.state for e in store.events(kind="ota")] == ["accepted", "rolled_back"]
        config = next(e for e in EXAMPLES if e["kind"] == "config")
        (node,) = store.nodes()
        # the events' version now: the last says the node reverted version 3 and runs 0 again
        assert (node.node, node.mode, node.cfg) == (NODE, "trial", 0)
        with store.transaction():
            ingest(store, topics, _msg("meetkit/ams-001/event", config, t0 + 100))
        assert store.nodes()[0].cfg == config["version"]
        letters = store.dead_letters()
        assert sorted((d.node, d.code) for d in letters) == [("ams-001", "bad_value"), ("ams-002", "node_mismatch")]
        counters = store.counters()
        assert counters["rejected.bad_value"] == 1 and counters["rejected.node_mismatch"] == 1
        assert counters["events.crash"] == 1 and counters["events.ota"] == 2
        assert store.answer(NODE, "selftest", 12) is not None


def test_crash_reports_are_kept_bounded_per_node_the_newest(tmp_path: Path):
    from meetkit_gateway.store.fleet import CRASHES_KEPT

    topics, t0 = Topics(), time.time()
    crash = next(e for e in EXAMPLES if e["kind"] == "crash")
    with Store(tmp_path / "g.db") as store:
        with store.transaction():
            for i in range(CRASHES_KEPT + 5):
                ingest(store, topics, _msg("meetkit/ams-001/event", {**crash, "boot": i + 1}, t0 + i))
            ingest(store, topics, _msg("meetkit/ams-002/event", {**crash, "node": "ams-002"}, t0))
        kept = [e.body["boot"] for e in store.events(kind="crash", node=NODE)]
        assert kept == list(range(6, CRASHES_KEPT + 6))  # the newest 20, oldest first
        assert store.event_count("crash", "ams-002") == 1  # another node's are its own
        latest = store.latest_events("crash")
        assert latest[NODE][0].body["boot"] == CRASHES_KEPT + 5
