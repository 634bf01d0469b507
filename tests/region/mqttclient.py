"""A paho client for the region's tests, connected synchronously (plain or TLS, MQTT v5 so that a
refused publish says so in its PUBACK); what it receives goes to a queue."""

from __future__ import annotations

import queue
import ssl
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes


class Client:
    def __init__(self, port: int, user: str, password: str, *, cafile: Path | None = None,
                 client_id: str | None = None) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        if cafile is not None:
            self.c.tls_set_context(ssl.create_default_context(cafile=str(cafile)))
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.pubacks: dict[int, object] = {}
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        self.c.on_message = lambda c, u, m: self.got.put((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.c.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.c.connect("127.0.0.1", port, keepalive=30, clean_start=True,
                       properties=Properties(PacketTypes.CONNECT))
        self.c.loop_start()
        try:
            self.rc = self.connack.get(timeout=10)
        except queue.Empty:
            self.rc = None
        if not self.ok:
            self.close()

    @property
    def ok(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def sub(self, *topics: str) -> list:
        self.c.subscribe([(t, 1) for t in topics])
        return self.subacks.get(timeout=10)

    def pub(self, topic: str, payload: str | bytes) -> str:
        """Publish at QoS 1 and wait for the PUBACK; its reason code's name ("Success", "Not authorized")."""
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        return str(self.pubacks.get(info.mid, "?"))

    def next(self, timeout: float = 10) -> tuple[str, bytes]:
        return self.got.get(timeout=timeout)

    def until(self, topic: str, timeout: float = 10) -> list[tuple[str, bytes]]:
        """Everything received up to and including the first message on `topic`."""
        seen = []
        while True:
            m = self.next(timeout)
            seen.append(m)
            if m[0] == topic:
                return seen

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
