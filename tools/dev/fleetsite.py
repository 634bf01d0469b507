"""A site run as an operator runs it, for the fleet's end-to-end tests and benchmarks: a real
Mosquitto running what `meetkit broker init` generates (accounts, the ACL, node keys), the real
`meetkit-gateway run` with a fleet register and [ota], a release key, releases built with the same
builder as `meetkit release build` (`--arch x64`: the simulator's MicroPython), and simulated nodes
running the firmware as .mpy (as provision puts it on a board) with their generated accounts and
node keys, on the broker's loopback listener (the same accounts and ACL as its TLS listener).

Also: `sim_times`, the simulated second of each console line (the console prints uptime; the
runner's reset and power-cut markers carry the virtual clock).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meetkit_tools import release as rel
from meetkit_tools.dev import fleetsim
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.services import FleetBroker, GatewayProcess
from meetkit_tools.sim.runner import POWER_OFF_MS, NodeSpec, SimNode, load_scenario

CLI = str(Path(sys.executable).parent / "meetkit-gateway")
BOARD = "esp32-devkitc"


def firmware_as(version: str, out: Path, firmware: Path = FIRMWARE) -> Path:
    """firmware/ with FW_VERSION `version`, as .mpy for the simulator (made afresh in `out`)."""
    src = out.with_name(out.name + "-src")
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(firmware, src, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = src / "lib" / "config.py"
    cur = fleetsim.fw_version(firmware)
    cfg.write_text(cfg.read_text().replace(f'FW_VERSION = "{cur}"', f'FW_VERSION = "{version}"'))
    return fleetsim.mpy_firmware(out, firmware=src)


_MARK = re.compile(r"^--- (reset \(\S+\)|power cut) at t=(\d+) ms")
_UP = re.compile(r"^\s*(\d+) [IWE] ")


def sim_times(console: str) -> list[tuple[float, str]]:
    """(simulated seconds since the scenario's start, line) for each firmware line: a boot starts
    where the runner's marker before it says (plus the power-off time after a cut), and the line's
    uptime (whole seconds) is added."""
    base = 0.0
    out = []
    for line in console.splitlines():
        m = _MARK.match(line)
        if m:
            base = int(m[2]) / 1000 + (POWER_OFF_MS / 1000 if m[1] == "power cut" else 0)
            continue
        u = _UP.match(line)
        if u:
            out.append((base + int(u[1]), line))
    return out


class Site:
    """The broker, the gateway and the release key of one site; nodes added with `node()`."""

    def __init__(self, tmp: Path, nodes: list[str], *, offer_every_s: float = 30, prove_within_s: float = 1800,
                 register: dict[str, dict[str, Any]] | None = None, boards: dict[str, str] | None = None,
                 wifi_secrets: dict[str, str] | None = None) -> None:
        """`register`: node -> its [config] keys (a str is written as TOML as it is, anything else
        as JSON); `boards`: node -> the board the register says (default BOARD); `wifi_secrets`:
        the Wi-Fi passwords file of [fleet] secrets, by network name."""
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.ids = list(nodes)
        self.register = self.tmp / "fleet.toml"
        self.boards = dict(boards or {})
        self.write_register(register or {})
        secrets = ""
        if wifi_secrets:
            f = self.tmp / "fleet-secrets.toml"
            f.write_text("[wifi]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in wifi_secrets.items()))
            f.chmod(0o600)
            secrets = f'secrets = "{f}"\n'
        self.broker = FleetBroker(self.tmp / "site", self.ids).start()
        self.keys_dir = self.tmp / "release-key"
        self.release_key, self.release_pub = rel.keygen(self.keys_dir)
        extra = (f'\n[fleet]\npath = "{self.register}"\nnode_keys = "{self.broker.out / "node-keys.json"}"\n'
                 f'broker_secrets = "{self.broker.out / "secrets.json"}"\n{secrets}\n'
                 f'[ota]\nrelease_keys = ["{self.release_pub}"]\nreleases = "{self.tmp / "kept"}"\n'
                 f"offer_every_s = {offer_every_s}\nprove_within_s = {prove_within_s}\n")
        self.gw = GatewayProcess(self.tmp / "gw", self.broker.host, self.broker.plain_port,
                                 mqtt_toml=self.broker.gateway_toml(), extra_toml=extra).start()
        self.nodes: dict[str, SimNode] = {}

    def write_register(self, config: dict[str, dict[str, Any]]) -> None:
        """The fleet register: every node of the site on BOARD, with its [config] keys if given."""
        lines = []
        for n in self.ids:
            lines += [f'[nodes."{n}"]', f'board = "{self.boards.get(n, BOARD)}"', ""]
            if config.get(n):
                lines += [f'[nodes."{n}".config]'] + [f"{k} = {v if isinstance(v, str) else json.dumps(v)}"
                                                     for k, v in config[n].items()] + [""]
        self.register.write_text("\n".join(lines) + "\n")

    @property
    def node_keys(self) -> dict[str, str]:
        return json.loads((self.broker.out / "node-keys.json").read_text())["nodes"]

    def node(self, node_id: str, firmware: Path, start: bool = True, **spec: Any) -> SimNode:
        """A simulated node with its generated account (plain listener) and node key."""
        b = dict(self.broker.node_broker(node_id), port=self.broker.plain_port, tls=False)
        spec.setdefault("scenario", load_scenario("quiet-street"))
        spec.setdefault("heapsize", fleetsim.OFFER_HEAP)   # an offer's manifest needs it on the 64-bit simulator
        spec.setdefault("until_s", None)
        extra = dict(spec.pop("extra_config", {}), broker=b)
        n = SimNode(NodeSpec(node_id=node_id, workdir=self.tmp / node_id, broker_port=self.broker.plain_port,
                             firmware=firmware, extra_config=extra,
                             files={"node.key": self.node_keys[node_id].encode(), **spec.pop("files", {})}, **spec))
        n.prepare()
        self.nodes[node_id] = n
        if start:
            n.start()
        return n

    def build_release(self, firmware: Path, out: Path, boards: list[str] | None = None) -> dict[str, Any]:
        """`meetkit release build --arch x64` of `firmware` into `out`, signed with the site's key."""
        return rel.build(self.release_key, out, boards=boards, firmware=firmware, arch=rel.SIM_ARCH)

    def cli(self, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([CLI, *args, "--config", str(self.gw.conf)], capture_output=True, text=True,
                           timeout=timeout)
        if (r.returncode == 0) != ok:
            raise AssertionError(f"meetkit-gateway {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def status_rows(self) -> dict[str, dict[str, str]]:
        """Each node's line of `fleet status`: mode, fw, config wanted / running; "text": all of it."""
        out = self.cli("fleet", "status").stdout
        rows = {}
        for n in self.ids:
            m = re.search(rf"^{re.escape(n)}\s+(\S+)\s+(\S+)\s+(\S+) / (\S+)", out, re.M)
            if m:
                rows[n] = {"mode": m[1], "fw": m[2], "wanted": m[3], "running": m[4], "text": out}
        return rows

    def events(self, node: str, kind: str | None = None) -> list[dict[str, Any]]:
        from meetkit_gateway.store import Store

        if not self.gw.db.exists():
            return []
        with Store(self.gw.db, readonly=True) as s:
            return [dict(e.body) for e in s.events(kind, node=node)]

    def close(self) -> None:
        for n in self.nodes.values():
            n.stop()
        self.gw.stop()
        self.broker.stop()
