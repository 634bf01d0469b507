"""The broker side: a paho-mqtt 2.x client in a persistent session that acknowledges by hand.

The client connects with the configured, fixed client id and ``clean_session=False`` (MQTT 3.1.1),
and subscribes with QoS 1: the broker keeps the gateway's subscriptions and queues what the nodes
publish while the gateway is away. With ``manual_ack`` paho does NOT acknowledge a message when it
arrives; the service calls `Source.ack` once the transaction holding it committed. A message the
broker handed over but the gateway never acknowledged (it died first) is delivered again on the
next connection.

Packet ids are per connection: an ack is sent only over the connection the message came over. A
message received before a reconnect is delivered again after it (as part of the session) and is
acknowledged then, as a duplicate.

paho's network thread (``loop_start``) connects, reconnects by itself when the broker goes away
(1 s, doubling to 30 s between attempts, also when the broker is not up at start), and subscribes
again on every connect. The callbacks only log and call the sink, a queue put that blocks while
the gateway holds all it may (ingest.py): paho then stops reading, nothing is acknowledged, and
the broker keeps the rest. Blocked for longer than 1.5 keepalives, the broker drops the
connection; what was held is committed but acknowledged only when delivered again on the next.
The writer's publishes and acks never wait for this thread (paho holds only its callback lock
while it calls us, which `publish` and `ack` do not take): they go out once it reads again.

A message over the contract's size limit is never held whole, whatever the broker lets through:
only its first `KEEP_BYTES` (what its dead letter keeps) and its size.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import MqttConfig
from .ingest import Inbound
from .payload import MAX_MESSAGE_BYTES
from .store import DEAD_LETTER_MAX
from .topics import Topics

log = logging.getLogger(__name__)

QOS = 1

#: The bytes kept of a message over MAX_MESSAGE_BYTES: what its dead letter keeps (store.py), and
#: over that limit too, so that no parser takes the part for a valid message.
KEEP_BYTES = max(DEAD_LETTER_MAX, MAX_MESSAGE_BYTES + 1)


class Source:
    """Subscribes to the node topics, passes each message to `sink`, acknowledges when told."""

    def __init__(self, cfg: MqttConfig, topics: Topics, sink: Callable[[Inbound], None]) -> None:
        self.cfg = cfg
        self.topics = topics
        self.sink = sink
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # set once the broker granted the subscriptions
        self.session_present: bool | None = None  # from the last CONNACK
        self._stopping = False
        self._accepting = True
        self._accept_lock = threading.Lock()  # held while a message is handed to the sink
        self._conn_lock = threading.Lock()  # guards `_conn` and `connected` against `ack`
        self._conn = 0  # connection number, +1 on every successful connect
        self._unreachable = False  # to log a run of failed connection attempts once
        self._refused = False  # the broker refused the last connection (credentials, ACL)
        #: called (in paho's thread; keep it tiny) when the broker had no session for the gateway:
        #: what it queued and retained for us may be gone (configpub.py sends again)
        self.on_new_session: Callable[[], None] | None = None
        self.acked = 0  # messages acknowledged to the broker
        self.stale = 0  # acks not sent: the message came over an earlier connection
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        # No limit on our own publishes (acks to the nodes) awaiting a PUBACK: paho keeps each
        # until its PUBACK either way, but under a limit it walks through all of them at every
        # PUBACK, and a group commit publishes hundreds of acks at once (bench/gateway.py).
        c.max_inflight_messages_set(0)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    @property
    def url(self) -> str:
        user = f"{self.cfg.username}@" if self.cfg.username else ""
        return f"mqtt://{user}{self.cfg.host}:{self.cfg.port}"

    def start(self) -> None:
        """Connect in the background; retries until the broker answers."""
        log.info("connecting to %s as %s (persistent session)", self.url, self.cfg.client_id)
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    @property
    def alive(self) -> bool:
        """paho's network thread runs (it reconnects by itself while the broker is away)."""
        t = getattr(self.client, "_thread", None)
        return t is not None and t.is_alive()

    def ack(self, msg: Inbound) -> None:
        """Tell the broker the gateway has `msg` (call once it is committed, or refused)."""
        if msg.qos == 0:
            return
        with self._conn_lock:
            if msg.conn != self._conn or not self.connected.is_set():
                self.stale += 1  # the broker delivers it again on the current connection
                return
            self.client.ack(msg.mid, msg.qos)
            self.acked += 1

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish with QoS 1 from any thread; paho sends it once connected if it is not now. The
        returned info's `is_published()` says when the broker took it (its PUBACK)."""
        return self.client.publish(topic, payload, qos=QOS, retain=retain)

    def pause(self) -> None:
        """Hand no more messages to the sink. The subscriptions stay (they belong to the session):
        what arrives from now on is not acknowledged, and the broker delivers it again next time."""
        with self._accept_lock:
            self._accepting = False

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect once what was published (acks included) reached the broker, or after
        `timeout`, and end paho's thread."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self.connected.is_set() and self._unsent() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()

    def _unsent(self) -> bool:
        # paho's queues: packets not yet written (PUBACKs, PUBLISHes), and our QoS 1 publishes
        # the broker has not confirmed yet.
        return bool(getattr(self.client, "_out_packet", ())) or bool(getattr(self.client, "_out_messages", ()))

    # -- paho callbacks (paho's network thread): keep them tiny ------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.url, rc)
            self._refused = True
            return
        self._refused = False
        self.session_present = bool(flags.session_present)
        if not self.session_present and self.on_new_session is not None:
            try:  # before `connected` is set: whoever publishes on it sees the lost session first
                self.on_new_session()
            except Exception:
                log.exception("on_new_session failed")
        with self._conn_lock:
            self._conn += 1
            self.connected.set()
        self._unreachable = False
        log.info(
            "connected to %s (%s)", self.url,
            "session resumed" if self.session_present else "new session: nothing was queued for us",
        )
        if not self._stopping:
            client.subscribe([(t, QOS) for t in self.topics.subscriptions])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("cannot reach the broker %s; retrying", self.url)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._conn_lock:
            self.connected.clear()
        self.subscribed.clear()
        if self._stopping:
            log.info("disconnected from %s", self.url)
        else:
            log.warning("lost the broker %s (%s); reconnecting", self.url, rc)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        failed = [str(rc) for rc in rcs if rc.is_failure]
        if failed:
            log.error("the broker refused the subscription to %s: %s", self.topics.subscriptions, failed)
            return
        log.info("subscribed to %s", ", ".join(self.topics.subscriptions))
        self.subscribed.set()

    def wait_settled(self, timeout: float) -> bool:
        """Wait until subscribed, or the broker found away or refusing, at most `timeout` s; True
        when subscribed."""
        deadline = time.monotonic() + timeout
        while not self.subscribed.wait(0.05):
            if self._unreachable or self._refused or time.monotonic() > deadline:
                return False
        return True

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._accept_lock:
            if not self._accepting:
                return
            try:
                self.sink(_inbound(msg, self._conn))
            except Exception:  # an exception here would end paho's thread; unacknowledged, it comes again
                log.exception("could not queue a message from %s", msg.topic)


def _inbound(msg: mqtt.MQTTMessage, conn: int) -> Inbound:
    size = len(msg.payload)
    # Past the contract's limit only the first bytes are kept (a copy: the whole goes with paho's packet).
    data = bytes(msg.payload[:KEEP_BYTES]) if size > MAX_MESSAGE_BYTES else bytes(msg.payload)
    return Inbound(msg.topic, data, time.time(), bool(msg.retain), msg.mid, msg.qos, conn, size)
