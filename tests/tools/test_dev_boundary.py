"""What a Raspberry Pi runs never reaches the development machinery: meetkit_tools.dev (shared by
tests/ and bench/) is installed with the package but needs the `dev` extra (numpy, scipy), which
the Pi does not have (tests/gateway/test_systemd.py). Every gateway module, and the CLI the Pi runs
for `meetkit broker init`, imported in a fresh interpreter, loads none of it."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import importlib, json, pkgutil, sys
import meetkit_gateway
names = ["meetkit_gateway"] + [m.name for m in pkgutil.walk_packages(meetkit_gateway.__path__, "meetkit_gateway.")]
names += ["meetkit_tools.cli", "meetkit_tools.broker"]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
"""


def test_the_gateway_and_the_cli_import_nothing_of_the_dev_machinery() -> None:
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert "meetkit_gateway.service" in doc["imported"] and "meetkit_gateway.forward.core" in doc["imported"]
    dev = [m for m in doc["loaded"] if m.split(".")[0] in ("numpy", "scipy", "tests", "bench")
           or m.startswith("meetkit_tools.dev")]
    assert dev == []
