"""The gateway's side of running the fleet, as small as the firmware's tests and benchmarks need
it (docs/payload.md, "Running the fleet"): signed envelopes (HMAC-SHA256 with the node's key), a
release built from firmware/ (sources or .mpy), and a stand-in gateway on a real Mosquitto that
publishes configurations, offers and commands, serves `ota/get` from the release's files and keeps
every event and status the nodes send. The real gateway is gateway/ (issue 15's other parts);
this one lets a test tamper with a piece or count what was asked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from meetkit_tools.paths import FIRMWARE

PIECE_MAX = 2048


#: The simulated heap of a node that takes release offers: a release offer's manifest, parsed,
#: beside the running node needs about 120 KB of the 64-bit simulator's heap (the board's 32-bit
#: objects take about half). At 128K the margin was thin enough that a test's single offer was
#: now and then lost to fragmentation (refused for memory, or a MemoryError in a publish); the
#: published figures were measured at 128K (docs/operator.md).
OFFER_HEAP = "144K"


def new_key() -> bytes:
    return secrets.token_bytes(32)


def envelope(key: bytes, body: dict[str, Any]) -> bytes:
    """{"v":1,"body":"<JSON text>","mac":"<hex>"}: mac = HMAC-SHA256(key, the body's UTF-8)."""
    text = json.dumps(body, separators=(",", ":"))
    mac = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"v": 1, "body": text, "mac": mac}, separators=(",", ":")).encode()


def fw_version(firmware: Path = FIRMWARE) -> str:
    m = re.search(r'^FW_VERSION = "([^"]+)"', (firmware / "lib/config.py").read_text(), re.M)
    assert m, "no FW_VERSION in config.py"
    return m[1]


def mpy_cross_version() -> str:
    from meetkit_tools.appbuild import mpy_cross_bin

    out = subprocess.run([mpy_cross_bin(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    assert m, out
    return f"{m[1]}.{m[2]}"


@dataclass
class Release:
    """A release: its manifest (docs/payload.md) and its files by path."""

    manifest: dict[str, Any]
    files: dict[str, bytes]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def path(self, i: int) -> str:
        return str(self.manifest["files"][i]["path"])


def build_release(version: str, *, arch: str | None = "x64", boards: list[str] | None = None,
                  firmware: Path = FIRMWARE, patch: dict[str, Callable[[str], str]] | None = None,
                  workdir: Path | None = None) -> Release:
    """firmware/ as a release of `version`: boot.py, main.py, appswap.py as sources, lib/ compiled
    with mpy-cross for `arch` (x64: the simulator's MicroPython; None: lib/ as sources). `patch`:
    path -> a function of the source (a release that raises at import, say)."""
    import tempfile

    from meetkit_tools.appbuild import mpy_cross_bin

    patch = dict(patch or {})
    old = fw_version(firmware)
    cfg_patch = patch.get("lib/config.py")
    patch["lib/config.py"] = lambda s: (cfg_patch(s) if cfg_patch else s).replace(
        f'FW_VERSION = "{old}"', f'FW_VERSION = "{version}"')
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for p in sorted(firmware.rglob("*.py")):
            rel = p.relative_to(firmware).as_posix()
            src = p.read_text()
            if rel in patch:
                src = patch[rel](src)
            if rel.startswith("lib/") and arch is not None:
                s = Path(tmp) / p.name
                s.write_text(src)
                out = s.with_suffix(".mpy")
                subprocess.run([mpy_cross_bin(), f"-march={arch}", "-o", str(out), str(s)], check=True)
                files[rel[:-3] + ".mpy"] = out.read_bytes()
            else:
                files[rel] = src.encode()
    manifest = {"v": 1, "version": version, "mpy": mpy_cross_version(), "arch": arch,
                "micropython": "1.29.0", "boards": boards or ["esp32-devkitc", "esp32-s3-devkitc-1",
                                                             "olimex-esp32-poe", "esp32-devkitc-air"],
                "files": [{"path": k, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                          for k, v in files.items()],
                "bytes": sum(len(v) for v in files.values())}
    return Release(manifest, files)


def mpy_firmware(out: Path, arch: str = "x64", firmware: Path = FIRMWARE) -> Path:
    """firmware/ as `meetkit provision` puts it on a board (lib/ as .mpy), for the simulator's
    MicroPython (x64): a node then loads its modules as the board does, without compiling them in
    its heap. Returns `out` (made afresh)."""
    import shutil

    from meetkit_tools.appbuild import mpy_cross_bin

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(firmware, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for src in sorted((out / "lib").glob("*.py")):
        subprocess.run([mpy_cross_bin(), f"-march={arch}", "-o", str(src.with_suffix(".mpy")), str(src)], check=True)
        src.unlink()
    return out


@dataclass
class Get:
    node: str
    release: str
    file: int
    off: int
    len: int


@dataclass
class FleetGateway:
    """A stand-in for the gateway's fleet side on a real broker (plain MQTT on 127.0.0.1).

    `keys`: node id -> its key. `releases`: version -> Release served on ota/get. `tamper(get,
    data) -> data`: what to send instead of a piece (None: nothing at all). Everything the nodes
    send on event and status is kept, in order."""

    host: str
    port: int
    keys: dict[str, bytes]
    prefix: str = "meetkit"
    releases: dict[str, Release] = field(default_factory=dict)
    tamper: Callable[[Get, bytes], bytes | None] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)
    gets: list[Get] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleetsim-{os.getpid()}-{id(self)}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    # -- running --------------------------------------------------------------------------------
    def start(self) -> "FleetGateway":
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        if not self._ready.wait(15):
            raise RuntimeError("the stand-in gateway did not connect to the broker")
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> "FleetGateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        c.subscribe([(f"{self.prefix}/+/event", 1), (f"{self.prefix}/+/status", 1), (f"{self.prefix}/+/ota/get", 0)])
        self._ready.set()

    def _on_message(self, c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
        parts = m.topic.split("/")
        node, kind = parts[-2] if parts[-1] != "get" else parts[-3], parts[-1]
        try:
            doc = json.loads(m.payload)
        except ValueError:
            doc = {"unreadable": m.payload[:200].decode(errors="replace")}
        if kind == "event":
            with self._lock:
                self.events.append(doc)
        elif kind == "status":
            with self._lock:
                self.statuses.append(doc)
        elif kind == "get":
            self._serve(node, doc)

    def _serve(self, node: str, doc: dict[str, Any]) -> None:
        try:
            g = Get(node, doc["release"], doc["file"], doc["off"], doc["len"])
        except (KeyError, TypeError):
            return
        with self._lock:
            self.gets.append(g)
        rel = self.releases.get(g.release)
        if rel is None or not 0 <= g.file < len(rel.manifest["files"]):
            return
        data: bytes | None = rel.files[rel.path(g.file)][g.off:g.off + min(g.len, PIECE_MAX)]
        if self.tamper is not None:
            data = self.tamper(g, data)
            if data is None:
                return
        head = json.dumps({"release": g.release, "file": g.file, "off": g.off}, separators=(",", ":")).encode()
        self.client.publish(f"{self.prefix}/{node}/ota/chunk", head + b"\n" + data, qos=0)

    # -- what the gateway sends -------------------------------------------------------------------
    def publish(self, node: str, sub: str, body: dict[str, Any], retain: bool = False,
                key: bytes | None = None) -> None:
        msg = envelope(key if key is not None else self.keys[node], dict({"node": node}, **body))
        self.client.publish(f"{self.prefix}/{node}/{sub}", msg, qos=1, retain=retain).wait_for_publish(10)

    def configure(self, node: str, version: int, config: dict[str, Any], **kw: Any) -> None:
        self.publish(node, "config", {"version": version, "config": config}, retain=True, **kw)

    def offer(self, node: str, release: Release, force: bool = False, **kw: Any) -> None:
        self.releases[release.version] = release
        self.publish(node, "ota", {"release": release.manifest, "force": force}, **kw)

    def command(self, node: str, cmd: str, id: int = 1, **kw: Any) -> None:
        self.publish(node, "cmd", {"cmd": cmd, "id": id}, **kw)

    # -- what the nodes said ----------------------------------------------------------------------
    def events_of(self, node: str, kind: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("node") == node and (kind is None or e.get("kind") == kind)]

    def wait_event(self, node: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events_of(node):
                if pred(e):
                    return e
            time.sleep(0.05)  # waits on: the event
        raise AssertionError(f"no such event from {node} within {timeout} s; events: {self.events_of(node)}")

    def last_status(self, node: str) -> dict[str, Any] | None:
        with self._lock:
            for s in reversed(self.statuses):
                if s.get("node") == node and s.get("online"):
                    return s
        return None

    def gets_of(self, node: str) -> list[Get]:
        with self._lock:
            return [g for g in self.gets if g.node == node]


class SimFleet:
    """The firmware's side of the fleet under test: a real Mosquitto, the stand-in gateway
    (FleetGateway) signing with each node's key, and with `gateway` the real gateway process
    acknowledging batches (a node proves a release only with a batch acknowledged); nodes are
    simulated boards running `firmware` (as .mpy: `mpy_firmware`) with node.key on their flash."""

    def __init__(self, tmp: Path, firmware: Path | None = None, *, gateway: bool = False,
                 heapsize: str | None = None) -> None:
        from meetkit_tools.services import GatewayProcess, Mosquitto   # the dev side's, not the Pi's
        self.tmp = tmp
        self.firmware = firmware
        self.heapsize = heapsize
        self.broker = Mosquitto(tmp / "broker").start()
        self.gateway = GatewayProcess(tmp / "gateway", self.broker.host, self.broker.port).start() if gateway else None
        self.keys: dict[str, bytes] = {}
        self.gw = FleetGateway(self.broker.host, self.broker.port, self.keys).start()
        self.nodes: list[Any] = []

    def node(self, node_id: str, firmware: Path | None = None, **spec: Any) -> Any:
        """A node started on the quiet street (unless `scenario`), its key known to the stand-in."""
        from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario
        key = self.keys[node_id] = new_key()
        spec.setdefault("scenario", load_scenario("quiet-street"))
        if self.heapsize:
            spec.setdefault("heapsize", self.heapsize)
        files = {"node.key": key.hex().encode(), **spec.pop("files", {})}
        n = SimNode(NodeSpec(node_id=node_id, workdir=self.tmp / node_id, broker_port=self.broker.port,
                             until_s=None, firmware=firmware or self.firmware, files=files, **spec))
        n.prepare()
        n.start()
        self.nodes.append(n)
        return n

    def status(self, node_id: str, timeout: float = 120, **want: Any) -> dict[str, Any]:
        """The node's latest status once it has the fields in `want`."""
        from meetkit_tools.dev.waits import wait_for

        def ok() -> dict[str, Any] | None:
            s = self.gw.last_status(node_id)
            return s if s and all(s.get(k) == v for k, v in want.items()) else None
        return wait_for(ok, timeout, f"{node_id}'s status with {want}")

    def ota(self, node_id: str, *states: str, timeout: float = 180) -> dict[str, Any]:
        """The node's next ota event in one of `states`."""
        return self.gw.wait_event(node_id, lambda e: e["kind"] == "ota" and e["state"] in states, timeout)

    def close(self) -> None:
        for n in self.nodes:
            n.stop()
        self.gw.stop()
        if self.gateway:
            self.gateway.stop()
        self.broker.stop()
