"""An upstream MQTT broker (the city's central broker): one JSON message per record, QoS 1 by
default, taken only when the broker acknowledged every message of the batch.

    [[forward]] type = "mqtt", url = "mqtts://broker.city.example:8883", topic = "meetkit/{node}/records"

The message, on the topic template with `{node}` filled in (UTF-8 JSON, no whitespace):

    {"v":1,"node":"ams-001","boot":3,"seq":17,"start":1795510800,"time":"2026-11-24T09:00:00Z",
     "dur":60,"fw":"0.2.0","board":"esp32-devkitc",
     "readings":{"pm25":{"avg":5.2,"min":4.0,"max":7.0,"n":58,"unit":"ug/m3","flags":["rh_high"]},
                 "LA90":{"avg":49.6,"min":null,"max":null,"n":null,"unit":"dB","flags":[]}, ...}}

In a region (`[region]` in gateway.toml) the topic names the town (config.region_topic): `{town}`
where the template says, else as its second level, "meetkit/{node}/records" becoming
"meetkit/utrecht/{node}/records" (the central broker's ACL lets a town's gateways publish under
`<prefix>/<town>/#` only), and the client id names the gateway (`meetkit-gateway-<gateway>-<name>`,
unless `client_id` is set): the town's gateways share the central broker and must not take each
other's connection. The message then carries the node's HOME town after `node`
(`{"v":1,"node":"zs-0001","town":"zeist","boot":3,...}`): a visiting node's (gateway/visitors.py)
on the topic of the town that forwards it, since the central ACL lets a gateway publish under its
own town only; consumers file a record by its `town`. The message is the same from every gateway
(no gateway in it), so a record forwarded by two (before and after a failover) is twice the same
message.

(node, boot, seq) identifies a record for ever (docs/payload.md) and `start` is its interval start
in UTC Unix seconds: a message that comes again (a retry after a lost PUBACK, a restart between
the broker's PUBACK and the cursor's commit, an operator's replay) is byte for byte the same, so a
consumer drops duplicates by that key (idempotent replay). Records an older gateway stored with an
implausible start or counters are passed over (core.py); a value JSON cannot hold (a REAL infinity
in an older store) is null.

Delivery: a new paho client (MQTT v5 by default) per connection, with a fixed client id; every
message of a batch is published, and the batch is taken only when every PUBACK came back with a
success reason code. No PUBACK for `timeout` seconds, a lost connection, a refused connection
(wrong password: CONNACK "Not authorized" / "Bad user name or password") or a TLS failure: the
batch is tried again after the forwarder's backoff, with the reason in `last_error`. MQTT v5 PUBACK
reason codes: "Not authorized" (0x87, the broker's ACL), "Topic Name invalid" (0x90), "Quota
exceeded" (0x97), "Unspecified error" (0x80) and the like are the target's configuration or load:
the batch is retried; "Payload format invalid" (0x99) refuses that message for good. A message
bigger than the Maximum Packet Size the broker announced in its CONNACK is not sent (the broker
would drop the connection, again and again): refused for good. A refused record is dead-lettered
on its own and the rest of the batch goes on. With MQTT 3.1.1 there are no reason codes: a broker
acknowledges a publish its ACL denies and drops it (Mosquitto does), so use v5 where the broker has
it.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import ForwardConfig, RegionConfig, region_topic
from ..plausible import finite
from ..timefmt import iso
from ..visitors import Visitors
from .core import Refused, Result, Row

log = logging.getLogger(__name__)

PERMANENT_PUBACK = {0x99}  # Payload format invalid: this message, not the setup or the load
MAX_INFLIGHT = 100
CHUNK = 10_000  # messages awaited together: message ids (1..65535) stay unique among them


@dataclass(frozen=True)
class Message:
    record_id: int
    readings: int
    topic: str
    payload: bytes


def encode_records(rows: Sequence[Row], topic: str, towns: Mapping[str, str] | None = None) -> list[Message]:
    """One message per record of `rows` (which come in record order), as the docstring shows;
    `towns` (in a region: node -> its home town, every node of `rows` in it) adds `town`."""
    out: list[Message] = []
    groups: dict[int, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.record_id, []).append(r)
    for record_id, rs in groups.items():
        r = rs[0]
        doc: dict[str, Any] = {"v": 1, "node": r.node}
        if towns is not None:
            doc["town"] = towns[r.node]
        doc |= {"boot": r.boot, "seq": r.seq, "start": r.start, "time": iso(r.start),
                "dur": r.dur, "fw": r.fw, "board": r.board,
                "readings": {g.quantity: {"avg": finite(g.avg), "min": finite(g.min), "max": finite(g.max),
                                          "n": g.n, "unit": g.unit,
                                          "flags": g.flags.split(",") if g.flags else []} for g in rs}}
        payload = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        out.append(Message(record_id, len(rs), topic.format(node=r.node), payload))
    return out


def _varint_size(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def packet_size(m: Message, qos: int, props_size: int) -> int:
    """Bytes of the PUBLISH packet that carries `m` (what a broker's Maximum Packet Size limits);
    `props_size`: its packed properties, length included (0 for MQTT 3.1.1)."""
    rest = 2 + len(m.topic.encode()) + (2 if qos else 0) + props_size + len(m.payload)
    return 1 + _varint_size(rest) + rest


class _Connection:
    """One connection to the broker: paho's network thread, the CONNACK, the PUBACKs by message id."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.max_packet: int | None = None  # the broker's Maximum Packet Size (v5 CONNACK), if it set one
        self.lost: str | None = None
        self.acks: dict[int, ReasonCode] = {}
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self.cond:
            self.connack = rc
            self.max_packet = getattr(props, "MaximumPacketSize", None)
            self.cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self.cond:
            self.lost = f"connection lost ({rc})"
            self.cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        with self.cond:
            self.acks[mid] = rc
            self.cond.notify_all()

    def close(self) -> None:
        self.client.on_disconnect = None
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


class MqttSender:
    """Publishes batches to one upstream broker; connects when needed, reconnects after a failure."""

    kind = "mqtt"

    def __init__(self, cfg: ForwardConfig, region: RegionConfig | None = None, visitors: Visitors | None = None) -> None:
        self.cfg = cfg
        # in a region each message says the node's home town (`visitors`; without: the gateway's)
        self.town = region.town if region is not None else None
        self.visitors = visitors if region is not None else None
        parts = urlsplit(cfg.url)
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname or ""
        self.port = parts.port or (8883 if self.tls else 1883)
        self.topic = cfg.topic if region is None else region_topic(cfg.topic, region.town)
        gateway = "" if region is None else f"{region.gateway}-"
        self.client_id = cfg.client_id or f"meetkit-gateway-{gateway}{cfg.name}"
        self.v5 = cfg.protocol == "v5"
        self._conn: _Connection | None = None

    def _where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def _tls_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate and host name (against ca_file, else the system's CAs)."""
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        if self.cfg.cert_file is not None and self.cfg.key_file is not None:
            ctx.load_cert_chain(str(self.cfg.cert_file), str(self.cfg.key_file))
        return ctx

    def _connect(self) -> _Connection | str:
        """A connected client, or why not (the secrets are read now: a fixed file is used next time)."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        try:
            if self.cfg.username is not None and self.cfg.password_file is not None:
                client.username_pw_set(self.cfg.username, self.cfg.password_file.read_text().strip())
        except OSError as e:
            return f"cannot read password_file: {e}"
        if self.tls:
            try:
                client.tls_set_context(self._tls_context())
            except (OSError, ssl.SSLError) as e:
                return f"TLS setup: cannot use ca_file/cert_file/key_file: {e}"
        conn = _Connection(client)
        try:
            client.connect(self.host, self.port, keepalive=max(10, int(self.cfg.timeout * 3)))
        except ssl.SSLCertVerificationError as e:
            if e.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
                return (f"{self._where()}: TLS: the broker's certificate does not name {self.host} "
                        f"({e.verify_message}); put a name the certificate was made for in url")
            return (f"{self._where()}: TLS: the broker's certificate is not trusted ({e.verify_message}); "
                    f"is ca_file {self.cfg.ca_file or '(none: the system CAs)'} the CA that signed it?")
        except (OSError, ssl.SSLError) as e:
            return f"{self._where()}: {type(e).__name__}: {e}"
        client.loop_start()
        deadline = time.monotonic() + self.cfg.timeout
        with conn.cond:
            while conn.connack is None and conn.lost is None and time.monotonic() < deadline:
                conn.cond.wait(deadline - time.monotonic())
            connack, lost = conn.connack, conn.lost
        if connack is None or connack.is_failure:
            conn.close()
            if connack is not None:
                who = f" (user {self.cfg.username})" if self.cfg.username else " (no username)"
                return f"{self._where()}: the broker refused the connection: {connack}{who}"
            return f"{self._where()}: {lost or f'no CONNACK within {self.cfg.timeout:g} s'}"
        log.info("forward %s: connected to %s as %s", self.cfg.name, self._where(), self.client_id)
        return conn

    def send(self, rows: Sequence[Row]) -> Result:
        nodes = {r.node for r in rows} if self.town is not None else set()
        towns = (None if self.town is None else self.visitors.towns(nodes) if self.visitors is not None
                 else dict.fromkeys(nodes, self.town))
        messages = encode_records(rows, self.topic, towns)
        if not messages:
            return Result(True)
        if self._conn is not None and self._conn.lost is not None:  # dropped while idle: a fresh start
            self.close()
        if self._conn is None:
            conn = self._connect()
            if isinstance(conn, str):
                return Result(False, conn)
            self._conn = conn
        conn = self._conn
        refused: list[Refused] = []
        for first in range(0, len(messages), CHUNK):
            result = self._publish(conn, messages[first:first + CHUNK])
            if not result.ok:
                return result
            refused += result.refused
        return Result(True, refused=refused)

    def _publish(self, conn: _Connection, messages: Sequence[Message]) -> Result:
        props = None
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
        props_size = len(props.pack()) if props is not None else 0
        with conn.cond:
            conn.acks.clear()
        refused: list[Refused] = []
        mids: dict[int, Message] = {}
        for m in messages:
            if conn.max_packet is not None and (size := packet_size(m, self.cfg.qos, props_size)) > conn.max_packet:
                refused.append(Refused(m.record_id, m.record_id, m.readings, None,
                                       f"{self._where()}: a message of {size} bytes for {m.topic}, more than the "
                                       f"Maximum Packet Size of {conn.max_packet} bytes the broker takes"))
                continue
            info = conn.client.publish(m.topic, m.payload, qos=self.cfg.qos, retain=self.cfg.retain, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                self.close()
                return Result(False, f"{self._where()}: publishing failed: {mqtt.error_string(info.rc)}")
            mids[info.mid] = m
        if self.cfg.qos == 0:  # nothing comes back: handed to the socket is all there is
            result = self._wait_written(conn, len(mids))
        else:
            result = self._wait_acks(conn, mids)
        return Result(True, refused=[*refused, *result.refused]) if result.ok else result

    def _wait_acks(self, conn: _Connection, mids: dict[int, Message]) -> Result:
        """Every PUBACK, as long as one comes at least every `timeout` seconds."""
        with conn.cond:
            seen = 0
            deadline = time.monotonic() + self.cfg.timeout
            while True:
                done = len(conn.acks)  # only this chunk's: earlier ones all came, failed ones closed
                if done == len(mids) or conn.lost is not None:
                    break
                if done > seen:
                    seen, deadline = done, time.monotonic() + self.cfg.timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.cond.wait(left)
            acks, lost = {m: conn.acks[m] for m in mids if m in conn.acks}, conn.lost
        if len(acks) < len(mids):
            self.close()
            why = lost or f"no PUBACK within {self.cfg.timeout:g} s"
            return Result(False, f"{self._where()}: {why} ({len(acks)} of {len(mids)} messages acknowledged)")
        failed = {mid: rc for mid, rc in acks.items() if rc.is_failure}
        retry = {mid: rc for mid, rc in failed.items() if rc.value not in PERMANENT_PUBACK}
        if retry:
            mid, rc = next(iter(retry.items()))
            what = "not authorised by the broker's ACL" if rc.value == 0x87 else "the broker did not take it"
            return Result(False, f"{self._where()}: PUBACK 0x{rc.value:02X} {rc}: {what} for topic "
                                 f"{mids[mid].topic} ({len(failed)} of {len(mids)} messages refused)")
        return Result(True, refused=[
            Refused(mids[mid].record_id, mids[mid].record_id, mids[mid].readings, None,
                    f"{self._where()}: PUBACK 0x{rc.value:02X} {rc} for topic {mids[mid].topic}")
            for mid, rc in failed.items()])

    def _wait_written(self, conn: _Connection, n: int) -> Result:
        deadline = time.monotonic() + self.cfg.timeout
        while conn.client.want_write() and time.monotonic() < deadline and conn.lost is None:
            time.sleep(0.01)
        if conn.lost is not None or conn.client.want_write():
            self.close()
            return Result(False, f"{self._where()}: {conn.lost or 'could not write'} (QoS 0, {n} messages)")
        return Result(True)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
