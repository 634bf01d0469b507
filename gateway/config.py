"""The gateway's one configuration file, `gateway.toml`, read and validated.

Every problem is reported at once, each naming its key (``mqtt.port: must be an integer from 1 to
65535, got "1883" (a string)``); unknown keys are errors too, with a suggestion when one is close.
A relative `store.path` is taken relative to the folder of the configuration file, not the
working directory, so the same file works from a shell and from systemd.
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


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"

    @property
    def level_number(self) -> int:
        return logging.getLevelName(self.level)


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig
    store: StoreConfig
    log: LogConfig
    source: Path | None = None  # the file it came from


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
    "store": {"path": _text()},
    "log": {"level": _level},
}
REQUIRED = {("store", "path")}


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else f" (known: {', '.join(known)})"
    return f"{key}: unknown key{hint}"


def parse(doc: dict[str, Any], source: Path | None = None) -> Config:
    """A `Config` from a parsed TOML document, or `ConfigError` listing every problem."""
    errors: list[str] = []
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, section in doc.items():
        if name not in SECTIONS:
            errors.append(_unknown(name, list(SECTIONS)))
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
    path = Path(values["store"]["path"]).expanduser()
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    return Config(
        mqtt=MqttConfig(**mqtt),
        store=StoreConfig(path=path),
        log=LogConfig(**values["log"]),
        source=source,
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
