"""The gateway's one configuration file, `gateway.toml`, read and validated.

Every problem is reported at once, each naming its key (``mqtt.port: must be an integer from 1 to
65535, got "1883" (a string)``); unknown keys are errors too, with a suggestion when one is close.
A relative `store.path` is taken relative to the folder of the configuration file, not the
working directory, so the same file works from a shell and from systemd; so are a forwarding
target's `token_file`, `password_file` and `fleet`, the files of `[fleet]`, and `[ota]`'s
`release_keys` and `releases`.

`[http]` is where the status page and /metrics listen. Each `[[forward]]` table is one upstream
target (gateway/forward/). `type = "influx"`: InfluxDB line protocol over HTTP, `api = "v1"`
(`/write?db=`, optional `username` with `password_file`: HTTP basic auth) or `api = "v2"`
(`/api/v2/write?org=&bucket=`, `token_file` required); `type = "mqtt"`: an upstream MQTT broker
(`mqtt://` or `mqtts://`, with `ca_file` and optionally a client certificate); `type =
"sensor.community"`: its push API, for the nodes mapped in `sensors`; `type = "sensorthings"`: an
OGC SensorThings API service root (optional `username` with `password_file`, or `token_file` for
"Authorization: Bearer"; optional `fleet`, the file with the nodes' positions, else `[fleet] path`).
Secrets are read from files, never written in gateway.toml; the files are read at every attempt, so a
fixed file is picked up without a restart.
"""

from __future__ import annotations

import difflib
import logging
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import SplitResult, urlsplit

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None  # from mqtt.password, or read from password_file
    password_file: Path | None = None
    client_id: str = "meetkit-gateway"
    topic_prefix: str = "meetkit"
    keepalive: int = 60


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    # the bounds (retention.py): pages in use, and age from reception in days (0: no age bound)
    max_bytes: int = 2_000_000_000
    max_age_days: int = 365
    # what was refused has budgets of its own, outside max_bytes: in all, and per node
    dead_letters_max_bytes: int = 64_000_000
    dead_letters_node_max_bytes: int = 2_000_000
    dead_letters_node_max: int = 2000


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"

    @property
    def level_number(self) -> int:
        return logging.getLevelName(self.level)


@dataclass(frozen=True)
class HttpConfig:
    """Where the status page, /healthz and /metrics listen."""

    host: str = "127.0.0.1"
    port: int = 8080
    # the page's one time zone for its tables and plots (IANA name; 24-hour clock, day before month)
    timezone: str = "Europe/Amsterdam"


FORWARD_TYPES = ("influx", "mqtt", "sensor.community", "sensorthings")
INFLUX_APIS = ("v1", "v2")
MQTT_TOPIC = "meetkit/{node}/records"  # one message per record
MQTT_PROTOCOLS = ("v5", "v3.1.1")
SENSOR_COMMUNITY_URL = "https://api.sensor.community/v1/push-sensor-data/"


@dataclass(frozen=True)
class ForwardConfig:
    """One upstream target ([[forward]] in gateway.toml)."""

    name: str
    type: str
    url: str  # scheme://host[:port][/base path]
    api: str = "v1"
    db: str | None = None  # v1
    org: str | None = None  # v2
    bucket: str | None = None  # v2
    token_file: Path | None = None  # v2: "Authorization: Token <contents>"
    username: str | None = None  # v1: HTTP basic auth with the contents of password_file
    password_file: Path | None = None
    measurement: str = "meetkit"
    batch: int = 5000  # readings per request
    timeout: float = 10.0  # seconds per request
    enabled: bool = True
    fleet: Path | None = None  # sensorthings: the nodes' positions (gateway/fleet.py); default [fleet] path
    # type = "mqtt" (username and password_file above: the broker account)
    ca_file: Path | None = None  # mqtts: the CA that signs the broker's certificate (else the system's)
    cert_file: Path | None = None  # optional client certificate and its key
    key_file: Path | None = None
    topic: str = MQTT_TOPIC  # {node} is replaced by the node id
    qos: int = 1
    retain: bool = False
    client_id: str | None = None  # default: meetkit-gateway-<name>
    protocol: str = "v5"
    # type = "sensor.community"
    sensors: tuple[tuple[str, str], ...] = ()  # (node id, X-Sensor id) pairs
    max_age: float = 300.0  # seconds after a record's interval ended; older ones are passed over


@dataclass(frozen=True)
class FleetFiles:
    """The files remote configuration and commands need ([fleet] in gateway.toml), each read
    when needed and again when it changes; None: not configured (what needs it is held back)."""

    node_keys: Path | None = None  # the broker folder's node-keys.json: signs what a node is sent
    secrets: Path | None = None  # Wi-Fi passwords by network name (gateway/fleet_secrets.py)
    broker_secrets: Path | None = None  # the broker folder's secrets.json: each node's broker password


@dataclass(frozen=True)
class OtaConfig:
    """[ota]: signed app releases and staged rollouts (docs/operator.md, "Running the fleet over the air")."""

    release_keys: tuple[Path, ...]  # Ed25519 public keys (release.pub): a release must be signed by one
    releases: Path  # the folder of kept releases (`meetkit-gateway release add`)
    offer_every_s: float = 60.0  # an offer no node answered is sent again after this long
    prove_within_s: float = 3600.0  # from "accepted": a node not proved by then halts the rollout
    # from the first offer: a node that answered none by then is skipped (the rollout goes on). Six
    # hours: a power cut or a Wi-Fi outage of an afternoon, 360 offers at the default pace
    answer_within_s: float = 21600.0
    piece_max_bytes: int = 4096  # the most a node gets in one ota/chunk, whatever it asks
    pieces_per_s: float = 20.0  # per node: more requests than this are dropped (counted)


#: a town's or a gateway's name in a region (the region plan's rule): 1 to 32 of a-z, 0-9, "-"
REGION_NAME = re.compile(r"[a-z0-9-]{1,32}")


@dataclass(frozen=True)
class RegionConfig:
    """[region]: this gateway is one of a region's (docs/operator.md, "A region of gateways")."""

    town: str  # every series it forwards carries it; the central MQTT topics too
    gateway: str  # its name in the region plan (not in any series: two gateways write the same one)
    safe_targets: tuple[str, ...]  # [[forward]] names whose acceptance makes a record safe
    # the broker folder's secrets.json: its visitors' home towns (gateway/visitors.py reads only the
    # node ids, `home` and `town` of it, never a password); default [fleet] broker_secrets; None: no
    # file, every node forwarded under `town`
    visitors: Path | None = None


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig
    store: StoreConfig
    log: LogConfig
    source: Path | None = None  # the file it came from
    http: HttpConfig = HttpConfig()
    forward: tuple[ForwardConfig, ...] = ()
    fleet: Path | None = None  # [fleet] path: the nodes' positions (gateway/fleet.py)
    fleet_files: FleetFiles = FleetFiles()  # [fleet] node_keys, secrets, broker_secrets
    ota: OtaConfig | None = None  # [ota]; None: no releases, no rollouts
    region: RegionConfig | None = None  # [region]; None: a gateway on its own (acks without `safe`)


class ConfigError(Exception):
    """The configuration cannot be used; `errors` lists every problem, one line each."""

    def __init__(self, source: Path | str, errors: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(errors))
        self.source = source
        self.errors = errors


# ---------------------------------------------------------------------------------------------
# One checker per value: returns the value or an error message (without the key).

Check = Callable[[Any], tuple[Any, str | None]]


def _describe(v: Any) -> str:
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, str):
        return f'"{v}" (a string)'
    kind = {int: "an integer", float: "a number"}.get(type(v), "a " + type(v).__name__)
    return f"{v} ({kind})"


def _text(allow_empty: bool = False) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str):
            return None, f"must be a string, got {_describe(v)}"
        if not allow_empty and not v.strip():
            return None, "must not be empty"
        return v, None

    return check


def _integer(low: int, high: int) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            return None, f"must be an integer from {low} to {high}, got {_describe(v)}"
        return v, None

    return check


def _prefix(v: Any) -> tuple[Any, str | None]:
    v, err = _text()(v)
    if err:
        return None, err
    if any(c in v for c in "+#\0"):
        return None, f'must not contain MQTT wildcards (+, #), got "{v}"'
    if v.startswith("/") or v.endswith("/") or "//" in v:
        return None, f'must not start or end with "/" or have empty levels, got "{v}"'
    return v, None


def _choice(options: tuple[str, ...]) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if not isinstance(v, str) or v not in options:
            return None, f"must be one of {', '.join(options)}, got {_describe(v)}"
        return v, None

    return check


def _timezone(v: Any) -> tuple[Any, str | None]:
    from .timefmt import zone

    v, err = _text()(v)
    if err:
        return None, err
    try:
        zone(v)
    except ValueError as e:
        return None, str(e)
    return v, None


def _boolean(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, bool):
        return None, f"must be true or false, got {_describe(v)}"
    return v, None


def _seconds(low: float, high: float) -> Check:
    def check(v: Any) -> tuple[Any, str | None]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            return None, f"must be a number of seconds from {low:g} to {high:g}, got {_describe(v)}"
        return float(v), None

    return check


def _name(v: Any) -> tuple[Any, str | None]:
    v, err = _text()(v)
    if err:
        return None, err
    if not all(c.isalnum() or c in "-_." for c in v):
        return None, f'must be letters, digits, "-", "_" or "." only, got "{v}"'
    return v, None


def _split_url(v: Any, schemes: tuple[str, str]) -> tuple[SplitResult | None, str, str | None]:
    """`v` split, if it is a URL with a host, a valid port and one of `schemes`; else the problem."""
    v, err = _text()(v)
    if err:
        return None, v, err
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        return None, v, f'is not a valid URL ({e}), got "{v}"'
    if parts.scheme not in schemes or not parts.hostname:
        return None, v, f'must be an {schemes[0]}:// or {schemes[1]}:// URL with a host, got "{v}"'
    return parts, v, None


def _url(v: Any) -> tuple[Any, str | None]:
    parts, v, err = _split_url(v, ("http", "https"))
    if parts is None:
        return None, err
    if parts.query or parts.fragment:
        return None, f'must not have a query or fragment (set db/org/bucket instead), got "{v}"'
    if parts.username or parts.password:
        return None, 'must not carry credentials (use username/password_file or token_file)'
    return v.rstrip("/"), None


# -- checkers of the mqtt and sensor.community targets -----------------------------------------------


def _mqtt_url(v: Any) -> tuple[Any, str | None]:
    parts, v, err = _split_url(v, ("mqtt", "mqtts"))
    if parts is None:
        return None, err
    if parts.path.strip("/") or parts.query or parts.fragment:
        return None, f'must be mqtt[s]://host[:port] only (set topic instead), got "{v}"'
    if parts.username or parts.password:
        return None, "must not carry credentials (use username/password_file)"
    return v.rstrip("/"), None


def _exact_url(v: Any) -> tuple[Any, str | None]:
    """As `_url`, but kept as written: sensor.community's path ends in "/" and must keep it."""
    _, err = _url(v)
    return (None, err) if err else (v, None)


def _topic_template(v: Any) -> tuple[Any, str | None]:
    v, err = _text()(v)
    if err:
        return None, err
    try:
        sample = v.format(node="n", town="t")
    except (KeyError, IndexError, ValueError) as e:
        return None, f'may contain {{node}}, {{town}} and no other placeholder ({type(e).__name__}: {e}), got "{v}"'
    if any(c in sample for c in "+#\0") or sample.startswith(("/", "$")) or sample.endswith("/") or "//" in sample:
        return None, f'must be an MQTT topic without wildcards, "$", empty levels or a leading/trailing "/", got "{v}"'
    return v, None


def _client_id(v: Any) -> tuple[Any, str | None]:
    v, err = _text()(v)
    if err:
        return None, err
    if len(v.encode()) > 128 or any(c in v for c in "+#/\0"):
        return None, f'must be at most 128 bytes without "+", "#" or "/", got "{v}"'
    return v, None


def _sensor_ids(v: Any) -> tuple[Any, str | None]:
    """`{ "<node id>" = "esp32-<chip id>", ... }`: the X-Sensor id each node is registered under."""
    import re

    if not isinstance(v, dict) or not v:
        return None, f'must be a non-empty table of node id = "esp32-<chip id>", got {_describe(v)}'
    for node, sensor in v.items():
        if not re.fullmatch(r"[a-z0-9-]{1,32}", node):
            return None, f'"{node}": not a node id (1-32 of a-z, 0-9, "-")'
        if not isinstance(sensor, str) or not re.fullmatch(r"[A-Za-z0-9]+-[A-Za-z0-9]{1,32}", sensor):
            return None, f'"{node}": must be the sensor id as registered, like "esp32-12345678", got {_describe(sensor)}'
    return tuple(v.items()), None


_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
MIN_STORE_BYTES = 10**6


def _size(v: Any) -> tuple[Any, str | None]:
    """Bytes: an integer, or a string like "2 GB", "500 MB", "1.5 GiB" (KB, MB, GB: powers of 1000)."""
    import re

    n: float | None = None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", v)
        if m and m.group(2).lower() in _SIZE_UNITS | {"": 1}:
            n = float(m.group(1)) * _SIZE_UNITS.get(m.group(2).lower(), 1)
    if n is None or n < MIN_STORE_BYTES:
        return None, (f'must be a size like "2 GB" or "500 MB" or a number of bytes, at least 1 MB, '
                      f"got {_describe(v)}")
    return int(n), None


def _paths(v: Any) -> tuple[Any, str | None]:
    """A list of one or more file paths (a single string is taken as a list of one)."""
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        return None, f'must be a file path or a list of them, like ["release.pub"], got {_describe(v)}'
    return tuple(v), None


def _level(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or v.upper() not in LEVELS:
        return None, f"must be one of {', '.join(LEVELS)}, got {_describe(v)}"
    return v.upper(), None


def _region_name(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or not REGION_NAME.fullmatch(v):
        return None, f"must be 1 to 32 of a-z, 0-9 and \"-\" (the region plan's names), got {_describe(v)}"
    return v, None


def _target_names(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        return None, f"must be a non-empty array of [[forward]] target names, got {_describe(v)}"
    if len(set(v)) != len(v):
        return None, f"names a target twice: {_describe(v)}"
    return tuple(v), None


SECTIONS: dict[str, dict[str, Check]] = {
    "mqtt": {
        "host": _text(),
        "port": _integer(1, 65535),
        "username": _text(),
        "password": _text(allow_empty=True),
        "password_file": _text(),
        "client_id": _text(),
        "topic_prefix": _prefix,
        "keepalive": _integer(5, 65535),
    },
    "store": {"path": _text(), "max_bytes": _size, "max_age_days": _integer(0, 36500),
              "dead_letters_max_bytes": _size, "dead_letters_node_max_bytes": _size,
              "dead_letters_node_max": _integer(1, 10_000_000)},
    "log": {"level": _level},
    "http": {"host": _text(), "port": _integer(0, 65535),  # 0: any free port (tests)
             "timezone": _timezone},
    "fleet": {"path": _text(), "node_keys": _text(), "secrets": _text(), "broker_secrets": _text()},
    "region": {"town": _region_name, "gateway": _region_name, "safe_targets": _target_names, "visitors": _text()},
    "ota": {"release_keys": _paths, "releases": _text(), "offer_every_s": _seconds(1, 86400),
            "prove_within_s": _seconds(1, 7 * 86400), "answer_within_s": _seconds(1, 30 * 86400),
            "piece_max_bytes": _integer(256, 8192),
            "pieces_per_s": _seconds(0.1, 1000)},
}
REQUIRED = {("store", "path")}

FORWARD_KEYS: dict[str, Check] = {
    "name": _name,
    "type": _choice(FORWARD_TYPES),
    "url": _url,
    "api": _choice(INFLUX_APIS),
    "db": _text(),
    "org": _text(),
    "bucket": _text(),
    "token_file": _text(),
    "username": _text(),
    "password_file": _text(),
    "measurement": _text(),
    "batch": _integer(1, 100_000),
    "timeout": _seconds(0.1, 300),
    "enabled": _boolean,
    # mqtt
    "ca_file": _text(),
    "cert_file": _text(),
    "key_file": _text(),
    "topic": _topic_template,
    "qos": _integer(0, 1),
    "retain": _boolean,
    "client_id": _client_id,
    "protocol": _choice(MQTT_PROTOCOLS),
    # sensor.community
    "sensors": _sensor_ids,
    "max_age": _seconds(30, 3600),
    # sensorthings
    "fleet": _text(),
}
FORWARD_REQUIRED = ("name", "type", "url")
# The keys every type takes; those each type takes besides; a type's own check of a key; what it requires.
FORWARD_COMMON = ("name", "type", "batch", "timeout", "enabled")
TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "influx": ("url", "api", "db", "org", "bucket", "token_file", "username", "password_file", "measurement"),
    "mqtt": ("url", "username", "password_file", "ca_file", "cert_file", "key_file", "topic", "qos", "retain",
             "client_id", "protocol"),
    "sensor.community": ("url", "sensors", "max_age"),
    "sensorthings": ("url", "username", "password_file", "token_file", "fleet"),
}
TYPE_CHECKS: dict[str, dict[str, Check]] = {"mqtt": {"url": _mqtt_url}, "sensor.community": {"url": _exact_url}}
TYPE_REQUIRED: dict[str, tuple[str, ...]] = {"sensor.community": ("name", "type", "sensors")}
SENSORTHINGS_BATCH = 1000  # readings per CreateObservations request unless `batch` says otherwise
SECRET_FILES = ("token_file", "password_file", "ca_file", "cert_file", "key_file")


def region_topic(template: str, town: str) -> str:
    """An mqtt target's topic template in a region: `{town}` as written, else the town as the
    second level (the central broker's ACL gives each town's gateways `<prefix>/<town>/#`):
    "meetkit/{node}/records" -> "meetkit/utrecht/{node}/records"."""
    if "{town}" in template:
        return template.replace("{town}", town)
    first, _, rest = template.partition("/")
    return f"{first}/{town}/{rest}" if rest else f"{first}/{town}"


def _relative(value: str, source: Path | None) -> Path:
    path = Path(value).expanduser()
    return source.parent / path if not path.is_absolute() and source is not None else path


def _forward(doc: Any, source: Path | None, errors: list[str]) -> tuple[ForwardConfig, ...]:
    """The [[forward]] tables, each problem named `forward[<i>].<key>` (or by the target's name)."""
    if not isinstance(doc, list):
        errors.append(f"forward: must be an array of tables ([[forward]]), got {_describe(doc)}")
        return ()
    out: list[ForwardConfig] = []
    names: set[str] = set()
    for i, table in enumerate(doc):
        where = f"forward[{i}]"
        if not isinstance(table, dict):
            errors.append(f"{where}: must be a table ([[forward]]), got {_describe(table)}")
            continue
        if isinstance(table.get("name"), str):
            where = f'forward[{i}] ("{table["name"]}")'
        values: dict[str, Any] = {}
        bad = False
        kind = table.get("type") if isinstance(table.get("type"), str) else None
        for key, raw in table.items():
            if key not in FORWARD_KEYS:
                errors.append(_unknown(f"{where}.{key}", list(FORWARD_KEYS)))
                bad = True
                continue
            if kind in TYPE_KEYS and key not in FORWARD_COMMON and key not in TYPE_KEYS[kind]:
                errors.append(f'{where}.{key}: not used with type = "{kind}"')
                bad = True
                continue
            value, err = TYPE_CHECKS.get(kind or "", {}).get(key, FORWARD_KEYS[key])(raw)
            if err:
                errors.append(f"{where}.{key}: {err}")
                bad = True
            else:
                values[key] = value
        for key in TYPE_REQUIRED.get(kind or "", FORWARD_REQUIRED):
            if key not in table:
                errors.append(f"{where}.{key}: missing (required)")
                bad = True
        name = values.get("name")
        if name is not None:
            if name in names:
                errors.append(f'{where}.name: "{name}" is used by another [[forward]] target')
                bad = True
            names.add(name)
        api = values.get("api", "v1")
        if values.get("type") == "influx":
            need, other = (("db",), ("org", "bucket", "token_file")) if api == "v1" else (
                ("org", "bucket", "token_file"), ("db",))
            for key in need:
                if key not in table:
                    errors.append(f'{where}.{key}: missing (required with api = "{api}")')
                    bad = True
            for key in other + (("username", "password_file") if api == "v2" else ()):
                if key in table:
                    errors.append(f'{where}.{key}: not used with api = "{api}"')
                    bad = True
            if ("username" in table) != ("password_file" in table) and api == "v1":
                errors.append(f"{where}: username and password_file go together")
                bad = True
        bad = _check_mqtt(where, table, values, errors) or bad
        if values.get("type") == "sensorthings":
            bad = _sensorthings(table, where, errors) or bad
            values.setdefault("batch", SENSORTHINGS_BATCH)
        if bad:
            continue
        if values.get("type") == "sensor.community":
            values.setdefault("url", SENSOR_COMMUNITY_URL)
        for key in (*SECRET_FILES, "fleet"):  # relative to gateway.toml's folder
            if key in values:
                values[key] = _relative(values[key], source)
        out.append(ForwardConfig(**values))
    return tuple(out)


def _sensorthings(table: dict[str, Any], where: str, errors: list[str]) -> bool:
    """The auth keys of a sensorthings target: basic (username + password_file) or bearer
    (token_file), not both. True if there was a problem."""
    bad = False
    if ("username" in table) != ("password_file" in table):
        errors.append(f"{where}: username and password_file go together")
        bad = True
    if "token_file" in table and "username" in table:
        errors.append(f"{where}.token_file: not used with username (basic auth); choose one")
        bad = True
    return bad


def _check_mqtt(where: str, table: dict[str, Any], values: dict[str, Any], errors: list[str]) -> bool:
    """What a `type = "mqtt"` target's keys must agree on; True when something is wrong."""
    if values.get("type") != "mqtt":
        return False
    problems: list[str] = []
    if ("username" in table) != ("password_file" in table):
        problems.append(f"{where}: username and password_file go together")
    if ("cert_file" in table) != ("key_file" in table):
        problems.append(f"{where}: cert_file and key_file go together")
    tls = str(values.get("url", "")).startswith("mqtts://")
    for key in ("ca_file", "cert_file", "key_file"):
        if key in table and "url" in values and not tls:
            problems.append(f"{where}.{key}: only used with an mqtts:// url")
    errors.extend(problems)
    return bool(problems)


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else f" (known: {', '.join(known)})"
    return f"{key}: unknown key{hint}"


def parse(doc: dict[str, Any], source: Path | None = None) -> Config:
    """A `Config` from a parsed TOML document, or `ConfigError` listing every problem."""
    errors: list[str] = []
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    forward: tuple[ForwardConfig, ...] = ()
    for name, section in doc.items():
        if name == "forward":
            forward = _forward(section, source, errors)
            continue
        if name not in SECTIONS:
            errors.append(_unknown(name, [*SECTIONS, "forward"]))
            continue
        if not isinstance(section, dict):
            errors.append(f"{name}: must be a table ([{name}]), got {_describe(section)}")
            continue
        checks = SECTIONS[name]
        for key, raw in section.items():
            if key not in checks:
                errors.append(_unknown(f"{name}.{key}", list(checks)))
                continue
            value, err = checks[key](raw)
            if err:
                errors.append(f"{name}.{key}: {err}")
            else:
                values[name][key] = value
    for name, key in sorted(REQUIRED):
        section = doc.get(name, {})
        if isinstance(section, dict) and key not in section:
            errors.append(f"{name}.{key}: missing (required)")
    fleet = _relative(values["fleet"]["path"], source) if "path" in values["fleet"] else None
    fleet_files = FleetFiles(**{k: _relative(v, source) for k, v in values["fleet"].items() if k != "path"})
    ota = _ota(doc.get("ota"), values["ota"], values["store"], fleet_files.node_keys, source, errors)
    forward = tuple(replace(t, fleet=fleet) if t.type == "sensorthings" and t.fleet is None else t for t in forward)
    region = _region(doc.get("region"), values["region"], doc.get("forward"), forward, errors)
    if region is not None:  # a visitor's home town: from [region] visitors, else the broker folder's secrets
        visitors = values["region"].get("visitors")
        region = replace(region, visitors=_relative(visitors, source) if visitors else fleet_files.broker_secrets)
    for t in forward:
        if t.type == "mqtt" and "{town}" in t.topic and "region" not in doc:
            errors.append(f'forward ("{t.name}").topic: {{town}} needs [region] (its town)')
    mqtt = values["mqtt"]
    if "password_file" in mqtt:
        _mqtt_password_file(mqtt, source, errors)
    elif "password" in mqtt and "username" not in mqtt:
        errors.append("mqtt.password: set, but mqtt.username is not")
    if errors:
        raise ConfigError(source or "<config>", errors)
    return Config(
        mqtt=MqttConfig(**mqtt),
        store=StoreConfig(**values["store"] | {"path": _relative(values["store"]["path"], source)}),
        log=LogConfig(**values["log"]),
        source=source,
        http=HttpConfig(**values["http"]),
        forward=forward,
        fleet=fleet,
        fleet_files=fleet_files,
        ota=ota,
        region=region,
    )


def _region(section: Any, values: dict[str, Any], forward_doc: Any, forward: tuple[ForwardConfig, ...],
            errors: list[str]) -> RegionConfig | None:
    """[region] (None without it): town, gateway and safe_targets all required; every safe target
    must be an enabled [[forward]] target (a record is safe once it took it)."""
    if not isinstance(section, dict):
        return None
    for key in ("town", "gateway", "safe_targets"):
        if key not in section:
            errors.append(f"region.{key}: missing (required in [region])")
    known = {t.name: t for t in forward}
    # a target whose own table had an error is not in `forward`: name only the truly unknown
    written = {t.get("name") for t in forward_doc if isinstance(t, dict)} if isinstance(forward_doc, list) else set()
    for name in values.get("safe_targets", ()):
        if name not in written:
            hint = f" (the targets: {', '.join(sorted(known))})" if known else " (there is no [[forward]] target)"
            errors.append(f'region.safe_targets: "{name}" is not the name of a [[forward]] target{hint}')
        elif name in known and not known[name].enabled:
            errors.append(f'region.safe_targets: "{name}" is disabled (enabled = false): no record would ever be safe')
    if not all(key in values for key in ("town", "gateway", "safe_targets")):
        return None
    return RegionConfig(values["town"], values["gateway"], values["safe_targets"])


def _ota(section: Any, values: dict[str, Any], store: dict[str, Any], node_keys: Path | None,
         source: Path | None, errors: list[str]) -> OtaConfig | None:
    """[ota] with its paths made absolute; None when there is no [ota]. A release key that cannot
    be read is an error here, so that `check` names it (releases.py reads it again when it verifies)."""
    if not isinstance(section, dict):
        return None
    if "release_keys" not in section:
        errors.append("ota.release_keys: missing (required: the release public key(s), release.pub of "
                      "`meetkit release keygen`)")
        return None
    if node_keys is None:
        errors.append("ota: needs [fleet] node_keys (the broker folder's node-keys.json): every offer is signed "
                      "with the node's key")
    if "release_keys" not in values:
        return None
    keys = tuple(_relative(k, source) for k in values["release_keys"])
    from .releases import ReleaseError, load_public_key  # cryptography: only when [ota] is used

    for k in keys:
        try:
            load_public_key(k)
        except ReleaseError as e:
            errors.append(f"ota.release_keys: {e}")
    if "releases" in values:
        folder = _relative(values["releases"], source)
    else:  # beside the store: a folder the gateway's service may write
        folder = _relative(store.get("path", "gateway.db"), source).parent / "releases"
    rest = {k: v for k, v in values.items() if k not in ("release_keys", "releases")}
    ota = OtaConfig(release_keys=keys, releases=folder, **rest)
    if ota.answer_within_s < ota.offer_every_s:
        errors.append(f"ota.answer_within_s: {ota.answer_within_s:g} is less than ota.offer_every_s "
                      f"({ota.offer_every_s:g}): a node would be skipped before a second offer")
    return ota


def _mqtt_password_file(mqtt: dict[str, Any], source: Path | None, errors: list[str]) -> None:
    """mqtt.password_file (as `meetkit broker init` writes it): read here, so that `check` names a
    missing file and a reload sees a changed password. Surrounding whitespace is not part of it."""
    path = mqtt["password_file"] = _relative(mqtt["password_file"], source)
    if "password" in mqtt:
        errors.append("mqtt.password_file: set together with mqtt.password; keep only the file")
        return
    if "username" not in mqtt:
        errors.append("mqtt.password_file: set, but mqtt.username is not")
    try:
        mqtt["password"] = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        errors.append(f"mqtt.password_file: cannot read {path}: {getattr(e, 'strerror', None) or e}")
        return
    if not mqtt["password"]:
        errors.append(f"mqtt.password_file: {path} is empty")


def load(path: str | Path) -> Config:
    """Read and validate `path`; `ConfigError` when it is missing, not TOML, or not valid."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8: {e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"not valid TOML: {e}"]) from None
    return parse(doc, source=path.absolute())
