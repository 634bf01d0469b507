"""One version number: what `meetkit --version` and `meetkit-gateway --version` print, what the
installed distribution says (pip, the Pi's venv) and what the node's app reports (FW_VERSION, in
its status and on the status page) are one and the same."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from meetkit_tools.paths import FIRMWARE

BIN = Path(sys.executable).parent


def printed(cmd: str) -> str:
    res = subprocess.run([str(BIN / cmd), "--version"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    m = re.fullmatch(rf"{cmd} (\S+)\n", res.stdout)
    assert m, res.stdout
    return m[1]


def test_the_commands_the_distribution_and_the_node_app_say_one_version() -> None:
    app = re.search(r'^FW_VERSION = "([^"]+)"', (FIRMWARE / "lib" / "config.py").read_text(), re.M)
    assert app, "no FW_VERSION in firmware/lib/config.py"
    versions = {"meetkit --version": printed("meetkit"), "meetkit-gateway --version": printed("meetkit-gateway"),
                "installed distribution": importlib.metadata.version("meetkit"), "node app (FW_VERSION)": app[1]}
    assert len(set(versions.values())) == 1, versions
