"""A fake node for the gateway's fleet tests: a paho client that speaks the node's side of
docs/payload.md, "Running the fleet", written from that page (not from the gateway's code): it
checks the signed envelope with its own HMAC-SHA256, takes a configuration only with a version
above the one it runs, refuses the keys it is told to (naming the rule), answers on `event` and
with `cfg` in its status, answers a `selftest` command with its checklist, and sends crash reports
when asked. A configuration that changes its link (wifi, broker, topic_prefix, ntp_host) runs on
trial: proved at once, or, when `fails(config)` says so, reverted (the version is then not taken
again). It never publishes a secret it was sent."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class FakeNode:
    def __init__(self, port: int, node: str, key: bytes, *, refuses: dict[str, str] | None = None,
                 checks: dict[str, list[str]] | None = None, running: int = 0, prefix: str = "meetkit",
                 fails: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.node = node
        self.key = key
        self.prefix = prefix
        self.refuses = refuses or {}
        self.checks = checks or {"pm": ["pass", "pms5003, 58 frames"], "mic": ["pass", "ics43434, 44.1 dB"]}
        self.running = running  # the configuration version it runs
        self.fails = fails
        self.reverted: set[int] = set()  # versions it put back (never taken again)
        self.config: dict[str, Any] = {}  # what it took, passwords included (it is the node)
        self.bodies: list[dict[str, Any]] = []  # every body it took
        self.refused: list[str] = []  # why it took nothing of a message
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node, clean_session=True)
        self.client.will_set(self._topic("status"), json.dumps({"v": 1, "node": node, "online": False}), 1, True)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(self._topic("config"), 1), (self._topic("cmd"), 1)])
        assert subscribed.wait(5), "the fake node did not subscribe"
        self.status()

    def _topic(self, kind: str) -> str:
        return f"{self.prefix}/{self.node}/{kind}"

    def publish(self, kind: str, doc: dict[str, Any], retain: bool = False) -> None:
        info = self.client.publish(self._topic(kind), json.dumps(doc, separators=(",", ":")), qos=1, retain=retain)
        if threading.current_thread() is not getattr(self.client, "_thread", None):
            info.wait_for_publish(5)  # in paho's own thread (a callback) the PUBACK cannot come while it waits

    def status(self) -> None:
        self.publish("status", {"v": 1, "node": self.node, "online": True, "boot": 3, "fw": "0.2.0",
                                "mode": "normal", "cfg": self.running}, retain=True)

    def event(self, kind: str, **fields: Any) -> None:
        self.publish("event", {"v": 1, "node": self.node, "kind": kind, **fields})

    def crash(self, boot: int, trace: str, count: int = 1) -> None:
        self.event("crash", boot=boot, at_up=3620, count=count, trace=trace)

    def _open(self, payload: bytes) -> dict[str, Any] | str:
        """The body of a signed envelope for this node, or why not."""
        try:
            doc = json.loads(payload)
            body_text, mac = doc["body"], doc["mac"]
        except (ValueError, KeyError, TypeError):
            return "not a signed envelope"
        want = hmac.new(self.key, body_text.encode("utf-8"), hashlib.sha256).hexdigest()
        if doc.get("v") != 1 or not hmac.compare_digest(want, mac):
            return "bad mac"
        body = json.loads(body_text)
        return body if body.get("node") == self.node else "another node's"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[1]
        body = self._open(msg.payload)
        if isinstance(body, str):
            with self._lock:
                self.refused.append(body)
            self.event(kind, state="refused", reason=body)  # config or cmd, as docs/payload.md says
            return
        with self._lock:
            self.bodies.append(body)
        if kind == "cmd" and body.get("cmd") == "selftest":
            self.event("selftest", id=body["id"], checks=self.checks)
        elif kind == "config":
            self._configure(body)

    def _configure(self, body: dict[str, Any]) -> None:
        version, config = body["version"], body["config"]
        if version <= self.running or version in self.reverted:
            return  # a replay, or the version it reverted: nothing changes
        applied = [k for k in config if k not in self.refuses]
        refused = {k: self.refuses[k] for k in config if k in self.refuses}
        trial = any(k in applied for k in ("wifi", "broker", "topic_prefix", "ntp_host"))
        with self._lock:
            before, back = dict(self.config), self.running
            self.config.update({k: config[k] for k in applied})
            self.running = version
        self.event("config", version=version, applied=applied, refused=refused, **({"trial_s": 300} if trial else {}))
        self.status()
        if trial and self.fails is not None and self.fails(config):
            with self._lock:
                self.config, self.running = before, back
                self.reverted.add(version)
            self.event("config", state="reverted", version=version, back_to=back,
                       reason=f"no broker within 300 s under version {version}")
            self.status()
        elif trial:
            self.event("config", state="proved", version=version)

    def taken(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.bodies)

    def wait_running(self, version: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.running < version:
            assert time.monotonic() < deadline, f"{self.node} runs {self.running}, not {version}"
            time.sleep(0.02)  # waits on: the running version

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
