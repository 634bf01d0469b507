"""A node that speaks the release protocol of docs/payload.md ("Release offer") over a real paho
connection with its own broker account (the generated ACL applies), for the gateway's side of
rollouts: it checks the offer's envelope with its node key, judges the offer as the firmware does
(board, .mpy version, a version not newer refused unless forced), fetches every file piece by piece
on ota/get, checks each file's sha256, and reports its events. What it then does is its
`behaviour`:

    ok          installed, restarts on trial (status fw = the release, mode trial), proved, normal
    rollback    installed, on trial, then rolled back to the app it ran (status fw the old one)
    accept      accepts and fetches, then nothing more (it never proves)
    silent      answers no offer
    refuse:WHY  refuses every offer with reason WHY

The simulated firmware node of the end-to-end tests comes after the branches merge; this one
stands in for it at the gateway's side only.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from meetkit_gateway.releases import version_key
from meetkit_gateway.signed import SignatureError, opened
from meetkit_tools.services import FleetBroker

P = "meetkit"
PIECE = 2048
MPY = "6.3"


class Closed(Exception):
    """The node was closed (its power gone) while a helper thread of it was at work: it stops there."""


@dataclass
class Fetched:
    release: str
    files: dict[str, bytes] = field(default_factory=dict)
    sha_ok: dict[str, bool] = field(default_factory=dict)
    pieces: int = 0


class OtaNode:
    def __init__(self, broker: FleetBroker, node: str, fw: str = "0.2.0", behaviour: str = "ok",
                 board: str = "esp32-devkitc", key: bytes | None = None, gate: threading.Event | None = None) -> None:
        """`gate`: once on trial, wait for it before proving (a test does something meanwhile)."""
        self.node, self.fw, self.behaviour, self.board, self.gate = node, fw, behaviour, board, gate
        keys = json.loads((broker.out / "node-keys.json").read_text())["nodes"]
        self.key = key if key is not None else bytes.fromhex(keys[node])
        self.offers: list[dict[str, Any]] = []  # the bodies of the offers taken (MAC and node checked)
        self.offered_at: list[float] = []  # time.monotonic() of each
        self.bad_offers: list[str] = []  # offers refused for their envelope: bad mac, another node's
        self.fetched: list[Fetched] = []
        self.events: list[dict[str, Any]] = []  # what it reported
        self.event_at: dict[str, float] = {}  # time.monotonic() of its last event of each state
        self.chunks: queue.Queue[bytes] = queue.Queue()
        self.busy = threading.Lock()
        self.boot = 1
        self.mode = "normal"
        # the threads that answer offers (not in paho's); close() stops and joins them before the
        # connection goes, so none of them acts on a closed client after its test
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node)
        self.c.username_pw_set(node, broker.password(node))
        self.subscribed = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{P}/{node}/ota", 1), (f"{P}/{node}/ota/chunk", 0)])
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(broker.host, broker.plain_port, keepalive=30)
        self.c.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError(f"{node}: not subscribed")
        self.status()

    # -- what it sends -------------------------------------------------------------------------------

    def status(self) -> None:
        self._check_open()
        doc = {"v": 1, "node": self.node, "online": True, "boot": self.boot, "fw": self.fw, "up": 5,
               "mode": self.mode}
        self.c.publish(f"{P}/{self.node}/status", json.dumps(doc), qos=1).wait_for_publish(5)

    def event(self, state: str, release: str | None = None, **more: str) -> None:
        self._check_open()
        doc: dict[str, Any] = {"v": 1, "node": self.node, "kind": "ota", "state": state}
        if release is not None:
            doc["release"] = release
        doc.update(more)
        self.events.append(doc)
        self.event_at[state] = time.monotonic()
        self.c.publish(f"{P}/{self.node}/event", json.dumps(doc), qos=1).wait_for_publish(5)

    def ask(self, release: str, file: int, off: int, length: int = PIECE, topic_node: str | None = None) -> None:
        """One ota/get (QoS 1, so that the broker has it before whatever the test sends next)."""
        self._check_open()
        req = {"v": 1, "release": release, "file": file, "off": off, "len": length}
        self.c.publish(f"{P}/{topic_node or self.node}/ota/get", json.dumps(req), qos=1).wait_for_publish(5)

    def close(self) -> None:
        """Power off: the helper threads stop where they are (waiting for a piece or the gate, or
        before their next message), then the connection goes."""
        with self._threads_lock:
            self._closed.set()
            threads = list(self._threads)
        for t in threads:
            t.join(15)   # a publish under way waits 5 s at most for its PUBACK
        alive = [t.name for t in threads if t.is_alive()]
        self.c.disconnect()
        self.c.loop_stop()
        assert not alive, f"{self.node}: {alive} did not stop when the node was closed"

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise Closed(self.node)

    def _spawn(self, target: Any, *args: Any, **kw: Any) -> None:
        """`target` in a thread of its own (not paho's, which must go on reading), stopped by close()."""
        def run() -> None:
            try:
                target(*args, **kw)
            except Closed:   # closed meanwhile: a node without power says nothing more
                pass
        with self._threads_lock:
            if self._closed.is_set():
                return
            t = threading.Thread(target=run, name=f"{self.node} {target.__name__}", daemon=True)
            self._threads.append(t)
            t.start()

    def _wait(self, ready: Any, timeout: float) -> bool:
        """Wait up to `timeout` s for `ready()`, in steps, leaving at once when the node is closed."""
        deadline = time.monotonic() + timeout
        while not ready():
            self._check_open()
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)  # waits on: `ready`, or the node closed
        return True

    # -- what it receives ----------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/ota/chunk"):
            self.chunks.put(bytes(msg.payload))
            return
        try:
            body = opened(self.key, bytes(msg.payload))
            if body.get("node") != self.node:
                raise SignatureError("another node's")
        except SignatureError as e:
            self.bad_offers.append(str(e))
            self._spawn(self.event, "refused", reason=str(e))
            return
        self.offers.append(body)
        self.offered_at.append(time.monotonic())
        self._spawn(self._offer, body)

    def _offer(self, body: dict[str, Any]) -> None:
        if self.behaviour == "silent":
            return
        m = body["release"]
        if not self.busy.acquire(blocking=False):
            self.event("refused", m["version"], reason="busy with another update")
            return
        try:
            why = self._judge(m, body.get("force") is True)
            if why:
                self.event("refused", m["version"], reason=why)
                return
            self.event("accepted", m["version"])
            try:
                got = self.fetch(m)
            except TimeoutError as e:  # the gateway stopped serving (a halted rollout): said, as a node would
                self.event("refused", m["version"], reason=str(e))
                return
            if not all(got.sha_ok.values()):
                self.event("refused", m["version"], reason="sha256 does not match")
                return
            if self.behaviour == "accept":
                return
            self.event("installed", m["version"])
            old, self.fw, self.mode, self.boot = self.fw, m["version"], "trial", self.boot + 1
            self.status()
            if self.behaviour == "rollback":
                self.fw, self.mode, self.boot = old, "normal", self.boot + 1
                self.status()
                self.event("rolled_back", m["version"], back_to=old, reason="ImportError: no module named 'sds'")
                return
            if self.gate is not None:
                self._wait(self.gate.is_set, 60)
            self.event("proved", m["version"])
            self.mode = "normal"
            self.status()
        finally:
            self.busy.release()

    def _judge(self, m: dict[str, Any], force: bool) -> str | None:
        if self.behaviour.startswith("refuse:"):
            return self.behaviour.split(":", 1)[1]
        if self.board not in m["boards"]:
            return f"not for board {self.board}"
        if m["mpy"] != MPY:
            return f"built for .mpy {m['mpy']}, this node loads {MPY}"
        if version_key(m["version"]) <= version_key(self.fw) and not force:
            return f"not newer than {self.fw}, the release it runs"
        return None

    def fetch(self, m: dict[str, Any], timeout: float = 10) -> Fetched:
        """Every file of manifest `m`, piece by piece, each checked against its sha256."""
        got = Fetched(m["version"])
        for i, f in enumerate(m["files"]):
            data = bytearray()
            while len(data) < f["size"]:
                chunk = None
                for _ in range(3):  # a piece not answered is asked again, as the firmware does
                    self.ask(m["version"], i, len(data))
                    if self._wait(lambda: not self.chunks.empty(), timeout):
                        chunk = self.chunks.get_nowait()   # only this thread takes pieces
                        break
                if chunk is None:
                    raise TimeoutError(f"no piece {i}@{len(data)} of {m['version']} in 3 x {timeout} s")
                head, _, piece = chunk.partition(b"\n")
                h = json.loads(head)
                assert (h["release"], h["file"], h["off"]) == (m["version"], i, len(data)), h
                assert 0 < len(piece) <= PIECE
                data += piece
                got.pieces += 1
            got.files[f["path"]] = bytes(data)
            got.sha_ok[f["path"]] = hashlib.sha256(data).hexdigest() == f["sha256"]
        self.fetched.append(got)
        return got
