"""The gateway's one configuration file, `gateway.toml`, read and validated.

Every problem is reported at once, each naming its key (``mqtt.port: must be an integer from 1 to
65535, got "1883" (a string)``); unknown keys are errors too, with a suggestion when one is close.
A relative `store.path` is taken relative to the folder of the configuration file, not the
working directory, so the same file works from a shell and from systemd; so are a forwarding
target's `token_file` and `password_file`.

`[http]` is where the status page and /metrics listen. Each `[[forward]]` table is one upstream
target (gateway/forward/); today `type = "influx"`: InfluxDB line protocol over HTTP, `api = "v1"`
(`/write?db=`, optional `username` with `password_file`: HTTP basic auth) or `api = "v2"`
(`/api/v2/write?org=&bucket=`, `token_file` required). Secrets are read from files, never written
in gateway.toml; the files are read when the forwarder starts.
"""

from __future__ import annotations

import difflib
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str = "meetkit-gateway"
    topic_prefix: str = "meetkit"
    keepalive: int = 60


@dataclass(frozen=True)
class StoreConfig:
    path: Path
    # the bounds (retention.py): pages in use, and age from reception in days (0: no age bound)
    max_bytes: int = 2_000_000_000
    max_age_days: int = 365


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


FORWARD_TYPES = ("influx",)
INFLUX_APIS = ("v1", "v2")


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


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig
    store: StoreConfig
    log: LogConfig
    source: Path | None = None  # the file it came from
    http: HttpConfig = HttpConfig()
    forward: tuple[ForwardConfig, ...] = ()


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


def _url(v: Any) -> tuple[Any, str | None]:
    from urllib.parse import urlsplit

    v, err = _text()(v)
    if err:
        return None, err
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        return None, f'is not a valid URL ({e}), got "{v}"'
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, f'must be an http:// or https:// URL with a host, got "{v}"'
    if parts.query or parts.fragment:
        return None, f'must not have a query or fragment (set db/org/bucket instead), got "{v}"'
    if parts.username or parts.password:
        return None, 'must not carry credentials (use username/password_file or token_file)'
    return v.rstrip("/"), None


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


def _level(v: Any) -> tuple[Any, str | None]:
    if not isinstance(v, str) or v.upper() not in LEVELS:
        return None, f"must be one of {', '.join(LEVELS)}, got {_describe(v)}"
    return v.upper(), None


SECTIONS: dict[str, dict[str, Check]] = {
    "mqtt": {
        "host": _text(),
        "port": _integer(1, 65535),
        "username": _text(),
        "password": _text(allow_empty=True),
        "client_id": _text(),
        "topic_prefix": _prefix,
        "keepalive": _integer(5, 65535),
    },
    "store": {"path": _text(), "max_bytes": _size, "max_age_days": _integer(0, 36500)},
    "log": {"level": _level},
    "http": {"host": _text(), "port": _integer(0, 65535)},  # 0: any free port (tests)
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
}
FORWARD_REQUIRED = ("name", "type", "url")


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
        for key, raw in table.items():
            if key not in FORWARD_KEYS:
                errors.append(_unknown(f"{where}.{key}", list(FORWARD_KEYS)))
                bad = True
                continue
            value, err = FORWARD_KEYS[key](raw)
            if err:
                errors.append(f"{where}.{key}: {err}")
                bad = True
            else:
                values[key] = value
        for key in FORWARD_REQUIRED:
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
        if bad:
            continue
        for key in ("token_file", "password_file"):
            if key in values:
                values[key] = _relative(values[key], source)
        out.append(ForwardConfig(**values))
    return tuple(out)


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
    mqtt = values["mqtt"]
    if "password" in mqtt and "username" not in mqtt:
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
    )


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
