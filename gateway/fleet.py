"""The fleet register: what the gateway knows of each node besides its data.

One TOML file, its path in `[fleet] path` of gateway.toml (or a sensorthings target's own
`fleet`), one table per node. Every key is optional:

    [nodes."ams-001"]
    board = "esp32-devkitc"                 # the board file's name (boards/<board>.json)
    name = "Dam, lamp post 12"              # where it is, for people
    lat = 52.37310                          # WGS84 degrees, north positive
    lon = 4.89220                           # WGS84 degrees, east positive (lat and lon go together)
    height_m = 3.5                          # mounting height above the ground, metres
    installed = 2026-11-24                  # a TOML local date
    serials = { pm = "PMS5003-2311-0412", mic = "ICS-7781", climate = "BME-0042" }
    noise_offset_db = -1.3                  # the microphone's calibration offset, dB (-20 to 20)
    calibrated = 2026-11-20                 # when that offset was measured
    notes = "bracket on the canal side"     # free text; never sent upstream
    chip = "240ac4123456"                   # written by `meetkit provision`: the ESP32's id (its MAC)
    fw = "0.2.0"                            # written by `meetkit provision`
    provisioned = 2026-11-24T10:12:00Z      # written by `meetkit provision`: a date-time with its offset

    [nodes."ams-001".config]                # the node's settings, sent to it by the gateway (configpub.py)
    interval_s = 60                         # keys of the firmware's config.json (CONFIG_KEYS)
    wifi = { ssid = "lab" }                 # the password: the secrets file ([fleet] secrets), never here
    broker = { host = "meetkit-gw", port = 8883, tls = true }   # the account: the broker folder's secrets

`serials` takes the sensor roles of the board files only (pm, mic, climate), so a mistyped role
is caught instead of published. `config` takes the keys of the firmware's config.json that a node
may be sent (`CONFIG_KEYS`), checked here for their form (a whole number, a string, the tables of
`wifi` and `broker`, or arrays of them); their ranges are the firmware's own rules, which `meetkit
fleet set` and `meetkit fleet check` apply (tools/nodeconfig.py) and the node applies again (it
names what it refuses). The calibration offset is the node's `noise_offset_db` above, not a key of
`config`: one place for it, beside the date it was measured; the gateway sends it with the rest.
No password is ever in the register: a `password` or `user` key in `wifi` or `broker` is an error
(the secrets come from files the gateway reads: gateway/fleet_secrets.py).

A board name is checked for its form only: the gateway on a Pi does not ship boards/, and a lab
may have boards of its own.

    fleet = Fleet(path)
    fleet.node_metadata("ams-001")  # {"lat": 52.3731, "lon": 4.8922, "installed": date(2026, 11, 24), ...} or None
    fleet.nodes()                   # every node of the register: {"ams-001": {...}, "ams-002": {}}

Values come out typed: numbers as float, dates as `datetime.date`, `provisioned` as an aware
`datetime.datetime`, `chip` in lower case. The file is read again when it changes, so a node added
to it needs no restart. A file that is missing or wrong raises `FleetError` listing every problem
by key (`nodes."ams-001".lat: must be a number from -90 to 90, got 152.4 (a number)`): the caller
holds back what needs it rather than guess, since a position sent upstream without its node is
hard to take back. `parse` is also what `meetkit fleet` (tools/fleetfile.py) checks an edit with
before it replaces the file.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
import tomllib
from pathlib import Path
from typing import Any, Callable

from .config import _describe, _unknown  # the same wording as gateway.toml's errors
from .payload import NODE_ID

KEYS = ("board", "name", "lat", "lon", "height_m", "installed", "serials", "noise_offset_db", "calibrated",
        "notes", "chip", "fw", "provisioned", "config")
#: the keys of a node's `config` table: the keys of the firmware's config.json (firmware/lib/config.py)
#: that the gateway sends a node, but node_id (never changed remotely) and noise_offset_db (the
#: register's own key, above); tests/tools/test_fleetfile.py holds this to the firmware's DEFAULTS
CONFIG_INTS = ("interval_s", "climate_every_s", "ntp_every_s", "rh_high_pct", "spool_kb", "trial_s",
               "config_trial_s", "failover_after_s", "failback_every_s", "batch_records", "payload")
CONFIG_TEXTS = ("ntp_host", "topic_prefix")
CONFIG_KEYS = (*CONFIG_INTS, *CONFIG_TEXTS, "wifi", "broker")
WIFI_KEYS = ("ssid",)
BROKER_KEYS = ("host", "port", "tls", "ca")
SERIALS = ("pm", "mic", "climate")  # the sensor roles of the board files and of the records' `sensors`
BOARD = re.compile(r"[a-z0-9-]{1,64}")
CHIP = re.compile(r"[0-9a-fA-F]{12}")
TEXT_MAX = 200  # characters of a name, serial or firmware version; notes are free

Check = Callable[[Any], "tuple[Any, str | None]"]


class FleetError(Exception):
    """The fleet file cannot be used; `errors` lists every problem, one line each."""

    def __init__(self, source: Path, errors: list[str]) -> None:
        super().__init__(f"fleet file {source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


def describe(v: Any) -> str:
    """A value as the error messages show it; TOML's dates and times by their kind."""
    if isinstance(v, dt.datetime):
        return f"{v.isoformat()} ({'a date-time' if v.tzinfo else 'a local date-time, without an offset'})"
    if isinstance(v, dt.date):
        return f"{v.isoformat()} (a date)"
    if isinstance(v, dt.time):
        return f"{v.isoformat()} (a time)"
    return _describe(v)


def _number(low: float, high: float) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
            return None, f"must be a number from {low:g} to {high:g}, got {describe(v)}"
        return float(v), None

    return check


def _text(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not v.strip() or len(v) > TEXT_MAX:
        return None, f"must be a non-empty string of at most {TEXT_MAX} characters, got {describe(v)}"
    return v, None


def _notes(v: Any) -> tuple[Any, str | None]:
    return (v, None) if isinstance(v, str) else (None, f"must be a string, got {describe(v)}")


def _board(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not BOARD.fullmatch(v):
        return None, f'must be a board name (a-z, 0-9 and "-"), like "esp32-devkitc", got {describe(v)}'
    return v, None


def _date(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, dt.date) or isinstance(v, dt.datetime):
        return None, f"must be a date like 2026-11-24 (TOML, without quotes), got {describe(v)}"
    return v, None


def _moment(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, dt.datetime) or v.tzinfo is None:
        return None, f"must be a date-time with its offset like 2026-11-24T10:12:00Z (TOML), got {describe(v)}"
    return v, None


def _chip(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not CHIP.fullmatch(v):
        return None, f'must be the chip id: 12 hex digits (its MAC without ":"), like "240ac4123456", got {describe(v)}'
    return v.lower(), None


CHECKS: dict[str, Check] = {
    "board": _board,
    "name": _text,
    "lat": _number(-90, 90),
    "lon": _number(-180, 180),
    "height_m": _number(-100, 1000),
    "installed": _date,
    "noise_offset_db": _number(-20, 20),
    "calibrated": _date,
    "notes": _notes,
    "chip": _chip,
    "fw": _text,
    "provisioned": _moment,
}


def _entries(v: Any, where: str, keys: tuple[str, ...], required: str, secret: str, errors: list[str]) -> Any:
    """A `wifi` or `broker` value: a table of `keys` (`required` among them), or a non-empty array
    of such tables; None (and the problems in `errors`) when it is not. `secret` says where the
    password comes from, for a `password` or `user` key, whose value is never repeated."""
    tables = v if isinstance(v, list) else [v]
    if not tables:
        errors.append(f"{where}: an empty array; give one table or more")
        return None
    n = len(errors)
    for i, t in enumerate(tables):
        at = f"{where}[{i}]" if isinstance(v, list) else where
        if not isinstance(t, dict):
            errors.append(f"{at}: must be a table like {{ {required} = \"...\" }}, got {describe(t)}")
            continue
        for key, x in t.items():
            if key in ("password", "user"):
                errors.append(f"{at}.{key}: never in the register: {secret}")
            elif key not in keys:
                errors.append(_unknown(f"{at}.{key}", list(keys)))
            elif key == "port" and (isinstance(x, bool) or not isinstance(x, int)):
                errors.append(f"{at}.port: must be a whole number, got {describe(x)}")
            elif key == "tls" and not isinstance(x, bool):
                errors.append(f"{at}.tls: must be true or false, got {describe(x)}")
            elif key not in ("port", "tls") and (not isinstance(x, str) or not x):
                errors.append(f"{at}.{key}: must be a non-empty string, got {describe(x)}")
        if required not in t:
            errors.append(f"{at}.{required}: missing")
    return None if len(errors) > n else v


WIFI_SECRET = ('the password goes in the secrets file named by [fleet] secrets of gateway.toml, '
               '[wifi] "<ssid>" = "<password>"')
BROKER_SECRET = ("the node's account (user: its node id, its password) comes from the broker folder's secrets.json, "
                 "[fleet] broker_secrets of gateway.toml")


def _config(v: Any, where: str, errors: list[str]) -> dict[str, Any] | None:
    """A node's `config` table, its form checked (the firmware's rules check the values)."""
    if not isinstance(v, dict):
        errors.append(f'{where}: must be a table [nodes."<id>".config], got {describe(v)}')
        return None
    out: dict[str, Any] = {}
    n = len(errors)
    for key, x in v.items():
        at = f"{where}.{key}"
        if key == "noise_offset_db":
            errors.append(f"{at}: the calibration is the node's own noise_offset_db (beside `calibrated`), "
                          "not a key of config; the gateway sends it with the rest")
        elif key == "node_id":
            errors.append(f"{at}: a node's id is never changed remotely")
        elif key not in CONFIG_KEYS:
            errors.append(_unknown(at, list(CONFIG_KEYS)))
        elif key in CONFIG_INTS:
            if isinstance(x, bool) or not isinstance(x, int):
                errors.append(f"{at}: must be a whole number, got {describe(x)}")
            else:
                out[key] = x
        elif key in CONFIG_TEXTS:
            if not isinstance(x, str) or not x:
                errors.append(f"{at}: must be a non-empty string, got {describe(x)}")
            else:
                out[key] = x
        elif key == "wifi":
            out[key] = _entries(x, at, WIFI_KEYS, "ssid", WIFI_SECRET, errors)
        else:
            out[key] = _entries(x, at, BROKER_KEYS, "host", BROKER_SECRET, errors)
    return None if len(errors) > n else out


def _serials(v: Any, where: str, errors: list[str]) -> dict[str, str] | None:
    if not isinstance(v, dict):
        errors.append(f'{where}: must be a table like {{ pm = "...", mic = "..." }}, got {describe(v)}')
        return None
    out: dict[str, str] = {}
    for role, serial in v.items():
        if role not in SERIALS:
            errors.append(_unknown(f"{where}.{role}", list(SERIALS)).replace("unknown key", "unknown sensor role"))
            continue
        value, problem = _text(serial)
        if problem:
            errors.append(f"{where}.{role}: {problem}")
        else:
            out[role] = value
    return out if len(out) == len(v) else None


def _node(table: dict[str, Any], where: str, errors: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in table.items():
        if key == "serials":
            serials = _serials(value, f"{where}.serials", errors)
            if serials is not None:
                meta["serials"] = serials
            continue
        if key == "config":
            config = _config(value, f"{where}.config", errors)
            if config is not None:
                meta["config"] = config
            continue
        if key not in CHECKS:
            errors.append(_unknown(f"{where}.{key}", list(KEYS)))
            continue
        checked, problem = CHECKS[key](value)
        if problem:
            errors.append(f"{where}.{key}: {problem}")
        else:
            meta[key] = checked
    if ("lat" in table) != ("lon" in table):
        errors.append(f"{where}: lat and lon go together")
    return meta


def parse(doc: dict[str, Any], source: Path) -> dict[str, dict[str, Any]]:
    """Node id -> metadata from a parsed fleet file (tomllib's), or FleetError naming every problem."""
    errors: list[str] = []
    out: dict[str, dict[str, Any]] = {}
    for key in doc:
        if key != "nodes":
            errors.append(f'{key}: unknown key (the file has [nodes."<id>"] tables only)')
    nodes = doc.get("nodes", {})
    if not isinstance(nodes, dict):
        errors.append('nodes: must be tables [nodes."<id>"]')
        nodes = {}
    for node, table in nodes.items():
        where = f'nodes."{node}"'
        if not NODE_ID.fullmatch(node):
            errors.append(f"{where}: not a node id ([a-z0-9-], 1 to 32 characters)")
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: must be a table")
            continue
        out[node] = _node(table, where, errors)
    if errors:
        raise FleetError(source, errors)
    return out


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The register at `path`, read and checked; FleetError when it cannot be read or is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FleetError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise FleetError(path, [f"not UTF-8 text: {e}"]) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetError(path, [f"not valid TOML: {e}"]) from None
    return parse(doc, path)


class Fleet:
    """The fleet file at `path` (None: no file, nothing is known of any node). Safe to share
    between threads (the status page's requests and the forwarders)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._nodes: dict[str, dict[str, Any]] = {}
        self._errors: list[str] | None = None  # the problems of the file as last read

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every node of the register (empty without a file); FleetError while it is wrong."""
        if self.path is None:
            return {}
        with self._lock:
            try:
                st = self.path.stat()
            except OSError as e:
                self._stamp = None
                raise FleetError(self.path, [f"cannot read the file: {e.strerror or e}"]) from None
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # an atomic replace is a new inode
            if stamp != self._stamp:
                try:
                    self._nodes, self._errors = load(self.path), None
                except FleetError as e:
                    self._nodes, self._errors = {}, e.errors
                self._stamp = stamp
            if self._errors is not None:  # a new exception each time: one raised again keeps growing its traceback
                raise FleetError(self.path, self._errors)
            return self._nodes

    def node_metadata(self, node: str) -> dict[str, Any] | None:
        """What the file says of `node` (the keys of KEYS it gives), None when it says nothing."""
        return self.nodes().get(node) or None
