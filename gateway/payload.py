"""The node payload contract, versions 1 and 2 (docs/payload.md), as code.

Version 2 says the same as version 1 in fewer bytes: a boot's envelope (node, fw, board, sensors,
units, and the order and decimals of its quantities) goes once per session, not in every batch, and
a record is an array of integers. `parse_batch` turns a v2 batch into what v1 would have said, so
every check, flag, refusal and dead letter is the same for both.

`parse_batch` and `parse_status` turn the bytes of one MQTT message into a typed `Batch` or
`Status`, or raise `Rejected` with a short machine-readable `code` (used for the counters) and a
`reason` a person can act on, naming the field: ``boot: 4294967296 is outside 0..1073741823``.

A batch is judged record by record: a broken envelope (not JSON, an unknown version, the node or
the boot wrong) rejects the whole message, but a bad record only refuses that record, and a bad
value only that value (`Refusal`): the rest of the batch is stored. A value outside its sensor's
rated range that is still physically possible is kept and flagged `range`; an impossible one is
refused (stored as null, flagged `refused`). What is refused is kept whole in the dead-letter table
(ingest.py), from where an operator can replay it after a fix (replay.py).

The contract is closed: a field this module does not know is refused, not silently dropped.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import time
from dataclasses import dataclass, field
from operator import add, le, truediv
from typing import Annotated, Any, Callable, Literal, Mapping, NamedTuple

import msgspec
from msgspec import UNSET, Meta, UnsetType

from . import packed

VERSION = 1
#: the batch versions this gateway takes
BATCH_VERSIONS = (1, 2)

#: The contract says a batch stays under about 2 KB; twice that is clearly not a batch.
MAX_MESSAGE_BYTES = 4096


#: How a quantity is written in a record (besides null).
Form = Literal["summary", "scalar", "scalar_or_summary"]
SUMMARY: Form = "summary"  # `[avg, min, max, n]` only
SCALAR: Form = "scalar"  # a plain number only
SCALAR_OR_SUMMARY: Form = "scalar_or_summary"  # a number; `[avg, min, max, n]` still accepted (older firmware)


@dataclass(frozen=True)
class Quantity:
    key: str
    unit: str
    #: the sensor's rated range (its datasheet): a value outside it is kept, flagged `range`
    low: float
    high: float
    #: what can physically be measured at all: a value outside it is refused
    lowest: float
    highest: float
    form: Form = SUMMARY
    #: the least `n` of a summary
    n_low: int = 1
    #: the sensor role in a batch's `sensors` that measures it (pm, climate, mic)
    role: str = ""
    #: what it is, for data users (export metadata, SensorThings ObservedProperty)
    description: str = ""

    def _span(self, low: float, high: float) -> str:
        unit = "" if self.unit == "1" else f" {self.unit}"  # a dimensionless quantity has no unit after it
        return f"{low:g}..{high:g}{unit}"

    def range(self) -> str:
        """The rated range, `-40..85 degC`."""
        return self._span(self.low, self.high)

    def possible(self) -> str:
        """The physically possible range, `-90..100 degC`."""
        return self._span(self.lowest, self.highest)


_PM_NOTE = ("Plantower PMS5003/PMS7003: maximum range at least 1000 ug/m3 (effective 0..500); Nova SDS011: "
            "0..999.9 ug/m3. Both send 16-bit values: 65535 is the most they can say.")

#: Known quantities in the order of docs/payload.md, with their unit, the sensor's rated range and
#: the physically possible one (docs/payload.md, "Quantities", gives the sources).
QUANTITIES: dict[str, Quantity] = {
    q.key: q
    for q in (
        Quantity("pm1", "ug/m3", 0, 1000, 0, 65535, role="pm",
                 description="PM1 mass concentration, particles below 1 µm (optical sensor)"),
        Quantity("pm25", "ug/m3", 0, 1000, 0, 65535, role="pm",
                 description="PM2.5 mass concentration, particles below 2.5 µm (optical sensor)"),
        Quantity("pm10", "ug/m3", 0, 1000, 0, 65535, role="pm",
                 description="PM10 mass concentration, particles below 10 µm (optical sensor)"),
        # BME280: operating range -40..85 degC, 0..100 %RH, 300..1100 hPa
        Quantity("temp", "degC", -40, 85, -90, 100, role="climate",
                 description="air temperature in the node's housing"),
        Quantity("rh", "%", 0, 100, 0, 100, role="climate", description="relative humidity in the node's housing"),
        Quantity("press", "hPa", 300, 1100, 250, 1200, role="climate", description="air pressure at the node"),
        # [LAeq, LAFmin, LAFmax, seconds]: avg is the energy mean, min/max are Fast levels, so avg
        # need not lie between them (only min <= max is checked, as for every quantity); n is whole
        # seconds of audio, 0 when less than one second was processed (cov says how much). Rated:
        # what the node's pipeline reports (it flags `floor` and `overload` itself); possible: 194 dB
        # is the loudest sound air carries undistorted, -50 dB far below any microphone's self-noise.
        Quantity("LAeq", "dB", 0, 140, -50, 194, n_low=0, role="mic",
                 description="A-weighted equivalent continuous sound level of the interval, re 20 µPa; min, max: "
                             "LAFmin, LAFmax (Fast, IEC 61672-1); n: whole seconds of audio"),
        Quantity("LA10", "dB", 0, 140, -50, 194, SCALAR, role="mic",
                 description="A-weighted Fast sound level exceeded during 10 % of the interval"),
        Quantity("LA50", "dB", 0, 140, -50, 194, SCALAR, role="mic",
                 description="A-weighted Fast sound level exceeded during 50 % of the interval"),
        Quantity("LA90", "dB", 0, 140, -50, 194, SCALAR, role="mic",
                 description="A-weighted Fast sound level exceeded during 90 % of the interval"),
        # a number since the noise pipeline; firmware 0.1.0 sent [avg, min, max, n], and such
        # records may still come out of a node's spool after an update
        Quantity("LZeq", "dB", 0, 140, -50, 194, SCALAR_OR_SUMMARY, role="mic",
                 description="Z-weighted (flat) equivalent continuous sound level of the interval, re 20 µPa"),
        Quantity("cov", "1", 0, 1, 0, 1, SCALAR, role="mic",
                 description="fraction of the interval's audio the node processed"),
    )
}

#: Quality flags a node may send.
FLAGS = ("missing", "checksum", "warmup", "rh_high", "partial", "overload", "floor")
#: Flags the gateway adds: a value outside its sensor's rated range, kept as measured; a value
#: refused as impossible (stored as null; the record as received is kept as a dead letter).
RANGE = "range"
REFUSED = "refused"
GATEWAY_FLAGS = (RANGE, REFUSED)

NODE_ID = re.compile(r"[a-z0-9-]{1,32}")

# SQLite stores integers in 64 bits; anything larger is not a counter a node can have.
_INT_MAX = 2**63 - 1

# The contract's plausible values (docs/payload.md, "Plausible values"). A record outside them is
# refused on its own; readers of an older store, which may hold anything, use them to tell a
# value they can show from one they print raw.
#: boot and seq are small ints on the ESP32 (below 2**30): a billion boots, and 340 years of
#: records at the shortest interval (10 s)
BOOT_MAX = 2**30 - 1
SEQ_MAX = 2**30 - 1
#: a status's `via`: the index in the node's broker list of the broker it is on (0: its own)
VIA_MAX = 15
#: seconds since boot: 34 years
UP_MAX = 2**30 - 1
#: 2026-01-01T00:00:00Z: no meetkit node measured before
TS_MIN = 1767225600
#: how far past the gateway's clock a record may start (a node's clock a little fast, a Pi whose
#: clock is behind until NTP answers); beyond it the node's clock is wrong
FUTURE_MARGIN_S = 86400
#: the longest interval a node can be configured for (config.py: interval_s 10..3600) plus the
#: watchdog's 90 s and room to spare
DUR_MAX = 3600 + 300


def plausible_ts(ts: float, now: float) -> bool:
    """`ts` can be a record's interval start: not before the project, not far past `now`."""
    return TS_MIN <= ts <= now + FUTURE_MARGIN_S


# Codes of rejections and refusals; counted as `rejected.<code>` (messages), `refused_records.<code>`
# and `refused_values.<code>` in the store.
NOT_JSON = "not_json"
OVERSIZED = "oversized"
VERSION_UNKNOWN = "version"
NODE_MISMATCH = "node_mismatch"
MISSING_FIELD = "missing_field"
UNKNOWN_FIELD = "unknown_field"
WRONG_TYPE = "wrong_type"
OUT_OF_RANGE = "out_of_range"
BAD_VALUE = "bad_value"
IMPLAUSIBLE = "implausible"  # a time, duration or counter outside the contract's plausible values
#: a v2 batch without an envelope, of a boot whose envelope the gateway does not have: not kept
#: (the node still has it), the node is asked for the envelope (docs/payload.md, "Payload v2")
NO_ENVELOPE = "no_envelope"


class Rejected(Exception):
    """A message, a record or a value that does not satisfy the contract."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class NoEnvelope(Rejected):
    """A v2 batch of a boot whose envelope the gateway does not have (`NO_ENVELOPE`)."""

    def __init__(self, boot: int, reason: str) -> None:
        super().__init__(NO_ENVELOPE, reason)
        self.boot = boot


class _ValueFields(NamedTuple):
    avg: float
    min: float | None = None
    max: float | None = None
    n: int | None = None


class Value(_ValueFields):
    """One quantity of one record: a summary `[avg, min, max, n]`, or a plain number (a scalar:
    `avg` only, `min`, `max` and `n` None). Never partly one and partly the other.

    A tuple rather than a dataclass: the ingest path makes one per reading, tens of thousands a
    second, and a frozen dataclass costs several times more to make."""

    __slots__ = ()

    def __new__(cls, avg: float, min: float | None = None, max: float | None = None, n: int | None = None) -> "Value":
        given = (min is not None, max is not None, n is not None)
        if any(given) and not all(given):
            raise ValueError(f"a Value has min, max and n all or none of them: {(avg, min, max, n)!r}")
        return super().__new__(cls, avg, min, max, n)

    @property
    def scalar(self) -> bool:
        return self.n is None


@dataclass(frozen=True)
class Record:
    seq: int
    ts: int | None
    up: int
    dur: int
    #: quantity -> value, or None when the node had no valid sample (then `flags` says why)
    values: Mapping[str, Value | None]
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    err: Mapping[str, int] = field(default_factory=dict)
    #: the store's encoding of `values` and `flags`, (shape, vals, readings) as
    #: store.values.encode_record gives it, when the quick path made it on the way (else None):
    #: not part of what the record says, so not compared
    enc: tuple[bytes, bytes, int] | None = field(default=None, compare=False, repr=False)

    def quantities(self) -> list[str]:
        """Every quantity the record says something about (a value or flags), in contract order."""
        return [q for q in QUANTITIES if q in self.values or q in self.flags]


@dataclass(frozen=True)
class Refusal:
    """A record of a batch, or some of its values, that the gateway refused while it took the rest."""

    index: int  # its place in `recs`
    #: its seq when it can be read within the contract, else None. A refused record is kept as a
    #: dead letter, so its seq is acknowledged; one without a readable seq is not (the node sends
    #: it again until a gateway can read it).
    seq: int | None
    code: str
    reason: str  # naming the field: `recs[6].ts: ...`
    raw: Any  # the record as received, for the dead letter
    #: True: the record is not stored; False: it is, without the refused values (null, `refused`)
    whole: bool
    #: the problems it stands for: 1 for a whole record, the values refused for a partial one
    count: int = 1


@dataclass(frozen=True)
class Envelope:
    """What payload v2 sends once per boot and session: what v1 repeats in every batch, and the
    order (`keys`) and decimals (`dec`) of the record arrays' values."""

    fw: str
    board: str
    sensors: Mapping[str, str]
    units: Mapping[str, str]
    keys: tuple[str, ...]
    dec: tuple[int, ...]
    #: Unix seconds at the boot's uptime 0, once the node's clock is known: a record's ts is sent
    #: as ts - t0 - up, a few digits instead of ten
    t0: int | None = None
    #: per key, 1: its summaries are written as four numbers without brackets
    sums: tuple[int, ...] = ()
    #: per key, how packed records code it (`k`: 256 and up a summary; packed.py), () when not sent
    codes: tuple[int, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"fw": self.fw, "board": self.board, "sensors": dict(self.sensors),
                           "units": dict(self.units), "keys": list(self.keys), "dec": list(self.dec),
                           "t0": self.t0, "sum": list(self.sums), "k": list(self.codes)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Envelope":
        d = json.loads(text)
        return cls(d["fw"], d["board"], d["sensors"], d["units"], tuple(d["keys"]), tuple(d["dec"]), d.get("t0"),
                   tuple(d.get("sum", ())), tuple(d.get("k", ())))


#: the envelope the gateway has for a node's boot (the store's), or None
EnvelopeOf = Callable[[str, int], "Envelope | None"]


@dataclass(frozen=True)
class Batch:
    node: str
    boot: int
    fw: str
    board: str
    sensors: Mapping[str, str]
    units: Mapping[str, str]
    records: tuple[Record, ...]
    #: records the node's spool dropped by policy (full), ever; None when the batch does not say
    dropped: int | None = None
    #: records and values refused, in the order of `recs`
    refused: tuple[Refusal, ...] = ()
    #: a v2 batch's envelope when it carried one (the store keeps it for the boot's later batches)
    envelope: Envelope | None = None
    #: the payload version the node sent (its acknowledgement is in the form it reads)
    version: int = 1

    def unit(self, quantity: str) -> str:
        return self.units.get(quantity, QUANTITIES[quantity].unit)

    def held_seqs(self) -> tuple[int, ...]:
        """The seqs the gateway holds once the batch is committed: its records, and the refused
        records whose seq can be read (kept in the dead-letter table)."""
        seqs = [r.seq for r in self.records]
        seqs += [f.seq for f in self.refused if f.whole and f.seq is not None]
        return tuple(seqs)

    def dead_letter(self) -> tuple[bytes, str, str] | None:
        """(payload, code, reason) of the dead letter that keeps what was refused: a batch with
        this one's envelope and the refused records as received, so that it can be replayed as
        it is; None when nothing was refused."""
        if not self.refused:
            return None
        doc: dict[str, Any] = {"v": VERSION, "node": self.node, "boot": self.boot, "fw": self.fw,
                               "board": self.board, "sensors": dict(self.sensors), "units": dict(self.units),
                               "recs": [f.raw for f in self.refused]}
        codes = {f.code for f in self.refused}
        code = self.refused[0].code if len(codes) > 1 else codes.pop()
        reasons = [f.reason if f.whole else f"{f.reason} (the record was stored without it)" for f in self.refused]
        reason = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        return json.dumps(doc, separators=(",", ":")).encode(), code, reason


@dataclass(frozen=True)
class Status:
    node: str
    online: bool
    boot: int | None = None
    fw: str | None = None
    up: int | None = None
    rssi: int | None = None
    mode: str | None = None  # normal, trial (a new app proving itself) or safe (after crashes in a row)
    cfg: int | None = None  # the configuration version the node runs (0: never set remotely)
    via: int | None = None  # the index in its broker list of the broker it is on (0: its own gateway's)
    held: int | None = None  # records its spool holds that are not yet safe (docs/payload.md, "Safe in the region")


#: A node's modes (status `mode`): measuring as usual, a new app on trial, safe mode after crashes.
MODES = ("normal", "trial", "safe")
#: The kinds of event a node reports on <prefix>/<node>/event (docs/payload.md, "Events"); `cmd`
#: is a command the node did not take (a bad MAC, another node's, a command it does not know).
EVENT_KINDS = ("config", "ota", "cmd", "crash", "safe_mode", "selftest")
#: An update's steps, as the node reports them (`"kind":"ota"`).
OTA_STATES = ("accepted", "refused", "installed", "proved", "rolled_back")
#: A configuration's outcomes besides taken (`"kind":"config"` without a state): refused whole, and
#: the end of its trial (one that changes the node's link): proved, or reverted by the node.
CONFIG_STATES = ("refused", "proved", "reverted")
#: A self-test item's result.
CHECK_RESULTS = ("pass", "fail")
#: The most of a crash report's traceback a node sends (UTF-8 bytes).
TRACE_MAX_BYTES = 1500


@dataclass(frozen=True)
class Event:
    """One event from <prefix>/<node>/event, checked: `body` is the message as received."""

    node: str
    kind: str
    body: Mapping[str, Any]
    state: str | None = None  # the event's `state`, when its kind has one


# ---------------------------------------------------------------------------------------------
# Decoding


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def decode(payload: bytes, size: int | None = None, short_batch: bool = False) -> dict[str, Any]:
    """The JSON object in `payload`, or `Rejected` (size, encoding, syntax, not an object). `size`:
    the message's size when `payload` is only its first bytes (the gateway does not hold a message
    larger than the contract allows). `short_batch`: an array is taken too, as payload v2's short
    batch `[2, boot, record, ...]` (made the object `{"v":2,"boot":..,"recs":[..]}`)."""
    size = len(payload) if size is None else size
    if size > MAX_MESSAGE_BYTES:
        raise Rejected(OVERSIZED, f"{size} bytes, the limit is {MAX_MESSAGE_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(NOT_JSON, f"not UTF-8: {e}") from None
    try:
        obj = json.loads(
            text, parse_constant=_no_constant, object_pairs_hook=_no_duplicate_keys
        )
    except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
        raise Rejected(NOT_JSON, f"not JSON: {e}") from None
    if short_batch and isinstance(obj, list) and len(obj) >= 3 and obj[0] == 2 and type(obj[0]) is int:
        return {"v": 2, "boot": obj[1], "recs": obj[2:]}
    if not isinstance(obj, dict):
        raise Rejected(WRONG_TYPE, f"the message must be a JSON object, got {_kind(obj)}")
    return obj


# ---------------------------------------------------------------------------------------------
# Checks on single fields; `where` names the field in the reason.


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _int(v: Any, where: str, low: int = 0, high: int = _INT_MAX) -> int:
    """An integer in low..high; above `high` (the contract's bound, below SQLite's) is implausible."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise Rejected(WRONG_TYPE, f"{where}: must be an integer, got {_kind(v)}")
    if v < low:
        raise Rejected(OUT_OF_RANGE, f"{where}: {v} is outside {low}..{high}")
    if v > high:
        raise Rejected(IMPLAUSIBLE if high < _INT_MAX else OUT_OF_RANGE, f"{where}: {v} is outside {low}..{high}")
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Rejected(WRONG_TYPE, f"{where}: must be a number, got {_kind(v)}")
    if not math.isfinite(v):
        raise Rejected(OUT_OF_RANGE, f"{where}: {v} is not a finite number")
    return float(v)


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise Rejected(WRONG_TYPE, f"{where}: must be a string, got {_kind(v)}")
    if not v:
        raise Rejected(BAD_VALUE, f"{where}: must not be empty")
    return v


def _obj(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise Rejected(WRONG_TYPE, f"{where}: must be an object, got {_kind(v)}")
    return v


def _fields(obj: dict[str, Any], where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    prefix = f"{where}." if where else ""
    for k in required:
        if k not in obj:
            raise Rejected(MISSING_FIELD, f"{prefix}{k}: missing")
    for k in obj:
        if k not in required and k not in optional:
            raise Rejected(UNKNOWN_FIELD, f"{prefix}{k}: not a field of payload v{VERSION}")


def _version(obj: dict[str, Any], known: tuple[int, ...] = (VERSION,)) -> int:
    if "v" not in obj:
        raise Rejected(MISSING_FIELD, "v: missing")
    v = obj["v"]
    if v not in known or isinstance(v, bool) or not isinstance(v, int):
        raise Rejected(VERSION_UNKNOWN, f"v: payload version {json.dumps(v)} is not known (this gateway knows "
                                        f"{' and '.join(map(str, known))})")
    return v


def _node(obj: dict[str, Any], topic_node: str) -> str:
    if "node" not in obj:
        raise Rejected(MISSING_FIELD, "node: missing")
    node = obj["node"]
    if not isinstance(node, str):
        raise Rejected(WRONG_TYPE, f"node: must be a string, got {_kind(node)}")
    if node != topic_node:
        raise Rejected(NODE_MISMATCH, f"node: {node!r} does not match the topic's node {topic_node!r}")
    if not NODE_ID.fullmatch(node):
        raise Rejected(BAD_VALUE, f"node: {node!r} is not a node id ([a-z0-9-]{{1,32}})")
    return node


def _when(ts: int) -> str:
    """`ts` as an ISO date for a reason, when it has one."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    except (OverflowError, OSError, ValueError):
        return "no date a calendar has"


def _ts(v: Any, where: str, now: float) -> int | None:
    if v is None:
        return None
    ts = _int(v, where)
    if ts < TS_MIN:
        raise Rejected(IMPLAUSIBLE, f"{where}: {ts} ({_when(ts)}) is before {_when(TS_MIN)[:10]}, "
                                    "when no meetkit node measured yet: the node's clock is wrong")
    if ts > now + FUTURE_MARGIN_S:
        ahead = (ts - now) / 86400
        raise Rejected(IMPLAUSIBLE, f"{where}: {ts} ({_when(ts)}) is {ahead:.4g} days past the gateway's clock "
                                    f"({_when(int(now))}), more than the {FUTURE_MARGIN_S // 3600} h allowed: "
                                    "the node's clock (or the gateway's) is wrong")
    return ts


# ---------------------------------------------------------------------------------------------
# Batches

_ENVELOPE_REQUIRED = ("v", "node", "boot", "fw", "board", "sensors", "units", "recs")


def parse_batch(payload: bytes, topic_node: str, now: float | None = None, size: int | None = None,
                envelope_of: EnvelopeOf | None = None, encoded: bool = False) -> Batch:
    """Validate one message from `<prefix>/<topic_node>/up` against payload v1 or v2: the envelope as
    a whole (`Rejected`), each record and value on its own (`Batch.refused`). `now`: the gateway's
    clock when it received the message (a record may not start far past it); `size`: see `decode`;
    `envelope_of`: the envelope kept for a node's boot, for a v2 batch that does not carry one;
    `encoded`: the records of a v1 batch on the quick path come encoded for the store (`Record.enc`:
    ingest's writer), their Values made only when asked for."""
    now = time.time() if now is None else now
    if size is None or size <= MAX_MESSAGE_BYTES:
        # v2's short batch (an array) and object (the firmware writes its version first) are never a
        # plainly valid v1 batch
        if payload[:1] == b"[":
            batch = _plainly_valid_short(payload, topic_node, now, envelope_of)
        elif not payload.startswith(b'{"v":2'):
            batch = _plainly_valid_batch(payload, topic_node, now, encoded)
        else:
            batch = None
        if batch is not None:
            return batch
    return _checked_batch(decode(payload, size, short_batch=True), topic_node, now, envelope_of)


def _checked_batch(obj: dict[str, Any], topic_node: str, now: float, envelope_of: EnvelopeOf | None = None) -> Batch:
    """The batch in `obj`, checked field by field so that each refusal names the field wrong."""
    if _version(obj, BATCH_VERSIONS) == 2:
        return _checked_batch_v2(obj, topic_node, now, envelope_of)
    _fields(obj, "", _ENVELOPE_REQUIRED, ("dropped",))
    node = _node(obj, topic_node)
    boot = _int(obj["boot"], "boot", high=BOOT_MAX)
    dropped = _int(obj["dropped"], "dropped") if "dropped" in obj else None
    fw = _str(obj["fw"], "fw")
    board = _str(obj["board"], "board")
    sensors = {k: _str(v, f"sensors.{k}") for k, v in _obj(obj["sensors"], "sensors").items()}
    # A unit is checked with the values that use it: a quantity this gateway does not know yet (a
    # newer firmware's) or a wrong unit costs those values only.
    units = {q: _str(unit, f"units.{q}") for q, unit in _obj(obj["units"], "units").items()}
    records, refused = _records(obj["recs"], units, now, None)
    return Batch(node, boot, fw, board, sensors, units, tuple(records), dropped, tuple(refused))


def _records(recs: Any, units: Mapping[str, str], now: float,
             env: Envelope | None) -> tuple[list[Record], list[Refusal]]:
    """The records of `recs` and the refusals among them; `env`: a v2 batch's envelope (its records
    are arrays, each made into what v1 would have sent before it is checked)."""
    if not isinstance(recs, list):
        raise Rejected(WRONG_TYPE, f"recs: must be an array, got {_kind(recs)}")
    if not recs:
        raise Rejected(BAD_VALUE, "recs: must hold at least one record")
    records: list[Record] = []
    refused: list[Refusal] = []
    prev: list[Any] | None = None  # v2: the record before, its numbers whole (the deltas' base)
    unreadable = ""  # v2: a record before could not be read, so neither can the deltas after it
    for i, r in enumerate(recs):
        where = f"recs[{i}]"
        try:
            if env is not None:
                if unreadable:
                    raise Rejected(BAD_VALUE, f"{where}: its deltas cannot be read after {unreadable}, which could "
                                              "not be read")
                try:
                    r, prev = _v1_record(r, where, env, prev)
                except Rejected:
                    unreadable = where
                    raise
            rec, problems = _record(r, where, units, now)
            if records and rec.seq <= records[-1].seq:
                raise Rejected(BAD_VALUE, f"{where}.seq: {rec.seq} after {records[-1].seq}; records go oldest "
                                          "first, one seq each")
        except Rejected as e:
            refused.append(Refusal(i, _readable_seq(r), e.code, e.reason, r, whole=True))
            continue
        records.append(rec)
        if problems:
            refused.append(Refusal(i, rec.seq, problems[0].code, "; ".join(p.reason for p in problems), r,
                                   whole=False, count=len(problems)))
    return records, refused


_V2_ENVELOPE = ("node", "fw", "board", "sensors", "units", "keys", "dec")
#: the most decimals a v2 value may have (its integer / 10**dec)
DEC_MAX = 6


def _checked_batch_v2(obj: dict[str, Any], topic_node: str, now: float, envelope_of: EnvelopeOf | None) -> Batch:
    """A v2 batch: the boot's envelope as carried (then checked whole) or as kept (`envelope_of`),
    the records made into v1's form and checked as v1's are."""
    _fields(obj, "", ("v", "boot", "recs"), (*_V2_ENVELOPE, "t0", "sum", "k", "dropped"))
    boot = _int(obj["boot"], "boot", high=BOOT_MAX)
    # v2 says `dropped` whenever it is not 0 (v1 in every batch): a batch without it says 0
    dropped = _int(obj["dropped"], "dropped") if "dropped" in obj else 0
    carried = None
    if any(k in obj for k in (*_V2_ENVELOPE, "t0", "sum", "k")):
        for k in _V2_ENVELOPE:
            if k not in obj:
                raise Rejected(MISSING_FIELD, f"{k}: missing (a v2 envelope is sent whole: {', '.join(_V2_ENVELOPE)})")
        _node(obj, topic_node)
        env = carried = _envelope_v2(obj)
    else:
        env = envelope_of(topic_node, boot) if envelope_of is not None else None
        if env is None:
            raise NoEnvelope(boot, f"boot {boot}: no envelope kept for this boot, and the batch has none "
                                        "(payload v2 sends it with a boot's first batch of each session)")
    recs = obj["recs"]
    if isinstance(recs, list) and len(recs) == 1 and isinstance(recs[0], str):  # the short form's
        recs = recs[0]
    if isinstance(recs, str):
        if carried is None and not env.codes:   # kept from the array form: the node sends it again, with k
            raise NoEnvelope(boot, f"boot {boot}: the envelope kept for this boot has no k, which packed records "
                                   "need (payload v2 sends it with a boot's first batch of each session)")
        records, refused = _packed_records(recs, boot, env, now)
    else:
        records, refused = _records(recs, env.units, now, env)
    return Batch(topic_node, boot, env.fw, env.board, env.sensors, env.units, tuple(records), dropped,
                 tuple(refused), carried, 2)


def _envelope_v2(obj: dict[str, Any]) -> Envelope:
    sensors = {k: _str(v, f"sensors.{k}") for k, v in _obj(obj["sensors"], "sensors").items()}
    units = {q: _str(unit, f"units.{q}") for q, unit in _obj(obj["units"], "units").items()}
    keys, dec = obj["keys"], obj["dec"]
    if not isinstance(keys, list):
        raise Rejected(WRONG_TYPE, f"keys: must be an array, got {_kind(keys)}")
    if not isinstance(dec, list):
        raise Rejected(WRONG_TYPE, f"dec: must be an array, got {_kind(dec)}")
    for i, k in enumerate(keys):
        _str(k, f"keys[{i}]")
        if k in keys[:i]:
            raise Rejected(BAD_VALUE, f"keys[{i}]: {k!r} twice")
    if len(dec) != len(keys):
        raise Rejected(BAD_VALUE, f"dec: {len(dec)} decimals for {len(keys)} keys")
    for i, d in enumerate(dec):
        _int(d, f"dec[{i}]", high=DEC_MAX)
    t0 = _int(obj["t0"], "t0", low=TS_MIN - UP_MAX) if "t0" in obj else None
    sums = obj.get("sum", [])
    if not isinstance(sums, list) or sums and len(sums) != len(keys):
        raise Rejected(BAD_VALUE, f"sum: must be an array of 0 or 1 per key ({len(keys)})")
    for i, x in enumerate(sums):
        _int(x, f"sum[{i}]", high=1)
    codes = obj.get("k", [])
    if not isinstance(codes, list) or codes and len(codes) != len(keys):
        raise Rejected(BAD_VALUE, f"k: must be an array of a code per key ({len(keys)})")
    for i, x in enumerate(codes):
        _int(x, f"k[{i}]", high=511)
    return Envelope(_str(obj["fw"], "fw"), _str(obj["board"], "board"), sensors, units, tuple(keys), tuple(dec), t0,
                    tuple(sums), tuple(codes))


def _fixed(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise Rejected(WRONG_TYPE, f"{where}: must be an integer (payload v2 sends values in fixed point), "
                                   f"got {_kind(v)}")
    return v


def _items(r: list[Any], where: str, env: Envelope) -> tuple[list[Any], dict[str, Any] | None]:
    """A v2 record's items, one per place (seq, ts, up, dur, then a key each: a summary as a list of
    four), and its flags and errors object. A key of `sum` has its summary's four numbers in line;
    a list in a key's place is a summary of four in brackets, or a plain number as [x]."""
    k = len(env.keys)
    sums = env.sums or tuple(int(c >= packed.SUMMARY_CODE) for c in env.codes) or (0,) * k
    items: list[Any] = list(r[:4])
    i = 4
    try:
        for j in range(k):
            x = r[i]
            if isinstance(x, list) and len(x) == 1:
                items.append(x[0])
                i += 1
            elif x is None or isinstance(x, list) or not sums[j]:
                items.append(x)
                i += 1
            else:
                items.append(r[i:i + 4])
                if len(items[-1]) != 4:
                    raise IndexError
                i += 4
    except IndexError:
        raise Rejected(BAD_VALUE, f"{where}: {len(r)} items, too few for the envelope's {k} keys") from None
    rest = r[i:]
    if len(r) < 4 or len(rest) > 1 or rest and not isinstance(rest[0], dict):
        raise Rejected(BAD_VALUE, f"{where}: {len(r)} items, not [seq, ts, up, dur] and one place per key of the "
                                  f"envelope's {k} (then flags and errors)")
    return items, rest[0] if rest else None


def _v1_record(r: Any, where: str, env: Envelope, prev: list[Any] | None) -> tuple[dict[str, Any], list[Any]]:
    """A v2 record, `[seq, ts, up, dur, q...]` and maybe `{"f":..,"err":..}`, as v1 would have sent it,
    and its numbers whole for the next record. After a batch's first record, a number where the
    record before had one is the difference from it (a summary's four each); with the envelope's
    `t0`, ts is ts - t0 - up; a value is its integer / 10**dec (the float v1's decimal text gives),
    a summary `[a, a-min, max-a, n]` is `[avg, min, max, n]`."""
    if not isinstance(r, list):
        raise Rejected(WRONG_TYPE, f"{where}: must be an array (payload v2), got {_kind(r)}")
    items, extra = _items(r, where, env)
    cur: list[Any] = []
    for j, x in enumerate(items):
        p = prev[j] if prev is not None else None
        at = f"{where}[{j}]" if j < 4 else f"{where} {env.keys[j - 4]}"
        if x is None:
            cur.append(None)
        elif isinstance(x, list):
            if j < 4 or len(x) != 4:
                raise Rejected(BAD_VALUE, f"{at}: a summary is a, a-min, max-a, n; got {json.dumps(x)[:40]}")
            v = tuple(_fixed(y, f"{at}[{i}]") for i, y in enumerate(x))
            cur.append(tuple(a + b for a, b in zip(v, p)) if isinstance(p, tuple) else v)
        else:
            v0 = _fixed(x, at)
            cur.append(v0 + p if type(p) is int else v0)
    seq, ts, up, dur = cur[:4]
    if ts is not None and env.t0 is not None and up is not None:
        ts += env.t0 + up
    out = _v1_fields(seq, ts, up, dur, env, [v if not isinstance(v, tuple) else (v[0], v[0] - v[1], v[0] + v[2], v[3])
                                             for v in cur[4:]])
    if extra is not None:
        _fields(extra, f"{where} flags and errors", (), ("f", "err"))
        out.update(extra)
    return out, cur


def _v1_fields(seq: Any, ts: Any, up: Any, dur: Any, env: Envelope, vals: list[Any]) -> dict[str, Any]:
    """A record as v1 says it, from its whole numbers: a value integer / 10**dec (the float v1's
    decimal text gives), a summary (avg, min, max, n) as [avg, min, max, n]."""
    out: dict[str, Any] = {"seq": seq, "ts": ts, "up": up, "dur": dur}
    for key, d, v in zip(env.keys, env.dec, vals):
        scale = 10 ** d
        if v is None:
            out[key] = None
        elif isinstance(v, tuple):
            a, lo, hi, n = v
            out[key] = [a / scale, lo / scale, hi / scale, n]
        else:
            out[key] = v / scale
    return out


def _packed_records(text: str, boot: int, env: Envelope, now: float) -> tuple[list[Record], list[Refusal]]:
    """Packed records (one base64 string, packed.py) as v1's, checked as v1's are. Those from the
    first that cannot be read on are refused as one, whole, with no seq (not acknowledged: the node
    sends them again)."""
    if not text:
        raise Rejected(BAD_VALUE, "recs: must hold at least one record")
    quick = _quick_packed(text, env, now)
    if quick is not None:
        return quick, []
    bad = ""
    try:
        if not env.codes:
            raise packed.Unreadable("packed records need the envelope's k, and the one kept for this boot has none")
        got = packed.records(packed.decode_text(text), boot, env.codes)
    except packed.Unreadable as e:
        bad, got = e.args[0], e.args[1] if len(e.args) > 1 else []
    recs: list[dict[str, Any]] = []
    for p in got:
        r = _v1_fields(p.seq, p.ts, p.up, p.dur, env, list(p.vals))
        if p.flags:
            r["f"] = {env.keys[i]: [f for b, f in enumerate(packed.FLAGS) if fl >> b & 1] for i, fl in p.flags.items()}
        if p.errs:
            r["err"] = dict(p.errs)
        recs.append(r)
    records, refused = _records(recs, env.units, now, None) if recs else ([], [])
    if bad:
        refused.append(Refusal(len(recs), None, BAD_VALUE, f"recs: {bad}; it and any after it cannot be read",
                               text, whole=True))
    return records, refused


def _readable_seq(r: Any) -> int | None:
    """The seq of a refused record, when it is one the contract allows."""
    seq = r.get("seq") if isinstance(r, dict) else None
    return seq if type(seq) is int and 0 <= seq <= SEQ_MAX else None


_RECORD_FIELDS = ("seq", "ts", "up", "dur")
_RECORD_OTHER = frozenset(("f", "err"))


def _record(r: Any, where: str, units: Mapping[str, str], now: float) -> tuple[Record, list[Rejected]]:
    """A record, and the problems of values it is stored without; `Rejected` when the record
    itself cannot be stored (its seq, times or duration, its flags or error counts)."""
    r = _obj(r, where)
    for k in _RECORD_FIELDS:
        if k not in r:
            raise Rejected(MISSING_FIELD, f"{where}.{k}: missing")
    seq = _int(r["seq"], f"{where}.seq", high=SEQ_MAX)
    ts = _ts(r["ts"], f"{where}.ts", now)
    up = _int(r["up"], f"{where}.up", high=UP_MAX)
    dur = _int(r["dur"], f"{where}.dur", low=1, high=DUR_MAX)
    problems: list[Rejected] = []
    flags: dict[str, tuple[str, ...]] = {}
    for q, fl in _obj(r.get("f", {}), f"{where}.f").items():
        if not isinstance(fl, list):
            raise Rejected(WRONG_TYPE, f"{where}.f.{q}: must be an array of flags, got {_kind(fl)}")
        bad = [x for x in fl if x not in FLAGS]
        if q not in QUANTITIES:
            problems.append(Rejected(UNKNOWN_FIELD, f"{where}.f.{q}: not a quantity of payload v{VERSION}"))
        elif bad:
            problems.append(Rejected(BAD_VALUE, f"{where}.f.{q}: {json.dumps(bad[0])} is not a flag "
                                                f"({', '.join(FLAGS)})"))
            flags[q] = tuple(x for x in fl if x in FLAGS)
        else:
            flags[q] = tuple(fl)
    err = {role: _int(n, f"{where}.err.{role}") for role, n in _obj(r.get("err", {}), f"{where}.err").items()}
    values: dict[str, Value | None] = {}
    for k, v in r.items():
        if k in _RECORD_OTHER or k in _RECORD_FIELDS:
            continue
        q = QUANTITIES.get(k)
        try:
            if q is None:
                raise Rejected(UNKNOWN_FIELD, f"{where}.{k}: not a field of payload v{VERSION}")
            unit = units.get(k)
            if unit is None:
                raise Rejected(MISSING_FIELD, f"units.{k}: missing, {where} has {k}")
            if unit != q.unit:
                raise Rejected(BAD_VALUE, f"units.{k}: {unit!r}, payload v{VERSION} measures {k} in {q.unit!r}")
            values[k], rated = _value(v, q, f"{where}.{k}")
            if not rated:
                flags[k] = (*flags.get(k, ()), RANGE)
        except Rejected as e:
            problems.append(e)
            if q is not None:
                values[k] = None
                flags[k] = (*flags.get(k, ()), REFUSED)
    # the contract's order, as the quick path makes them
    values = {q: values[q] for q in QUANTITIES if q in values}
    return Record(seq, ts, up, dur, values, flags, err), problems


# -- the quick way for batches as the firmware sends them ----------------------------------------
# Nearly every batch is valid. `_plainly_valid_batch` decodes it with msgspec into types that carry
# the contract's checks (`_Envelope`: types, ranges, required and unknown fields, checked in C while
# the JSON is read) and gives up (None) on anything unusual, which `_checked_batch` then checks in
# full: every refusal, its code and its reason, comes from the full checks only; so does the `range`
# flag (the types take values within the rated range only). What the quick way accepts, the full way
# accepts too, as an equal Batch (tests/gateway/test_payload_quick.py); docs/payload.schema.json is
# the oracle of both (tests/gateway/test_payload_schema.py).
#
# Duplicate keys: msgspec keeps the last of a key given twice, as `json.loads` does. So the quick
# way takes a batch only when encoding what it decoded gives back the message byte for byte: a key
# given twice would be missing from that. The firmware writes compact JSON with its keys in the
# order of the types below (recs last), so its batches pass; one in any other form (spaces, another
# key order, a number written `1.0e1`) takes the full checks, with the same outcome.


def _ints(low: int, high: int) -> Any:
    return Annotated[int, Meta(ge=low, le=high)]


def _numbers(low: float, high: float) -> Any:
    # An integer stays an int (and a fraction a float) so that the batch encodes back as written;
    # the bounds also keep out infinities (1e400) as msgspec reads them.
    return Annotated[int, Meta(ge=low, le=high)] | Annotated[float, Meta(ge=low, le=high)]


def _quick_type(q: Quantity) -> Any:
    """A value of `q` within its rated range, null, or absent (UNSET)."""
    number = _numbers(q.low, q.high)
    # An array_like Struct rather than tuple[...]: msgspec 0.19-0.23 mixes up the bounds of a
    # number and those of a fixed-length tuple in one union (and can crash on them).
    summary = msgspec.defstruct(f"_Summary_{q.key}", [("avg", number), ("min", number), ("max", number),
                                                      ("n", _ints(q.n_low, _INT_MAX))],
                                array_like=True, forbid_unknown_fields=True)
    form = {SUMMARY: summary, SCALAR: number, SCALAR_OR_SUMMARY: number | summary}[q.form]
    return form | None | UnsetType


_Record = msgspec.defstruct(
    "_Record",
    [("seq", _ints(0, SEQ_MAX)), ("ts", _ints(TS_MIN, _INT_MAX) | None), ("up", _ints(0, UP_MAX)),
     ("dur", _ints(1, DUR_MAX)),
     *((k, _quick_type(q), UNSET) for k, q in QUANTITIES.items()),
     ("f", dict[Literal[tuple(QUANTITIES)], list[Literal[FLAGS]]] | UnsetType, UNSET),  # type: ignore[misc]
     ("err", dict[str, _ints(0, _INT_MAX)] | UnsetType, UNSET)],
    forbid_unknown_fields=True)

_Text = Annotated[str, Meta(min_length=1)]
_Envelope = msgspec.defstruct(
    "_Envelope",
    [("v", Literal[VERSION]), ("node", str), ("boot", _ints(0, BOOT_MAX)), ("fw", _Text), ("board", _Text),
     ("sensors", dict[str, _Text]), ("units", dict[str, str]), ("dropped", _ints(0, _INT_MAX) | UnsetType, UNSET),
     ("recs", Annotated[list[_Record], Meta(min_length=1)])],  # type: ignore[valid-type]
    kw_only=True, forbid_unknown_fields=True)

_quick_decode = msgspec.json.Decoder(_Envelope).decode
_encode = msgspec.json.Encoder().encode
_quick_fields = msgspec.structs.astuple
_UNITS = {q.key: q.unit for q in QUANTITIES.values()}
_UNIT_ITEMS = _UNITS.items()
_KEYS = tuple(QUANTITIES)
_new_tuple = tuple.__new__  # a Value of fields just checked, without Value.__new__'s check again


def _plainly_valid_batch(payload: bytes, topic_node: str, now: float, encoded: bool = False) -> Batch | None:
    """`_checked_batch(decode(payload))` for a batch that is plainly valid, found quickly; None
    for anything else. `encoded`: each record encoded for the store on the way (`parse_batch`)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:
        doc = _quick_decode(payload)
    except msgspec.MsgspecError:  # not JSON, not UTF-8, or not plainly valid
        return None
    node, units = doc.node, doc.units
    if not (node == topic_node and NODE_ID.fullmatch(node) and units.items() <= _UNIT_ITEMS
            and _encode(doc) == payload):
        return None
    records = []
    last_seq = -1
    ts_max = now + FUTURE_MARGIN_S
    encode = _encoder() if encoded else None
    every_unit = len(units) == len(_KEYS)  # (units within `_UNIT_ITEMS`): every quantity's
    for r in doc.recs:
        seq, ts, up, dur, *given, f, err = _quick_fields(r)
        if seq <= last_seq or (ts is not None and ts > ts_max):
            return None
        last_seq = seq
        enc = encode(given, None if f is UNSET else f, _quick_fields) if encode is not None else None
        if enc is not None and (every_unit or {k for k, x in zip(_KEYS, given) if x is not UNSET} <= units.keys()):
            # the values stay in `enc` until something asks for them
            flags = {} if f is UNSET else {q: tuple(fl) for q, fl in f.items()}
            records.append(Record(seq, ts, up, dur, _Stored(enc), flags, {} if err is UNSET else err, enc))
            continue
        values: dict[str, Value | None] = {}
        for k, x in zip(_KEYS, given):
            if x is UNSET:
                continue
            if x is None:
                values[k] = None
            elif type(x) is int or type(x) is float:
                values[k] = _new_tuple(Value, (float(x), None, None, None))
            else:  # a summary
                avg, lo, hi, n = _quick_fields(x)
                if lo > hi:
                    return None
                values[k] = _new_tuple(Value, (float(avg), float(lo), float(hi), n))
        if not values.keys() <= units.keys():
            return None
        flags = {} if f is UNSET else {q: tuple(fl) for q, fl in f.items()}
        records.append(Record(seq, ts, up, dur, values, flags, {} if err is UNSET else err))
    return Batch(node, doc.boot, doc.fw, doc.board, doc.sensors, units, tuple(records),
                 None if doc.dropped is UNSET else doc.dropped)


_encode_decoded: Callable[..., tuple[bytes, bytes, int] | None] | None = None


def _encoder() -> Callable[..., tuple[bytes, bytes, int] | None]:
    """store.values.encode_decoded, imported on first use (store.values imports this module)."""
    global _encode_decoded
    if _encode_decoded is None:
        from .store.values import encode_decoded
        _encode_decoded = encode_decoded
    return _encode_decoded


class _Stored(Mapping[str, "Value | None"]):
    """A quick-path record's values, kept as the store encodes them (`Record.enc`) and made into
    Values only when something asks for them (the store writes `enc`; nothing on ingest's way reads
    them): the Values the loop of `_plainly_valid_batch` makes, as the encoding gives back exactly
    the numbers it was made of (store/values.py)."""

    __slots__ = ("_enc", "_values")

    def __init__(self, enc: tuple[bytes, bytes, int]) -> None:
        self._enc = enc
        self._values: dict[str, Value | None] | None = None

    def _dict(self) -> dict[str, Value | None]:
        if self._values is None:
            from .store.values import readings_of
            self._values = {q: None if v is None else _new_tuple(Value, v)
                            for q, v in readings_of(self._enc[0], self._enc[1]).items()}
        return self._values

    def keys(self) -> Any:
        return self._dict().keys()

    def __getitem__(self, key: str) -> Value | None:
        return self._dict()[key]

    def __iter__(self) -> Any:
        return iter(self._dict())

    def __len__(self) -> int:
        return self._enc[2]

    def __repr__(self) -> str:
        return repr(self._dict())


_SUMMARY_TEXT = "[avg, min, max, n]"
_EXPECTED: dict[Form, str] = {
    SUMMARY: f"{_SUMMARY_TEXT} or null",
    SCALAR: "a number or null",
    SCALAR_OR_SUMMARY: f"a number, {_SUMMARY_TEXT} (firmware 0.1.0) or null",
}


def _value(v: Any, q: Quantity, where: str) -> tuple[Value | None, bool]:
    """The value and whether it lies within its sensor's rated range; `Rejected` when it cannot be
    a measurement of `q` at all (a wrong type or shape, outside the physically possible range,
    min above max)."""
    if v is None:
        return None, True
    number = not isinstance(v, bool) and isinstance(v, (int, float))
    if number and q.form in (SCALAR, SCALAR_OR_SUMMARY):
        avg = _number(v, where)
        if not q.lowest <= avg <= q.highest:
            raise Rejected(OUT_OF_RANGE, f"{where}: {avg:g} is outside {q.possible()}, what can be measured")
        return Value(avg), q.low <= avg <= q.high
    if not isinstance(v, list) or q.form == SCALAR:
        raise Rejected(WRONG_TYPE, f"{where}: must be {_EXPECTED[q.form]}, got {_kind(v)}")
    if len(v) != 4:
        raise Rejected(BAD_VALUE, f"{where}: must be {_SUMMARY_TEXT}, got {len(v)} elements")
    avg, lo, hi = (_number(x, f"{where} {name}") for x, name in zip(v, ("avg", "min", "max")))
    n = _int(v[3], f"{where} n", low=q.n_low)
    for x, name in ((avg, "avg"), (lo, "min"), (hi, "max")):
        if not q.lowest <= x <= q.highest:
            raise Rejected(OUT_OF_RANGE, f"{where}: {name} {x:g} is outside {q.possible()}, what can be measured")
    # Only min <= max: avg between them is not checked for any quantity (and must not be for
    # LAeq, an energy mean beside Fast-weighted extremes that can lag it).
    if lo > hi:
        raise Rejected(BAD_VALUE, f"{where}: min {lo:g} is above max {hi:g}")
    return Value(avg, lo, hi, n), all(q.low <= x <= q.high for x in (avg, lo, hi))


# ---------------------------------------------------------------------------------------------
# Status


def parse_status(payload: bytes, topic_node: str, size: int | None = None) -> Status:
    """Validate one message from `<prefix>/<topic_node>/status` (also the node's last will)."""
    obj = decode(payload, size)
    _version(obj)
    _fields(obj, "", ("v", "node", "online"), ("boot", "fw", "up", "rssi", "mode", "cfg", "via", "held"))
    node = _node(obj, topic_node)
    online = obj["online"]
    if not isinstance(online, bool):
        raise Rejected(WRONG_TYPE, f"online: must be true or false, got {_kind(online)}")
    boot = _int(obj["boot"], "boot", high=BOOT_MAX) if "boot" in obj else None
    fw = _str(obj["fw"], "fw") if "fw" in obj else None
    up = _int(obj["up"], "up", high=UP_MAX) if "up" in obj else None
    # null: a board on Ethernet has no signal to report (uplink.py sends "rssi":null there)
    rssi = _int(obj["rssi"], "rssi", low=-128) if obj.get("rssi") is not None else None
    if rssi is not None and rssi > 0:
        raise Rejected(OUT_OF_RANGE, f"rssi: {rssi} is outside -128..0 dBm")
    mode = _one_of(obj["mode"], "mode", MODES) if "mode" in obj else None
    cfg = _int(obj["cfg"], "cfg", high=BOOT_MAX) if "cfg" in obj else None
    via = _int(obj["via"], "via", high=VIA_MAX) if "via" in obj else None
    held = _int(obj["held"], "held", high=SEQ_MAX) if "held" in obj else None
    return Status(node, online, boot, fw, up, rssi, mode, cfg, via, held)


def _one_of(v: Any, where: str, options: tuple[str, ...]) -> str:
    v = _str(v, where)
    if v not in options:
        raise Rejected(BAD_VALUE, f"{where}: {json.dumps(v)} is not one of {', '.join(options)}")
    return v


# ---------------------------------------------------------------------------------------------
# Events (docs/payload.md, "Events"): what a node did with what the gateway sent it, its crash
# reports and self-tests. Each kind has its fields; like everything else the contract is closed.

#: kind -> (required fields, optional fields), besides v, node and kind
_EVENT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "config": ((), ("version", "applied", "refused", "trial_s", "state", "reason", "back_to")),
    "ota": (("state",), ("release", "back_to", "reason")),
    "cmd": (("state", "reason"), ("id",)),
    "crash": (("boot", "at_up", "count", "trace"), ()),
    "safe_mode": (("crashes",), ()),
    "selftest": ((), ("id", "checks", "state", "reason")),
}


def parse_event(payload: bytes, topic_node: str, size: int | None = None) -> Event:
    """Validate one message from `<prefix>/<topic_node>/event`, or `Rejected` naming the field."""
    obj = decode(payload, size)
    _version(obj)
    for k in ("node", "kind"):
        if k not in obj:
            raise Rejected(MISSING_FIELD, f"{k}: missing")
    node = _node(obj, topic_node)
    kind = _one_of(obj["kind"], "kind", EVENT_KINDS)
    required, optional = _EVENT_FIELDS[kind]
    _fields(obj, "", ("v", "node", "kind", *required), optional)
    state: str | None = None
    if kind == "config":
        state = _config_state(obj)
        if "version" in obj:
            _int(obj["version"], "version", high=BOOT_MAX)
        applied = obj.get("applied", [])
        if not isinstance(applied, list):
            raise Rejected(WRONG_TYPE, f"applied: must be an array of config keys, got {_kind(applied)}")
        for i, key in enumerate(applied):
            _str(key, f"applied[{i}]")
        for key, why in _obj(obj.get("refused", {}), "refused").items():
            _str(why, f"refused.{key}")
        if "trial_s" in obj:
            _int(obj["trial_s"], "trial_s", high=BOOT_MAX)
    elif kind == "ota":
        state = _one_of(obj["state"], "state", OTA_STATES)
        for k in ("release", "back_to", "reason"):
            if k in obj:
                _str(obj[k], k)
    elif kind == "cmd":
        state = _one_of(obj["state"], "state", ("refused",))
        _str(obj["reason"], "reason")
        if "id" in obj:
            _int(obj["id"], "id", high=BOOT_MAX)
    elif kind == "crash":
        _int(obj["boot"], "boot", high=BOOT_MAX)
        _int(obj["at_up"], "at_up", high=UP_MAX)
        _int(obj["count"], "count", high=BOOT_MAX)   # 0: an error after the node measured, not counted
        trace = _str(obj["trace"], "trace")
        if len(trace.encode("utf-8")) > TRACE_MAX_BYTES:
            raise Rejected(OUT_OF_RANGE, f"trace: {len(trace.encode('utf-8'))} bytes, a node sends at most "
                                         f"{TRACE_MAX_BYTES}")
    elif kind == "safe_mode":
        _int(obj["crashes"], "crashes", low=1, high=BOOT_MAX)
    else:  # selftest
        state = _refusal(obj, "id")
        if "id" in obj:
            _int(obj["id"], "id", high=BOOT_MAX)
        if state is None and "checks" not in obj:
            raise Rejected(MISSING_FIELD, "checks: missing")
        for item, result in _obj(obj.get("checks", {}), "checks").items():
            where = f"checks.{item}"
            if not isinstance(result, list) or len(result) != 2:
                raise Rejected(WRONG_TYPE, f'{where}: must be ["pass" or "fail", "<detail>"], got {_kind(result)}'
                               + (f" of {len(result)}" if isinstance(result, list) else ""))
            _one_of(result[0], f"{where}[0]", CHECK_RESULTS)
            if not isinstance(result[1], str):
                raise Rejected(WRONG_TYPE, f"{where}[1]: must be a string, got {_kind(result[1])}")
    return Event(node, kind, obj, state)


def _config_state(obj: dict[str, Any]) -> str | None:
    """A config event: taken (no state: `version`, `applied`, `refused`, `trial_s` when on trial),
    refused whole (`reason`), or the end of a trial: `proved` (`version`) or `reverted` (`version`,
    `back_to`: the version the node runs again, `reason`)."""
    state = obj.get("state")
    if state not in ("proved", "reverted"):
        if "back_to" in obj:
            raise Rejected(UNKNOWN_FIELD, 'back_to: only with "state":"reverted"')
        if state is not None and "trial_s" in obj:
            raise Rejected(UNKNOWN_FIELD, "trial_s: only in a configuration taken")
        return _refusal(obj, "version", CONFIG_STATES)
    for k in ("applied", "refused", "trial_s"):
        if k in obj:
            raise Rejected(UNKNOWN_FIELD, f"{k}: only in a configuration taken")
    need = ("version", "back_to", "reason") if state == "reverted" else ("version",)
    for k in need:
        if k not in obj:
            raise Rejected(MISSING_FIELD, f'{k}: missing (a "{state}" configuration event names it)')
    if state == "proved" and "back_to" in obj:
        raise Rejected(UNKNOWN_FIELD, 'back_to: only with "state":"reverted"')
    if state == "proved" and "reason" in obj:
        raise Rejected(UNKNOWN_FIELD, 'reason: only with "state":"refused" or "reverted"')
    if state == "reverted":
        _int(obj["back_to"], "back_to", high=BOOT_MAX)
        _str(obj["reason"], "reason")
    return str(state)


def _refusal(obj: dict[str, Any], needed: str, states: tuple[str, ...] = ("refused",)) -> str | None:
    """A config or selftest event either answers (`needed` given) or says the message was not taken
    (`"state":"refused"` with a `reason`: a bad MAC, another node's): its state, None for an answer."""
    if "state" not in obj:
        if needed not in obj:
            raise Rejected(MISSING_FIELD, f"{needed}: missing (or \"state\":\"refused\" with a reason)")
        if "reason" in obj:
            raise Rejected(UNKNOWN_FIELD, 'reason: only with "state":"refused"')
        return None
    _one_of(obj["state"], "state", states)
    if "reason" not in obj:
        raise Rejected(MISSING_FIELD, 'reason: missing (a "refused" event says why)')
    _str(obj["reason"], "reason")
    return "refused"


# -- the quick way for packed records (payload v2) ----------------------------------------------
# A node's packed records are read by packed.quick_records (a record's bits cut into codes by a
# regular expression, its deltas added with map()) and checked a run of records at a time (those
# with the same null keys) with map() over their numbers, against bounds made once per envelope and
# layout. Anything but plainly valid records (a value outside its rated range, a time not
# plausible, bits that are not records, an envelope whose keys or units the checks would refuse)
# gives None, and `_packed_records` takes the checked way, whose Batch, refusals and dead letters
# are the only ones (tests/gateway/test_payload_v2.py compares both ways on every firmware-made
# batch and on hostile ones). The same Records come out: the same integers divided by the same
# 10**dec, the same bounds compared.


class _QuickBuild:
    """For one layout of an envelope's records (packed.Layout), what checks and makes the Records of
    a run of them: bounds, scales and pickers over the run's numbers, made once per run length."""

    def __init__(self, keys: tuple[str, ...], dec: tuple[int, ...], lay: packed.Layout) -> None:
        self.sums = [keys[i] for i in lay.sums]
        self.plains = [keys[i] for i in lay.plains]
        self.scale = dict(zip(keys, (10 ** d for d in dec)))
        present = set(self.sums + self.plains)
        #: the keys of a record's values in the contract's order (those not null; `nulls` has all)
        self.keys = [k for k in QUANTITIES if k in present]
        self.nulls = dict.fromkeys(k for k in QUANTITIES if k in keys) if len(present) < len(keys) else None
        self.runs: dict[int, tuple[Any, ...]] = {}

    def _rated(self, k: str) -> tuple[int, int]:
        """The least and the most integer whose value (integer / 10**dec) lies within k's rated range
        (its bounds are integers, so comparing integers is comparing the floats as the checks do)."""
        q, s = QUANTITIES[k], self.scale[k]
        return int(q.low * s), int(q.high * s)

    def run(self, r: int) -> tuple[Any, ...]:
        """For r records of packed.Layout's `nums` (per record: averages, plain numbers, counts, min -
        average, max - average): pickers of the averages twice and of the spreads (their sums are
        the mins and maxes, appended to nums: `w`), the least and the most each number of `w` may be,
        where the mins end, the picker of the averages, plain numbers, mins and maxes to divide and
        their scales, the picker of each Value's four fields in their quotients + w + [None], and
        Value once a value."""
        got = self.runs.get(r)
        if got is not None:
            return got
        sums, plains = self.sums, self.plains
        ns, np = len(sums), len(plains)
        w1 = 4 * ns + np
        bases = range(0, r * w1, w1)
        avgs = [b + j for b in bases for j in range(ns)]
        ext = r * w1  # where the mins start in w, r * ns later the maxes
        rated = [self._rated(k) for k in sums + plains]
        counts = [(QUANTITIES[k].n_low, _INT_MAX) for k in sums]
        spread = [(-_INT_MAX, _INT_MAX)] * (2 * ns)  # min - average, max - average: as the mins and maxes
        bounds = (rated + counts + spread) * r + [self._rated(k) for k in sums] * r * 2
        divided = [x for b in bases for x in [b + j for j in range(ns + np)] +
                   [ext + b // w1 * ns + j for j in range(ns)] + [ext + (r + b // w1) * ns + j for j in range(ns)]]
        scales = [self.scale[k] for k in sums + plains + sums + sums] * r
        f1 = 3 * ns + np
        none = len(divided) + r * w1 + 2 * r * ns  # the None after w
        fields: list[int] = []
        for i, b in enumerate(bases):
            at = {k: (i * f1 + j, i * f1 + ns + np + j, i * f1 + 2 * ns + np + j, len(divided) + b + ns + np + j)
                  for j, k in enumerate(sums)}
            at.update((k, (i * f1 + ns + j, none, none, none)) for j, k in enumerate(plains))
            fields += [x for k in self.keys for x in at[k]]
        got = (packed.picker(avgs * 2),
               packed.picker([b + 2 * ns + np + j for b in bases for j in range(ns)] +
                             [b + 3 * ns + np + j for b in bases for j in range(ns)]),
               [lo for lo, _ in bounds], [hi for _, hi in bounds], ext + r * ns, packed.picker(divided), scales,
               packed.picker(fields), (Value,) * (r * len(self.keys)))
        if len(self.runs) >= 64:
            self.runs.clear()
        self.runs[r] = got
        return got


class _QuickEnvelope:
    """What the quick way makes once per envelope (keys, decimals, k): the quick reader of its k,
    and a _QuickBuild per layout."""

    def __init__(self, env: Envelope) -> None:
        self.reader = packed.quick(env.codes)
        self.keys, self.dec = env.keys, env.dec
        self.builds: dict[packed.Layout, _QuickBuild] = {}

    def build(self, lay: packed.Layout) -> _QuickBuild:
        if len(self.builds) >= 256:
            self.builds.clear()
        b = self.builds[lay] = _QuickBuild(self.keys, self.dec, lay)
        return b


def _quick_takes(env: Envelope) -> bool:
    """Every key of the envelope is a quantity, in its unit, coded in a form the checks take: else
    the checks refuse something in every record (also of a null value), and the quick way leaves
    them to it."""
    if not env.codes or len(env.codes) != len(env.keys):
        return False
    for k, c in zip(env.keys, env.codes):
        q = QUANTITIES.get(k)
        if q is None or env.units.get(k) != q.unit or not (float(q.low).is_integer() and float(q.high).is_integer()):
            return False
        if (q.form == SUMMARY and c < packed.SUMMARY_CODE) or (q.form == SCALAR and c >= packed.SUMMARY_CODE):
            return False
    return True


#: id(envelope) -> (the envelope, its quick way or None): the store hands out the same Envelope for
#: a boot's batches; the entry holds the envelope, so that its id is no other's meanwhile
_quick_by_id: dict[int, tuple[Envelope, _QuickEnvelope | None]] = {}
#: (keys, dec, k) -> the quick way: the same for every boot of a firmware's nodes
_quick_by_shape: dict[tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]], _QuickEnvelope] = {}
_QUICK_CACHED = 1024
#: a packed flags number -> its flags' names (packed.FLAGS, bit 0 first)
_FLAG_NAMES = tuple(tuple(f for b, f in enumerate(packed.FLAGS) if n >> b & 1) for n in range(128))


def _quick_envelope(env: Envelope) -> _QuickEnvelope | None:
    got = _quick_by_id.get(id(env))
    if got is not None and got[0] is env:
        return got[1]
    q = None
    if _quick_takes(env):
        shape = (env.keys, env.dec, env.codes)
        q = _quick_by_shape.get(shape)
        if q is None:
            if len(_quick_by_shape) >= _QUICK_CACHED:
                _quick_by_shape.clear()
            q = _quick_by_shape[shape] = _QuickEnvelope(env)
    if len(_quick_by_id) >= _QUICK_CACHED:
        _quick_by_id.clear()
    _quick_by_id[id(env)] = (env, q)
    return q


def _quick_packed(text: str, env: Envelope, now: float) -> list[Record] | None:
    """`_packed_records(text, ...)`'s records when they are plainly valid (then it refuses none), else None."""
    qe = _quick_envelope(env)
    if qe is None:
        return None
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):  # not base64 (or not ASCII): the checked way says why
        return None
    runs = packed.quick_records(data, qe.reader)
    if not runs:
        return None
    keys = env.keys
    ts_max = now + FUTURE_MARGIN_S
    out = []
    last_flags: dict[int, int] | None = None
    named: dict[str, tuple[str, ...]] = {}
    for lay, heads, w in runs:
        b = qe.builds.get(lay) or qe.build(lay)
        avgs, spreads, least, most, maxes, divided, scales, fields, values = b.run(len(heads))
        mins = len(w)
        w += map(add, avgs(w), spreads(w))
        if not (all(map(le, least, w)) and all(map(le, w, most)) and all(map(le, w[mins:maxes], w[maxes:]))):
            return None
        f = list(map(truediv, divided(w), scales))
        f += w
        f.append(None)
        it = iter(fields(f))
        vals = map(_new_tuple, values, zip(it, it, it, it))
        for seq, ts, up, dur, flags, errs in heads:
            if not (seq <= SEQ_MAX and 0 <= up <= UP_MAX and 1 <= dur <= DUR_MAX
                    and (ts is None or TS_MIN <= ts <= ts_max)):
                return None
            if flags is not last_flags:
                named = {keys[i]: _FLAG_NAMES[n] for i, n in flags.items()}
                last_flags = flags
            if b.nulls is None:
                v = dict(zip(b.keys, vals))
            else:
                v = b.nulls.copy()
                v.update(zip(b.keys, vals))
            out.append(Record(seq, ts, up, dur, v, named.copy() if named else {}, errs))
    return out


_short_decode = msgspec.json.Decoder(tuple[Literal[2], _ints(0, BOOT_MAX), str]).decode  # type: ignore[misc]


def _plainly_valid_short(payload: bytes, topic_node: str, now: float, envelope_of: EnvelopeOf | None) -> Batch | None:
    """`_checked_batch(decode(payload))` for a short v2 batch `[2,boot,"records"]` of a boot whose
    envelope is kept, with records plainly valid; None for anything else."""
    if len(payload) > MAX_MESSAGE_BYTES or envelope_of is None:
        return None
    try:
        _, boot, text = _short_decode(payload)
    except msgspec.MsgspecError:  # not JSON, not this form, a boot out of range: the checks say why
        return None
    env = envelope_of(topic_node, boot) if text else None
    records = _quick_packed(text, env, now) if env is not None else None
    if records is None:
        return None
    return Batch(topic_node, boot, env.fw, env.board, env.sensors, env.units, tuple(records), 0, (), None, 2)
