"""The fleet over the air end to end, as an operator runs it (docs/operator.md, "Remote configuration"
and "Running the fleet over the air"): a real Mosquitto running what `meetkit broker init` generates
(accounts, the ACL, node keys), the real `meetkit-gateway run` with a fleet register and [ota], and a
simulated node running the firmware as .mpy with its generated account and node key. Only the CLI
an operator uses touches the gateway: the register's file, `meetkit release build`,
`meetkit-gateway release add`, `fleet update`, `fleet status`, `fleet selftest`.

The node logs in on the broker's loopback listener (plain): the same accounts and ACL as its TLS
listener (tests/e2e/test_secure_fleet.py runs the nodes over TLS), without the TLS shim's heap.
The release is built for the simulator's MicroPython (`--arch x64`); the node runs the same firmware
as release 0.1.9, so the checkout's firmware is the newer release."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from meetkit_gateway.store import Store
from meetkit_tools.dev import fleetsim
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.services import FleetBroker, GatewayProcess
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

from ..gateway.conftest import CLI
from meetkit_tools.dev.waits import wait_for

NODE = "fg-01"
OLD = "0.1.9"
NEW = fleetsim.fw_version()
MEETKIT = str(Path(CLI).with_name("meetkit"))


def run(*args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.register = tmp / "fleet.toml"
        self.write_register(interval_s=60)
        self.broker = FleetBroker(tmp / "site", [NODE]).start()
        run(MEETKIT, "release", "keygen", "--out", str(tmp / "release-key"))
        extra = (f'\n[fleet]\npath = "{self.register}"\nnode_keys = "{self.broker.out / "node-keys.json"}"\n'
                 f'broker_secrets = "{self.broker.out / "secrets.json"}"\n\n'
                 f'[ota]\nrelease_keys = ["{tmp / "release-key" / "release.pub"}"]\nreleases = "{tmp / "kept"}"\n'
                 "offer_every_s = 30\nprove_within_s = 600\n")
        self.gw = GatewayProcess(tmp / "gw", self.broker.host, self.broker.plain_port,
                                 mqtt_toml=self.broker.gateway_toml(), extra_toml=extra).start()
        self.node: SimNode | None = None

    def write_register(self, **config: int) -> None:
        lines = [f'[nodes."{NODE}"]', 'board = "esp32-devkitc"', "", f'[nodes."{NODE}".config]']
        lines += [f"{k} = {v}" for k, v in config.items()]
        self.register.write_text("\n".join(lines) + "\n")

    def start_node(self, firmware: Path) -> SimNode:
        keys = json.loads((self.broker.out / "node-keys.json").read_text())["nodes"]
        b = dict(self.broker.node_broker(NODE), port=self.broker.plain_port, tls=False)
        self.node = SimNode(NodeSpec(node_id=NODE, scenario=load_scenario("quiet-street"), workdir=self.tmp / NODE,
                                     broker_port=self.broker.plain_port, until_s=None, firmware=firmware,
                                     heapsize=fleetsim.OFFER_HEAP, extra_config={"broker": b},
                                     files={"node.key": keys[NODE].encode()}))
        self.node.prepare()
        self.node.start()
        return self.node

    def cli(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run(CLI, *args, "--config", str(self.gw.conf), ok=ok, timeout=timeout)

    def status_row(self) -> dict[str, str] | None:
        """The node's line of `fleet status`: mode, fw, config wanted / running."""
        out = self.cli("fleet", "status").stdout
        m = re.search(rf"^{NODE}\s+(\S+)\s+(\S+)\s+(\S+) / (\S+)", out, re.M)
        return {"mode": m[1], "fw": m[2], "wanted": m[3], "running": m[4], "text": out} if m else None

    def events(self, kind: str) -> list[dict[str, Any]]:
        with Store(self.gw.db, readonly=True) as s:
            return [dict(e.body) for e in s.events(kind, node=NODE)]

    def close(self) -> None:
        if self.node:
            self.node.stop()
        self.gw.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fleet-gateway")
    old = tmp / "firmware-old"
    shutil.copytree(FIRMWARE, old, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = old / "lib" / "config.py"
    cfg.write_text(cfg.read_text().replace(f'FW_VERSION = "{NEW}"', f'FW_VERSION = "{OLD}"'))
    s = Site(tmp)
    try:
        s.start_node(fleetsim.mpy_firmware(tmp / "node-fw" / "firmware", firmware=old))
        yield s
    finally:
        s.close()


def test_a_configuration_written_in_the_register_runs_on_the_node(site: Site) -> None:
    first = wait_for(lambda: (r := site.status_row()) and r["running"] != "-" and r["wanted"] == r["running"] and r,
                     180, "the first configuration running")
    assert first["mode"] == "normal" and first["fw"] == OLD, first["text"]
    v = int(first["running"])
    site.write_register(interval_s=30)
    row = wait_for(lambda: (r := site.status_row()) and r["running"] == str(v + 1) and r, 240,
                   f"configuration {v + 1} running")
    assert row["wanted"] == row["running"], row["text"]
    taken = [e for e in site.events("config") if e.get("version") == v + 1]
    assert taken and taken[-1]["applied"] == ["interval_s"] and not taken[-1].get("refused")
    node = site.node
    assert node is not None
    # it restarts on the new settings once the interval it was measuring is spooled
    wait_for(lambda: "interval 30 s" in node.console_text(), 180, "the node measuring every 30 s")


def test_a_self_test_asked_by_the_operator_comes_back_and_is_kept(site: Site) -> None:
    r = site.cli("fleet", "selftest", NODE, "--wait", "120", timeout=180)   # exit 0: every item passed
    assert f"{NODE} answered at" in r.stdout and re.search(r"^\s+broker\s+pass", r.stdout, re.M), r.stdout
    (kept,) = site.events("selftest")[-1:]
    assert kept["checks"]["broker"][0] == "pass" and "mic" in kept["checks"]


def test_a_release_built_kept_and_rolled_out_runs_on_the_node(site: Site) -> None:
    out = site.tmp / "releases" / NEW
    run(MEETKIT, "release", "build", "--key", str(site.tmp / "release-key" / "release.key"), "--out", str(out),
        "--arch", "x64", timeout=300)
    assert f"release {NEW}: " in site.cli("release", "add", str(out)).stdout
    site.cli("fleet", "update", "--release", NEW, "--nodes", NODE, "--canary", "1")
    row = wait_for(lambda: (r := site.status_row()) and r["fw"] == NEW and r["mode"] == "normal"
                   and f"release {NEW}, done" in r["text"] and r, 420, f"{NODE} running {NEW} and the rollout done")
    assert re.search(rf"^\s+{NODE}\s+canary\s+done\b", row["text"], re.M), row["text"]
    states = [e["state"] for e in site.events("ota")]
    assert states[-3:] == ["accepted", "installed", "proved"], states
    assert row["wanted"] == row["running"], row["text"]   # the configuration kept through the update
