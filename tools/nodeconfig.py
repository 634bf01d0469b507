"""A node's config.json, made on the technician's laptop and checked by the firmware's own rules.

The checks are the firmware's (firmware/lib/config.py, loaded here under CPython), so a value the
node would refuse is refused before anything touches the board, with the node's own wording.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from meetkit_tools.paths import FIRMWARE


class ConfigError(Exception):
    """The config cannot be used; `problems` names each key (never a secret's value)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def firmware_config() -> types.ModuleType:
    """firmware/lib/config.py as a CPython module; its console goes nowhere (problems are returned)."""
    console = types.ModuleType("console")
    for name in ("say", "info", "warn", "error"):
        setattr(console, name, lambda *a: None)
    saved = sys.modules.get("console")
    sys.modules["console"] = console
    try:
        spec = importlib.util.spec_from_file_location("meetkit_firmware_config", FIRMWARE / "lib" / "config.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if saved is None:
            sys.modules.pop("console", None)
        else:
            sys.modules["console"] = saved
    return mod


def board_problems(path: Path) -> list[str]:
    """What the firmware (firmware/lib/boardfile.py) says of a board file, chip check aside."""
    console = types.ModuleType("console")
    for name in ("say", "info", "warn", "error"):
        setattr(console, name, lambda *a: None)
    saved = {k: sys.modules.get(k) for k in ("console", "config", "boardfile")}
    sys.modules["console"] = console
    sys.path.insert(0, str(FIRMWARE / "lib"))
    try:
        for k in ("config", "boardfile"):
            sys.modules.pop(k, None)
        import boardfile  # type: ignore[import-not-found]

        problems: list[str] = []
        boardfile.load_board(str(path), problems, None)
        return problems
    finally:
        sys.path.remove(str(FIRMWARE / "lib"))
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


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


def settable() -> list[str]:
    """The config.json keys `--set` may give: the firmware's own, less what provision sets."""
    return sorted(k for k in firmware_config().DEFAULTS if k != "interval_s")


def build(node_id: str, interval_s: int, wifi: tuple[str, str] | None, broker: dict[str, Any] | None,
          extra: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {"node_id": node_id, "interval_s": interval_s}
    if wifi:
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
