"""Releases over MQTT: the offers to the nodes and the pieces they ask for (docs/payload.md,
"Release offer"), on a connection of its own beside the writer, never through it.

The gateway's main connection (mqtt.py) hands every message to the writer, and stops reading
while the writer holds all it may; pieces served through it would wait for the disk, and a burst
of requests would queue in front of the batches. So releases have their own paho client
(`<client_id>-ota`, a clean session: a request nobody answered is simply asked again), which
subscribes to `<prefix>/+/ota/get` only (QoS 0) and answers each request in paho's own thread
from memory: a lookup, a slice of bytes already verified (releases.py), a publish.

    request  <prefix>/<node>/ota/get    {"v":1,"release":"0.3.0","file":3,"off":8192,"len":2048}
    answer   <prefix>/<node>/ota/chunk  {"release":"0.3.0","file":3,"off":8192}\\n<the bytes>

A node gets pieces of the one release it was offered in the rollout under way (`serve`), and
nothing else: a request for another release, or from a node not offered one, gets no answer
(`not_offered`), nor one that is not such a request (`bad_request`), asks beyond the file
(`beyond_end`) or comes faster than `pieces_per_s` (`rate`). Each is counted (/metrics:
meetkit_ota_requests_refused_total{reason}) and logged once a minute per node and reason. A piece
is at most `piece_max_bytes`, whatever `len` asks.

Offers are published here too (QoS 1), by the rollout manager (rollouts.py).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .config import MqttConfig, OtaConfig
from .releases import Release
from .topics import Topics

log = logging.getLogger(__name__)

#: a request is a small JSON object; anything longer is not one
REQUEST_MAX = 256
#: refusal reasons, as counted
REASONS = ("not_offered", "bad_request", "beyond_end", "rate")
LOG_EVERY_S = 60.0


class Pieces:
    """Answers ota/get requests from the releases offered: no MQTT here, so it can be tested alone.
    `serve` is called from the rollout manager's thread, `answer` from paho's: the map is replaced
    whole, never changed in place."""

    def __init__(self, piece_max: int, pieces_per_s: float) -> None:
        self.piece_max = piece_max
        self.rate = pieces_per_s
        self.burst = max(1.0, pieces_per_s)
        self._offered: Mapping[str, Release] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # node -> (tokens, at)
        self._lock = threading.Lock()  # the counters and buckets (paho's thread, the page's readers)
        self.counts: Counter[str] = Counter()
        self._logged: dict[tuple[str, str], float] = {}

    def serve(self, offered: Mapping[str, Release]) -> None:
        """From now on: node -> the release it may fetch (the others get nothing)."""
        self._offered = dict(offered)

    @property
    def offered(self) -> Mapping[str, Release]:
        return self._offered

    def answer(self, node: str, payload: bytes, now: float | None = None) -> bytes | None:
        """The ota/chunk message for `node`'s request, or None (counted, and why logged)."""
        now = time.monotonic() if now is None else now
        release = self._offered.get(node)
        req = _request(payload)
        if req is None:
            return self._refuse(node, "bad_request", f"not a request: {payload[:80]!r}", now)
        version, index, off, length = req
        if release is None or release.version != version:
            what = f"no release offered to it now" if release is None else f"it was offered {release.version}"
            return self._refuse(node, "not_offered", f"asked for release {version[:20]!r}: {what}", now)
        if not self._take(node, now):
            return self._refuse(node, "rate", f"more than {self.rate:g} pieces a second", now)
        if index >= len(release.data):
            return self._refuse(node, "beyond_end", f"file {index}: release {version} has {len(release.data)} files",
                                now)
        data = release.data[index]
        if off > len(data):
            return self._refuse(node, "beyond_end", f"file {index} ({release.files[index]['path']}) has {len(data)} "
                                f"bytes, asked from {off}", now)
        piece = data[off:off + min(length, self.piece_max)]
        head = json.dumps({"release": version, "file": index, "off": off}, separators=(",", ":")).encode()
        with self._lock:
            self.counts["served"] += 1
            self.counts["bytes"] += len(piece)
        return head + b"\n" + piece

    def _take(self, node: str, now: float) -> bool:
        with self._lock:
            tokens, at = self._buckets.get(node, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[node] = (tokens, now)
                return False
            self._buckets[node] = (tokens - 1.0, now)
            return True

    def _refuse(self, node: str, reason: str, why: str, now: float) -> None:
        with self._lock:
            self.counts[f"refused.{reason}"] += 1
            last = self._logged.get((node, reason))
            quiet = last is not None and now - last < LOG_EVERY_S
            if not quiet:
                self._logged[(node, reason)] = now
        if not quiet:
            log.warning("ota/get of %s refused (%s): %s", node, reason, why)
        return None

    def status(self) -> dict[str, Any]:
        """What /metrics shows of the serving side."""
        with self._lock:
            c = dict(self.counts)
        return {"served": c.get("served", 0), "bytes": c.get("bytes", 0),
                "refused": {r: c.get(f"refused.{r}", 0) for r in REASONS}, "offered_nodes": len(self._offered)}


def _request(payload: bytes) -> tuple[str, int, int, int] | None:
    """(release, file, off, len) of an ota/get request, None when it is not one."""
    if len(payload) > REQUEST_MAX:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("release"), str):
        return None
    fields = [doc.get(k) for k in ("file", "off", "len")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields) or fields[2] == 0:
        return None
    return doc["release"], fields[0], fields[1], fields[2]


class OtaLink:
    """The OTA connection: serves pieces (`pieces`), publishes offers (`offer`)."""

    def __init__(self, cfg: MqttConfig, ota: OtaConfig, topics: Topics) -> None:
        self.cfg = cfg
        self.topics = topics
        self.pieces = Pieces(ota.piece_max_bytes, ota.pieces_per_s)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stopping = False
        self._unreachable = False  # to log a run of failed connection attempts once
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg.client_id}-ota", protocol=mqtt.MQTTv311,
                        clean_session=True)
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_inflight_messages_set(0)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    def start(self) -> "OtaLink":
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def offer(self, node: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """Publish a signed offer to `node` (QoS 1; paho keeps it until it is connected)."""
        return self.client.publish(self.topics.ota(node), payload, qos=1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("releases: the broker refused the connection: %s", rc)
            return
        self.connected.set()
        self._unreachable = False
        if not self._stopping:
            client.subscribe(self.topics.ota_get, qos=0)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._unreachable:
            self._unreachable = True
            log.warning("releases: cannot reach the broker; retrying")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping:
            log.warning("releases: lost the broker (%s); reconnecting", rc)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        if any(rc.is_failure for rc in rcs):
            log.error("releases: the broker refused the subscription to %s (the ACL?)", self.topics.ota_get)
            return
        log.info("releases: serving pieces on %s", self.topics.ota_get)
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        node = self.topics.parse_ota_get(msg.topic)
        if node is None:
            return
        try:
            chunk = self.pieces.answer(node, bytes(msg.payload))
            if chunk is not None:
                client.publish(self.topics.ota_chunk(node), chunk, qos=0)
        except Exception:  # never end paho's thread
            log.exception("releases: answering %s failed", msg.topic)
