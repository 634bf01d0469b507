"""The docs say what the gateway does, checked: docs/payload.md's examples, reasons, codes and
quantities against the gateway and docs/payload.schema.json; gateway/gateway.example.toml against
the configuration the gateway reads; the module maps of gateway/__init__.py and docs/developer.md,
and developer.md's picture of the data paths, against the modules there are."""

from __future__ import annotations

import calendar
import json
import re
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import meetkit_gateway
from meetkit_gateway import acks, config, payload

from .conftest import DOCS, batch, encode, json_examples
from .test_payload_schema import ACK_V, BATCH_V, SCHEMA, STATUS_V

ROOT = Path(__file__).parents[2]
GATEWAY = ROOT / "gateway"
PAYLOAD_MD = DOCS / "payload.md"
EXAMPLES = json_examples(PAYLOAD_MD)
#: an hour after the example's record 17 started
NOW = 1795510800 + 3600


# -- docs/payload.md -------------------------------------------------------------------------------

def test_the_batch_example_is_taken_as_sent():
    (text,) = EXAMPLES["Batch (the envelope)"]
    doc = json.loads(text)
    assert BATCH_V.is_valid(doc)
    # as printed (line breaks and all: the full checks) and as a node writes it (the quick path)
    for data in (text.encode(), encode(doc)):
        b = payload.parse_batch(data, "ams-001", NOW)
        assert [r.seq for r in b.records] == [16, 17] and b.refused == ()
        assert all(payload.RANGE not in fl for r in b.records for fl in r.flags.values())
    assert payload._plainly_valid_batch(encode(doc), "ams-001", NOW) is not None
    assert len(encode(doc)) < 2048  # "a batch stays under about 2 KB"


def test_the_record_example_is_the_batch_examples_second_record():
    (text,) = EXAMPLES["Record"]
    assert encode(json.loads(text)) == encode(json.loads(EXAMPLES["Batch (the envelope)"][0])["recs"][1])


def test_the_status_example_and_the_last_will_are_taken():
    (text,) = EXAMPLES["Status"]
    assert payload.parse_status(text.encode(), "ams-001") == payload.Status("ams-001", True, 3, "0.1.0", 1020, -61)
    assert STATUS_V.is_valid(json.loads(text))
    will = re.search(r"last will to `(\{.*?\})`", PAYLOAD_MD.read_text())
    assert will is not None
    assert payload.parse_status(will[1].encode(), "ams-001") == payload.Status("ams-001", False)
    assert STATUS_V.is_valid(json.loads(will[1]))


def test_the_ack_example_is_what_the_gateway_publishes():
    (text,) = EXAMPLES["Acknowledgement"]
    doc = json.loads(text)
    assert ACK_V.is_valid(doc)
    assert acks.Ack("ams-001", 3, (16, 17, 20)).payload(doc["db"]) == text.strip().encode()


def test_the_reason_example_is_the_gateways():
    m = re.search(r"``(recs\[6\]\.ts:\s.*?)``", PAYLOAD_MD.read_text(), re.S)
    assert m is not None
    shown = " ".join(m[1].split())
    clock = re.search(r"the gateway's clock \((\S+)Z\)", shown)
    assert clock is not None
    now = calendar.timegm(time.strptime(clock[1], "%Y-%m-%dT%H:%M:%S"))
    doc = batch(seqs=range(7))
    doc["recs"][6]["ts"] = 10**13
    (refusal,) = payload.parse_batch(encode(doc), "ams-001", now).refused
    assert refusal.reason == shown


def test_the_reason_codes_are_the_gateways():
    m = re.search(r"Reason codes: (.*?)\. Reasons name", PAYLOAD_MD.read_text(), re.S)
    assert m is not None
    listed = re.findall(r"`(\w+)`", m[1])
    codes = [payload.NOT_JSON, payload.OVERSIZED, payload.VERSION_UNKNOWN, payload.NODE_MISMATCH,
             payload.MISSING_FIELD, payload.UNKNOWN_FIELD, payload.WRONG_TYPE, payload.OUT_OF_RANGE,
             payload.BAD_VALUE, payload.IMPLAUSIBLE]
    assert listed == codes
    # ...and those are all the codes payload.py raises
    raised = set(re.findall(r"Rejected\(([A-Z_]+),", (GATEWAY / "payload.py").read_text()))
    assert {getattr(payload, c) for c in raised} == set(codes)


def _span(cell: str) -> tuple[float, float]:
    low, high = cell.split("…")
    return float(low), float(high)


def quantities_table() -> list[tuple[list[str], str, str, tuple[float, float], tuple[float, float]]]:
    """(keys, form, unit, rated range, measurable range) per row of payload.md's Quantities table."""
    text = PAYLOAD_MD.read_text()
    table = text[text.index("### Quantities"):text.index("### Quality flags")]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            rows.append((re.findall(r"`(\w+)`", cells[0]), cells[1], cells[2].strip("`"), _span(cells[4]),
                         _span(cells[5])))
    return rows


def test_the_quantities_table_is_the_gateways_and_the_schemas():
    rows = quantities_table()
    assert [k for keys, *_ in rows for k in keys] == list(payload.QUANTITIES)
    record = SCHEMA["$defs"]["record"]["properties"]
    rated_refs = SCHEMA["$defs"]["record_rated"]["properties"]
    for keys, form, unit, rated, measurable in rows:
        for key in keys:
            q = payload.QUANTITIES[key]
            assert (q.unit, (q.low, q.high), (q.lowest, q.highest)) == (unit, rated, measurable), key
            assert (form == "number") == (q.form != payload.SUMMARY), key
            possible = SCHEMA["$defs"][record[key]["$ref"].rsplit("/", 1)[1]]
            numbers = [f for f in possible["anyOf"] if f.get("type") == "number"]
            numbers += [f["prefixItems"][0] for f in possible["anyOf"] if f.get("type") == "array"]
            assert numbers and all((f["minimum"], f["maximum"]) == measurable for f in numbers), key
            r = SCHEMA["$defs"][rated_refs[key]["$ref"].rsplit("/", 1)[1]]
            assert (r["minimum"], r["maximum"]) == rated, key


# -- gateway/gateway.example.toml ---------------------------------------------------------------------

EXAMPLE_TOML = GATEWAY / "gateway.example.toml"
_TABLE = re.compile(r"^#?\s?(\[\[?[\w.]+\]\]?)\s*(#.*)?$")
_KEY = re.compile(r"^#?\s?([A-Za-z_]\w*)\s*=\s*(.+)$")


def documented() -> list[tuple[str, int, str, Any]]:
    """(table, index of its [[forward]] block or -1, key, value) of every key the example shows,
    set or commented out."""
    out: list[tuple[str, int, str, Any]] = []
    table, block = "", -1
    for line in EXAMPLE_TOML.read_text().splitlines():
        if m := _TABLE.match(line):
            table = m[1].strip("[]")
            block += table == "forward"
        elif m := _KEY.match(line):
            value = tomllib.loads(f"x = {m[2]}")["x"]  # a value that is not TOML fails here
            out.append((table, block if table == "forward" else -1, m[1], value))
    return out


def test_the_example_config_loads_with_the_defaults_it_says():
    """'Every key is optional except store.path; the values shown for the others are the defaults.'"""
    cfg = config.load(EXAMPLE_TOML)
    assert cfg.mqtt == config.MqttConfig() and cfg.log == config.LogConfig() and cfg.http == config.HttpConfig()
    assert cfg.store == replace(config.StoreConfig(cfg.store.path))
    assert cfg.store.path == Path("/var/lib/meetkit-gateway/gateway.db")


def test_every_key_the_example_shows_is_one_the_config_takes_with_its_value():
    keys = documented()
    assert len(keys) > 50
    types = {b: v for t, b, k, v in keys if t == "forward" and k == "type"}
    for table, block, key, value in keys:
        if table == "forward":
            kind = types[block]
            assert key in config.FORWARD_COMMON or key in config.TYPE_KEYS[kind], (block, key)
            check = config.TYPE_CHECKS.get(kind, {}).get(key, config.FORWARD_KEYS[key])
        else:
            assert key in config.SECTIONS.get(table, {}), f"{table}.{key}"
            check = config.SECTIONS[table][key]
        assert check(value)[1] is None, (table, key, value, check(value)[1])


def test_every_key_the_config_takes_is_in_the_example():
    keys = documented()
    shown = {(t, k) for t, _, k, _ in keys}
    assert {(t, k) for t, section in config.SECTIONS.items() for k in section} <= shown
    types = {b: v for t, b, k, v in keys if t == "forward" and k == "type"}
    assert set(types.values()) == set(config.FORWARD_TYPES)
    for kind in config.FORWARD_TYPES:
        in_blocks = {k for t, b, k, _ in keys if t == "forward" and types.get(b) == kind}
        assert set(config.TYPE_KEYS[kind]) <= in_blocks, (kind, set(config.TYPE_KEYS[kind]) - in_blocks)
    assert set(config.FORWARD_KEYS) <= {k for t, _, k, _ in keys if t == "forward"}


# -- the module maps and the picture --------------------------------------------------------------------

def gateway_modules() -> set[str]:
    """The gateway's modules, and its packages as `name/`."""
    names = {p.stem for p in GATEWAY.glob("*.py") if p.stem != "__init__"}
    return names | {f"{p.name}/" for p in GATEWAY.iterdir() if (p / "__init__.py").is_file()}


def package_modules(package: str) -> set[str]:
    return {p.stem for p in (GATEWAY / package).glob("*.py") if p.stem != "__init__"}


def docstring_map() -> dict[str, str]:
    """gateway/__init__.py's map: module -> its line(s)."""
    out: dict[str, str] = {}
    name = None
    for line in (meetkit_gateway.__doc__ or "").splitlines():
        if m := re.match(r"^    (\S+)\s{2,}(\S.*)$", line):
            name = m[1]
            out[name] = m[2]
        elif name and (m := re.match(r"^ {6,}(\S.*)$", line)):
            out[name] += " " + m[1]
        else:
            name = None
    return out


def developer_map() -> dict[str, str]:
    """docs/developer.md's table of the gateway's modules: module -> its job."""
    text = (DOCS / "developer.md").read_text()
    rows = text[text.index("| module | its job |"):].split("\n\n")[0]
    return {m[1]: m[2] for m in re.finditer(r"^\s*\| `([^`]+)` \| (.*) \|$", rows, re.M)}


@pytest.mark.parametrize("where, read", [("gateway/__init__.py", docstring_map), ("docs/developer.md", developer_map)])
def test_the_module_map_names_every_gateway_module(where, read):
    mapped = read()
    modules = gateway_modules()
    assert not modules - set(mapped), f"{where} does not name {sorted(modules - set(mapped))}"
    assert not set(mapped) - modules, f"{where} names {sorted(set(mapped) - modules)}, which are not modules"
    for package in (m for m in modules if m.endswith("/")):
        named = set(re.findall(r"\w+", mapped[package]))
        missing = package_modules(package.rstrip("/")) - named
        assert not missing, f"{where} does not name {sorted(missing)} of {package}"


def picture() -> list[str]:
    text = (DOCS / "developer.md").read_text()
    start = text.index("    node (firmware/lib/)")
    return text[start:text.index("\n\n", start)].splitlines()


def test_the_picture_names_gateway_modules_that_exist():
    lines = picture()
    gateway = lines[next(i for i, line in enumerate(lines) if line.startswith("    gateway (gateway/)")):]
    named = [m for line in gateway for m in re.findall(r"-> (\w+/?)", line)]
    modules = gateway_modules()
    assert len(named) >= 6
    assert not set(named) - modules, f"the picture names {sorted(set(named) - modules)}, which are not modules"
