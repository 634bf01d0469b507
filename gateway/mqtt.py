"""The broker side: a paho-mqtt 2.x client that hands every message to a sink and nothing more.

paho's network thread (``loop_start``) connects, reconnects by itself when the broker goes away
(1 s, doubling to 30 s between attempts, also when the broker is not up at start), and subscribes
again on every connect. The callbacks only log and call the sink, which must be quick (a queue put).
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
from .topics import Topics

log = logging.getLogger(__name__)

QOS = 1


class Source:
    """Subscribes to the node topics and passes each message to `sink`."""

    def __init__(self, cfg: MqttConfig, topics: Topics, sink: Callable[[Inbound], None]) -> None:
        self.cfg = cfg
        self.topics = topics
        self.sink = sink
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # set once the broker granted the subscriptions
        self._unsubscribed = threading.Event()
        self._stopping = False
        self._unreachable = False  # to log a run of failed connection attempts once
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        c.on_message = self._on_message
        self.client = c

    @property
    def url(self) -> str:
        user = f"{self.cfg.username}@" if self.cfg.username else ""
        return f"mqtt://{user}{self.cfg.host}:{self.cfg.port}"

    def start(self) -> None:
        """Connect in the background; retries until the broker answers."""
        log.info("connecting to %s as %s", self.url, self.cfg.client_id)
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def stop_receiving(self, timeout: float = 3.0) -> None:
        """Unsubscribe and wait for the broker to confirm: after that, no more messages come."""
        self._stopping = True
        if self.connected.is_set():
            result, _ = self.client.unsubscribe(self.topics.subscriptions)
            if result == mqtt.MQTT_ERR_SUCCESS and not self._unsubscribed.wait(timeout):
                log.warning("the broker did not confirm the unsubscribe within %.0f s", timeout)

    def stop(self) -> None:
        """Disconnect and end paho's thread."""
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (paho's network thread): keep them tiny ------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.url, rc)
            return
        self.connected.set()
        self._unreachable = False
        log.info("connected to %s", self.url)
        if not self._stopping:
            client.subscribe([(t, QOS) for t in self.topics.subscriptions])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("cannot reach the broker %s; retrying", self.url)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
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

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        self._unsubscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.sink(Inbound(msg.topic, msg.payload, time.time(), bool(msg.retain), msg.mid, msg.qos))
        except Exception:  # an exception here would end paho's thread
            log.exception("could not queue a message from %s", msg.topic)
