"""A node's config.json, made on the technician's laptop and checked by the firmware's own rules.

The checks are the firmware's (firmware/lib/config.py, loaded here under CPython), so a value the
node would refuse is refused before anything touches the board, with the node's own wording.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Iterator

from meetkit_tools.paths import FIRMWARE


class ConfigError(Exception):
    """The config cannot be used; `problems` names each key (never a secret's value)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@contextlib.contextmanager
def _firmware_lib() -> Iterator[None]:
    """firmware/lib importable under CPython, its console going nowhere (problems are returned);
    sys.path and sys.modules as they were afterwards."""
    names = ("console", "config", "boardfile")
    saved = {k: sys.modules.pop(k, None) for k in names}
    console = types.ModuleType("console")
    for name in ("say", "info", "warn", "error", "check"):
        setattr(console, name, lambda *a: None)
    sys.modules["console"] = console
    sys.path.insert(0, str(FIRMWARE / "lib"))
    try:
        yield
    finally:
        sys.path.remove(str(FIRMWARE / "lib"))
        for k in names:
            sys.modules.pop(k, None)
            if saved[k] is not None:
                sys.modules[k] = saved[k]


def firmware_config() -> types.ModuleType:
    """firmware/lib/config.py as a CPython module."""
    with _firmware_lib():
        import config  # type: ignore[import-not-found]

        return config


def board_problems(path: Path) -> list[str]:
    """What the firmware (firmware/lib/boardfile.py) says of a board file, chip check aside."""
    with _firmware_lib():
        import boardfile  # type: ignore[import-not-found]

        problems: list[str] = []
        boardfile.load_board(str(path), problems, None)
        return problems


def fw_version() -> str:
    return str(firmware_config().FW_VERSION)


def check(cfg: dict[str, Any], wired: bool = False, broker_optional: bool = False) -> None:
    """Raise ConfigError unless the firmware takes `cfg` as it is. `wired`: the board's uplink is
    Ethernet, so no Wi-Fi section is needed; `broker_optional`: no broker section yet."""
    fw = firmware_config()
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.json"
        p.write_text(json.dumps(cfg))
        fw.load_node(str(p), problems, "000000000000", wifi=not wired)
    if broker_optional:
        problems = [p for p in problems if not p.startswith("config.broker.host: missing")]
    if problems:
        raise ConfigError(problems)


def remote_problems(node_id: str, config: dict[str, Any]) -> list[str]:
    """What the node would refuse of `config`, the configuration the gateway sends it (gateway/wanted.py:
    a register's `config` table and its `noise_offset_db`), in the firmware's own words; only the
    problems of the keys it holds (the node keeps its current value of every other key). The
    passwords the gateway adds are stood in for: their form is the gateway's to get right."""
    cfg: dict[str, Any] = {"node_id": node_id, **config}
    stand_in = "x" * 12
    if isinstance(config.get("wifi"), dict):
        cfg["wifi"] = {**config["wifi"], "password": stand_in}
    elif isinstance(config.get("wifi"), list):
        cfg["wifi"] = [{**w, "password": stand_in} if isinstance(w, dict) else w for w in config["wifi"]]
    if isinstance(config.get("broker"), dict):
        cfg["broker"] = {**config["broker"], "user": node_id, "password": stand_in}
    elif isinstance(config.get("broker"), list):
        cfg["broker"] = [{**b, "user": node_id, "password": stand_in} if isinstance(b, dict) else b
                         for b in config["broker"]]
    fw = firmware_config()
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.json"
        p.write_text(json.dumps(cfg))
        fw.load_node(str(p), problems, "000000000000", wifi="wifi" in config)

    def key(problem: str) -> str:
        return problem.removeprefix("config.").split(":")[0].split(".")[0].split(" ")[0]

    return [p for p in problems if key(p) in config]


def settable() -> list[str]:
    """The config.json keys `--set` may give: the firmware's own, less what provision sets."""
    return sorted(k for k in firmware_config().DEFAULTS if k != "interval_s")


def build(node_id: str, interval_s: int, wifi: tuple[str, str] | list[dict[str, Any]] | None,
          broker: dict[str, Any] | list[dict[str, Any]] | None, extra: dict[str, Any]) -> dict[str, Any]:
    """config.json: `wifi` one network (ssid, password) or the list the board had (the firmware takes
    one object or a list of them, for Wi-Fi and brokers alike)."""
    cfg: dict[str, Any] = {"node_id": node_id, "interval_s": interval_s}
    if isinstance(wifi, list):
        cfg["wifi"] = wifi
    elif wifi:
        cfg["wifi"] = {"ssid": wifi[0], "password": wifi[1]}
    if broker:
        cfg["broker"] = broker
    cfg.update(extra)
    return cfg


def parse_value(text: str) -> Any:
    """`--set key=value`: JSON when it parses (numbers, true, objects), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text
