"""Fixtures for the gateway: a real Mosquitto (tests/conftest.py), the real gateway, real SQLite."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meetkit_gateway import config as configuration
from meetkit_gateway.config import Config
from meetkit_gateway.service import Gateway
from meetkit_gateway.store import Store

from meetkit_tools.dev.sensorthings_server import SensorThingsServer
from meetkit_tools.dev.waits import wait_for

CLI = str(Path(sys.executable).parent / "meetkit-gateway")

DOCS = Path(__file__).parents[2] / "docs"


def json_examples(markdown: Path) -> dict[str, list[str]]:
    """The ```json blocks of a Markdown file, by the heading they stand under."""
    out: dict[str, list[str]] = {}
    heading, block = "", None
    for line in markdown.read_text().splitlines():
        if block is not None:
            if line.startswith("```"):
                out.setdefault(heading, []).append("\n".join(block))
                block = None
            else:
                block.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```json"):
            block = []
    return out


# The example batch of docs/payload.md (records 16, before the node's clock was known, and 17),
# read from there: the tests hold the page to what the gateway does.
EXAMPLE: dict[str, Any] = json.loads(json_examples(DOCS / "payload.md")["Batch (the envelope)"][0])

# A batch of firmware 0.1.0, before the noise pipeline: LZeq as [avg, min, max, n], no A weighting.
# Such records may still sit in a node's spool and be sent after an update.
OLD_FIRMWARE: dict[str, Any] = {
    "v": 1, "node": "ams-001", "boot": 2, "fw": "0.1.0", "board": "esp32-devkitc",
    "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
    "units": {"pm25": "ug/m3", "temp": "degC", "LZeq": "dB"},
    "recs": [
        {"seq": 40, "ts": 1795507200, "up": 2400, "dur": 60,
         "pm25": [5.2, 4, 7, 58], "temp": [12.34, 12.3, 12.4, 12], "LZeq": [55.2, 48.1, 67.3, 60]},
    ],
}


def example(**envelope: Any) -> dict[str, Any]:
    b = copy.deepcopy(EXAMPLE)
    b.update(envelope)
    return b


def batch(node: str = "ams-001", boot: int = 3, seqs: range | list[int] = range(1), ts0: int | None = 1795510800,
          dur: int = 60) -> dict[str, Any]:
    """A valid batch with one record per seq, pm25 and temp in each, times following seq."""
    return {
        "v": 1, "node": node, "boot": boot, "fw": "0.1.0", "board": "esp32-devkitc",
        "sensors": {"pm": "pms5003", "climate": "bme280"},
        "units": {"pm25": "ug/m3", "temp": "degC"},
        "recs": [
            {"seq": s, "ts": None if ts0 is None else ts0 + s * dur, "up": s * dur, "dur": dur,
             "pm25": [5.0 + s, 4.0, 7.0 + s, 58], "temp": [12.5, 12.0, 13.0, 12]}
            for s in seqs
        ],
    }


def encode(doc: dict[str, Any] | bytes) -> bytes:
    return doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()


def write_config(tmp_path: Path, port: int, extra_mqtt: str = "", name: str = "gateway.toml",
                 store: str | Path = "gateway.db") -> Path:
    path = tmp_path / name
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive = 10\n{extra_mqtt}'
        f'[store]\npath = "{store}"\n[log]\nlevel = "DEBUG"\n[http]\nport = 0\n'
    )
    return path


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


class Publisher:
    """A paho client standing in for nodes: every publish waits for the broker's PUBACK."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-node-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(100)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, doc: dict[str, Any] | bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, encode(doc), qos=qos, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"publish to {topic} not acknowledged by the broker"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """A paho client that collects what the gateway publishes: acks, alarms (retained too)."""

    def __init__(self, host: str, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []  # (topic, JSON, retained)
        self.on_message: Callable[[str, dict[str, Any]], None] | None = None
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-listener-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(5), "the listener did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload) if msg.payload else {}
        if self.on_message is not None:
            self.on_message(msg.topic, doc)
        with self._lock:
            self.messages.append((msg.topic, doc, bool(msg.retain)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [doc for t, doc, _ in self.messages if t == topic]

    def wait(self, topic: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first `n` messages on `topic`, once there are that many."""
        wait_for(lambda: len(self.on(topic)) >= n, timeout, f"{n} messages on {topic}")
        return self.on(topic)[:n]

    def acked(self, topic: str) -> list[int]:
        """Every seq the acknowledgements on `topic` name, in the order they name them (a seq twice
        if two name it). The gateway sends one per node and boot for all the batches of a commit,
        so the messages themselves are not one per batch."""
        return seqs_of(self.on(topic))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def seqs_of(acks: list[dict[str, Any]]) -> list[int]:
    """The seqs of acknowledgements, their ranges spelled out (a compact one's lone seqs too)."""
    return [s for a in acks for r in a.get("seq", ()) for s in ([r] if isinstance(r, int) else range(r[0], r[1] + 1))]


def pubacks(broker: Any, client_id: str = "meetkit-gateway") -> int:
    """PUBACKs the broker received from the gateway (the broker must log with `log_type all`)."""
    return broker.log.read_text().count(f"Received PUBACK from {client_id} ")


class Running:
    """A gateway running in this process (paho's thread and the writer thread)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.gateway = Gateway(cfg).start()

    def wait_subscribed(self) -> "Running":
        assert self.gateway.source.subscribed.wait(10), "the gateway did not subscribe"
        return self

    def wait_committed(self, n: int) -> None:
        """Wait until the gateway has committed `n` messages in all."""
        wait_for(lambda: self.gateway.writer.committed >= n, what=f"{n} messages committed")
        assert self.gateway.writer.committed == n, f"committed {self.gateway.writer.committed}, expected {n}"

    def store(self) -> Store:
        """A second connection, as the demo or an operator would open it."""
        return Store(self.cfg.store.path, readonly=True)

    def stop(self) -> None:
        self.gateway.stop()


@pytest.fixture
def gateway_config(tmp_path: Path, broker: Any) -> Config:
    return configuration.load(write_config(tmp_path, broker.port))


@pytest.fixture
def gateway(gateway_config: Config) -> Iterator[Running]:
    g = Running(gateway_config).wait_subscribed()
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def acks(broker: Any) -> Iterator[Listener]:
    """Listens to every node's ack topic (subscribed before the test publishes anything)."""
    listener = Listener(broker.host, broker.port, "meetkit/+/ack")
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def node(broker: Any) -> Iterator[Publisher]:
    p = Publisher(broker.host, broker.port)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def store_toml(tmp_path: Path) -> Path:
    """A gateway.toml with only its store, `gateway.db` beside it (for the read-only commands)."""
    path = tmp_path / "gateway.toml"
    path.write_text('[store]\npath = "gateway.db"\n')
    return path


def fill_store(config: Path, *batches: dict[str, Any]) -> None:
    """Store `batches` (batch() documents) in the store of `config` through the store's own API."""
    from meetkit_gateway.payload import parse_batch
    from meetkit_gateway.store import Store

    with Store(config.parent / "gateway.db") as s:
        for b in batches:
            s.add_batch(parse_batch(encode(b), b["node"]))


@pytest.fixture
def sta() -> Iterator[SensorThingsServer]:
    """A strict SensorThings contract server (no real one installs here), stopped after."""
    s = SensorThingsServer()
    try:
        yield s
    finally:
        s.stop()


class StorePair:
    """Two stores with the same ordinary records (tests/gateway/older_store.py): `older` also holds
    what a gateway before issue 13 stored with implausible times and counters, `clean` does not.
    Each has a gateway.toml beside it for the read-only commands."""

    def __init__(self, root: Path, t0: int, received_at: float | None = None) -> None:
        from .older_store import build

        self.t0 = t0
        self.dirs = {}
        for name in ("older", "clean"):
            d = root / name
            d.mkdir()
            (d / "gateway.toml").write_text('[store]\npath = "gateway.db"\n')
            build(d / "gateway.db", t0, implausible_too=name == "older", received_at=received_at)
            self.dirs[name] = d

    def config(self, name: str) -> Path:
        return self.dirs[name] / "gateway.toml"

    def db(self, name: str) -> Path:
        return self.dirs[name] / "gateway.db"


@pytest.fixture
def older(tmp_path: Path) -> StorePair:
    """An older store and its clean twin, ordinary times from 2026-11-24T09:00Z."""
    from .older_store import T0

    return StorePair(tmp_path, T0)
