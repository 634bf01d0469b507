"""The region's tests: broker folders made by the real `meetkit broker init` code, plans written
as an operator writes them."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from meetkit_tools import broker
from meetkit_tools.services import free_port

ROOT = Path(__file__).parents[2]
EXAMPLE_PLAN = ROOT / "deploy" / "region" / "region.example.toml"
RULE_TESTS = ROOT / "deploy" / "region" / "meetkit-alerts.test.yml"


def fleet(workdir: Path) -> broker.Fleet:
    """As on a gateway's Pi, except what a test must have of its own: ports, persistence, log, no
    pid file, the user that runs us."""
    return broker.Fleet(prefix="meetkit", hostname="meetkit-gw", ips=["127.0.0.1"], plain_port=free_port(),
                        tls_port=free_port(), persistence_location=f"{workdir}/", pid_file=None,
                        log_dest=f"file {workdir / 'mosquitto.log'}", user=pwd.getpwuid(os.geteuid()).pw_name)


def broker_folder(workdir: Path, nodes: list[str], ca_from: Path | None = None) -> Path:
    """A gateway's `meetkit broker init` folder; with `ca_from`, made with that folder's lab CA
    (the region's one CA: its ca/ copied first, as docs/operator.md says)."""
    out = workdir / "broker"
    if ca_from is not None:
        shutil.copytree(ca_from / "ca", out / "ca")
    broker.init(out, fleet(workdir), nodes)
    return out


def write_plan(path: Path, gateways: dict[str, dict], central: str = "mqtts://central.example.org:8883") -> Path:
    lines = ["[region]", 'name = "test-region"', 'topic_prefix = "meetkit"', f'central = "{central}"',
             'store = "http://127.0.0.1:8428"', ""]
    for name, g in gateways.items():
        lines.append(f'[gateways."{name}"]')
        for k, v in g.items():
            if isinstance(v, str):
                lines.append(f'{k} = "{v}"')
            elif isinstance(v, list):
                lines.append(f"{k} = [{', '.join(chr(34) + x + chr(34) for x in v)}]")
            else:
                lines.append(f"{k} = {v}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path
