"""A node's wanted configuration, from the fleet register and the secrets files: what the gateway
sends it on `<prefix>/<node>/config` (docs/payload.md, "Configuration"), and the same without its
passwords, for people.

    w = wanted("ams-001", register_entry, secrets, topic_prefix="meetkit")
    w.config    # {"interval_s": 60, "noise_offset_db": -1.3, "wifi": {"ssid": "lab", "password": "..."}, ...}
    w.shown     # the same, every password replaced by "(secret)"
    w.problem   # why it cannot be made (a missing secret, ...): nothing is sent then; else None

A node the register sets nothing for (no `config` table, no `noise_offset_db`) has no wanted
configuration (`wanted` returns None) and is sent nothing. `wifi` and `broker` are sent as the
register gives them, a table or an array of tables (the firmware's rules say which it takes), each
with its password: a Wi-Fi network's from `[fleet] secrets` by its ssid, a broker's user (the node
id) and password from the broker folder's secrets.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fleet_secrets import FleetSecrets

SECRET_SHOWN = "(secret)"


@dataclass(frozen=True)
class Wanted:
    node: str
    config: dict[str, Any]  # what is sent; holds the passwords
    shown: dict[str, Any]  # what people see: no password
    problem: str | None = None  # why nothing can be sent now


def _each(value: Any) -> list[dict[str, Any]]:
    return value if isinstance(value, list) else [value]


def _like(value: Any, entries: list[dict[str, Any]]) -> Any:
    """`entries` in the form the register gave: a table or an array of tables."""
    return entries if isinstance(value, list) else entries[0]


def wanted(node: str, meta: dict[str, Any], secrets: FleetSecrets, topic_prefix: str) -> Wanted | None:
    """`node`'s wanted configuration from its register entry `meta` (fleet.py's, typed), or None
    when the register sets nothing for it."""
    config: dict[str, Any] = dict(meta.get("config") or {})
    if "noise_offset_db" in meta:
        config["noise_offset_db"] = meta["noise_offset_db"]
    if not config:
        return None
    shown = dict(config)
    problems: list[str] = []
    prefix = config.get("topic_prefix")
    if prefix is not None and prefix != topic_prefix:
        # the node would publish where this gateway does not listen, and never hear from it again
        problems.append(f"topic_prefix {prefix!r}: this gateway listens on {topic_prefix!r}; the node would leave it")
    if "wifi" in config:
        sent, seen = [], []
        for net in _each(config["wifi"]):
            password, problem = secrets.wifi_password(net["ssid"])
            if problem:
                problems.append(problem)
            sent.append({**net, "password": password})
            seen.append({**net, "password": SECRET_SHOWN})
        config["wifi"], shown["wifi"] = _like(config["wifi"], sent), _like(config["wifi"], seen)
    if "broker" in config:
        password, problem = secrets.broker_password(node)
        if problem:
            problems.append(problem)
        sent = [{**b, "user": node, "password": password} for b in _each(config["broker"])]
        seen = [{**b, "user": node, "password": SECRET_SHOWN} for b in _each(config["broker"])]
        config["broker"], shown["broker"] = _like(config["broker"], sent), _like(config["broker"], seen)
    return Wanted(node, config, shown, "; ".join(problems) or None)
