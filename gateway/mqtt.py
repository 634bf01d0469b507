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

The Source's own network thread drives paho through its external-loop API (``loop_read``,
``loop_write``, ``loop_misc``) rather than ``loop_start``, which costs several system calls a
message (a wake-up byte for every packet queued, a `recv` for each part of each packet, a `send`
for each packet). Here the socket is read ahead in large blocks, what paho writes in one pass goes
out in one `send`, and the writer's acks (`Source.ack` from another thread) are handed over in
bulk: queued, with one wake-up of the network thread per burst. The thread connects, reconnects
when the broker goes away (1 s, doubling to 30 s between attempts, also when the broker is not up
at start), and subscribes again on every connect. The callbacks only log and call the sink, a
queue put that blocks while the gateway holds all it may (ingest.py): the thread then stops
reading, nothing is acknowledged, and the broker keeps the rest. Blocked for longer than 1.5
keepalives, the broker drops the connection; what was held is committed but acknowledged only when
delivered again on the next. The writer's publishes and acks never wait for this thread: they go
out once it reads again.

A message over the contract's size limit is never held whole, whatever the broker lets through:
only its first `KEEP_BYTES` (what its dead letter keeps) and its size.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
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

RETRY_MIN_S = 1.0  # between connection attempts: from 1 s, doubling, up to 30 s
RETRY_MAX_S = 30.0
TICK_S = 1.0  # the longest the network thread waits: keepalive pings are sent from its loop
LINGER_S = 2.0  # at the stop: how long the last writes may take to reach the broker (`_linger`)
READ_BURST = 256  # packets read at most before the thread writes what they made (the PUBACKs)


class _Client(mqtt.Client):
    """paho's client with its socket read ahead and its writes gathered.

    paho reads a packet in three or four `recv` calls (the command byte, each byte of the
    remaining length, the body) and sends each packet with a `send` of its own. `_sock_recv` here
    serves those reads from one large `recv`; `_sock_send` takes what paho writes into a buffer
    that `flush` sends at once, and the Source's loop flushes after every `loop_write`. These two
    are paho's private methods (paho-mqtt is pinned in pyproject.toml; tests/gateway/
    test_mqtt_source.py fails if what they rely on changes). For plain TCP only, which is all the
    Source opens: over TLS paho's own pair turns the SSL errors into what its loop expects."""

    READ_AHEAD = 65536
    WRITE_MAX = 262144  # gathered past this, paho is told the socket would block

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0
        self._wbuf = bytearray()

    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._rbuf) - self._rpos

    def unflushed(self) -> int:
        """Bytes paho wrote that are not sent yet."""
        return len(self._wbuf)

    def reset_buffers(self) -> None:
        """A new socket, or none: what was read or gathered belongs to the old one."""
        self._rbuf = b""
        self._rpos = 0
        self._wbuf.clear()

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            if self._sock is None:
                raise ConnectionError("no socket")
            data = self._sock.recv(self.READ_AHEAD)  # BlockingIOError when there is nothing: paho waits
            if len(data) <= bufsize:
                return data  # b"": the broker closed the connection, as paho expects
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        part = self._rbuf[self._rpos:end]
        self._rpos = min(end, len(self._rbuf))
        return part

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("no socket")
        if len(self._wbuf) >= self.WRITE_MAX:
            self.flush()
            if len(self._wbuf) >= self.WRITE_MAX:
                self._call_socket_register_write()
                raise BlockingIOError()  # paho keeps the packet and writes it later
        self._wbuf += buf
        return len(buf)

    def flush(self, sock: Any = None) -> None:
        """Send what was gathered over `sock` (paho's socket), as far as it takes it now. A socket
        that fails is shut down: paho's next read finds it closed and handles the lost connection
        as usual."""
        sock = sock if sock is not None else self._sock
        if not self._wbuf or sock is None:
            return
        try:
            sent = sock.send(self._wbuf)
        except BlockingIOError:
            return
        except OSError as e:
            log.debug("send failed: %s", e)
            self._wbuf.clear()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        del self._wbuf[:sent]


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
        self._quit = False  # the network thread disconnects and ends
        self._accepting = True
        self._accept_lock = threading.Lock()  # held while a message is handed to the sink
        self._conn = 0  # connection number, +1 on every successful connect (the network thread's)
        self._unreachable = False  # to log a run of failed connection attempts once
        self._refused = False  # the broker refused the last connection (credentials, ACL)
        #: called (in the network thread; keep it tiny) when the broker had no session for the
        #: gateway: what it queued and retained for us may be gone (configpub.py sends again)
        self.on_new_session: Callable[[], None] | None = None
        self.acked = 0  # messages acknowledged to the broker
        self.stale = 0  # acks not sent: the message came over an earlier connection
        # acks from other threads, taken by the network thread; one byte on the pipe wakes it
        self._acks: collections.deque[Inbound] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False  # a byte is on its way: no need for another
        self._wake_lock = threading.Lock()  # the pipe is closed under it: no write to a reused fd
        self._pipe_open = True
        self._thread: threading.Thread | None = None
        self._net_ident: int | None = None
        self._delay: float | None = None  # the last wait between connection attempts
        self._attempted = False  # the first attempt is at once, every later one after a wait
        c = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        if cfg.username is not None:
            c.username_pw_set(cfg.username, cfg.password)
        # No limit on our own publishes (acks to the nodes) awaiting a PUBACK: paho keeps each
        # until its PUBACK either way, but under a limit it walks through all of them at every
        # PUBACK, and a group commit publishes hundreds of acks at once (bench/gateway.py).
        c.max_inflight_messages_set(0)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        # the external-loop API: paho tells us when it has packets to write (a publish from
        # another thread wakes the network thread), and of every socket it opens and closes
        c.on_socket_open = self._on_socket
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        self.client = c

    @property
    def url(self) -> str:
        user = f"{self.cfg.username}@" if self.cfg.username else ""
        return f"mqtt://{user}{self.cfg.host}:{self.cfg.port}"

    def start(self) -> None:
        """Connect in the background; retries until the broker answers."""
        log.info("connecting to %s as %s (persistent session)", self.url, self.cfg.client_id)
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.cfg.client_id}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The network thread runs (it reconnects by itself while the broker is away)."""
        return self._thread is not None and self._thread.is_alive()

    def ack(self, msg: Inbound) -> None:
        """Tell the broker the gateway has `msg` (call once it is committed, or refused). From
        another thread the ack is queued for the network thread, which sends it at once."""
        if msg.qos == 0:
            return
        if threading.get_ident() == self._net_ident:
            self._ack_now(msg)
        else:
            self._acks.append(msg)
            self._wake()

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
        `timeout`, and end the network thread."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self.connected.is_set() and self._unsent() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._quit = True
        self._wake(force=True)
        if self._thread is not None:
            self._thread.join(max(1.0, deadline - time.monotonic()))
        else:
            self._close_pipe()

    def _unsent(self) -> bool:
        # acks not taken yet, paho's queues (packets not yet written: PUBACKs, PUBLISHes; our QoS 1
        # publishes the broker has not confirmed yet) and what is written but not sent
        c = self.client
        return bool(self._acks) or c.want_write() or bool(getattr(c, "_out_messages", ())) or c.unflushed() > 0

    # -- the network thread ------------------------------------------------------------------------

    def _wake(self, force: bool = False) -> None:
        if self._woken and not force:
            return
        self._woken = True
        with self._wake_lock:
            if not self._pipe_open:
                return
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:  # the pipe is full: the thread is awake anyway
                pass

    def _close_pipe(self) -> None:
        with self._wake_lock:
            if self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho has packets to write; the network thread looks for them before it waits
        if threading.get_ident() != self._net_ident:
            self._wake()

    def _on_socket(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # a socket opened, or about to close: the buffers belong to the old one (what paho wrote
        # last, a DISCONNECT, goes out first)
        self.client.flush(sock)
        self.client.reset_buffers()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._quit:
            self._linger(sock)
        self._on_socket(client, userdata, sock)

    def _linger(self, sock: Any) -> None:
        """At the stop, before paho closes the socket: send all that is written (the last PUBACKs, the
        DISCONNECT), then read until the broker closes its side, at most LINGER_S. Closed at once
        with the broker's messages still arriving, the socket would be reset, and a reset makes the
        broker's system drop what it received and its broker had not read yet: PUBACKs for messages
        the store holds, which the broker would then deliver again."""
        c = self.client
        deadline = time.monotonic() + LINGER_S
        try:
            while c.unflushed() and select.select([], [sock], [], max(0.0, deadline - time.monotonic()))[1]:
                c.flush(sock)
            sock.shutdown(socket.SHUT_WR)
            while select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                if not sock.recv(65536):
                    return  # the broker closed: it read all we sent
        except OSError:  # reset or gone already: nothing more to do for it
            pass

    def _run(self) -> None:
        self._net_ident = threading.get_ident()
        c = self.client
        try:
            while not self._quit:
                if c.socket() is None:
                    self._connect()
                else:
                    self._step()
            self._take_acks()
            if c.socket() is not None:
                c.disconnect()
                for _ in range(3):  # the DISCONNECT written; paho then closes the socket
                    if c.socket() is None:
                        break
                    c.loop_write()
                    c.flush()
        except Exception:  # the thread ends: `alive` says so, and the watchdog restarts the gateway
            log.exception("the MQTT network thread failed")
        finally:
            self.connected.clear()
            self._close_pipe()

    def _connect(self) -> None:
        """One connection attempt: the first at once, each later one after a wait of RETRY_MIN_S,
        doubled after every attempt that did not connect, up to RETRY_MAX_S (paho's own schedule)."""
        if self._attempted:
            self._delay = RETRY_MIN_S if self._delay is None else min(self._delay * 2, RETRY_MAX_S)
            self._sleep(self._delay)
            if self._quit:
                return
        self._attempted = True
        try:
            self.client.reconnect()  # the CONNECT is queued; the CONNACK comes in `_step`
        except OSError:
            self._on_connect_fail(self.client, None)

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or until `stop`; acks queued meanwhile are stale."""
        deadline = time.monotonic() + seconds
        while not self._quit:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if select.select([self._wake_r], [], [], left)[0]:
                self._drain_wake()
                self._take_acks()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        # after reading, never before: a `_wake` that found it set and wrote nothing had queued its
        # acks already, and the caller takes them next
        self._woken = False

    def _step(self) -> None:
        """Wait for the socket or a wake-up (at most TICK_S), read, take the acks, write."""
        c = self.client
        sock = c.socket()
        wlist = [sock] if c.want_write() or c.unflushed() else []
        timeout = 0.0 if c.buffered() else TICK_S
        readable, writable, _ = select.select([sock, self._wake_r], wlist, [], timeout)
        if self._wake_r in readable:
            self._drain_wake()
        if sock in readable or c.buffered():
            for _ in range(READ_BURST):
                if c.loop_read() != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:
                    return  # the connection is lost (paho called on_disconnect)
                if not c.buffered():
                    break
        self._take_acks()
        if c.want_write() or c.unflushed():
            c.flush()
            if c.loop_write() != mqtt.MQTT_ERR_SUCCESS or c.socket() is None:
                return
            c.flush()
        c.loop_misc()

    def _take_acks(self) -> None:
        acks = self._acks
        while acks:
            self._ack_now(acks.popleft())

    def _ack_now(self, msg: Inbound) -> None:
        if msg.conn != self._conn or not self.connected.is_set():
            self.stale += 1  # the broker delivers it again on the current connection
            return
        self.client.ack(msg.mid, msg.qos)
        self.acked += 1

    # -- paho callbacks (the network thread): keep them tiny ---------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.url, rc)
            self._refused = True
            return
        self._refused = False
        self._delay = None  # connected: the next attempt, after a loss, waits RETRY_MIN_S again
        self.session_present = bool(flags.session_present)
        if not self.session_present and self.on_new_session is not None:
            try:  # before `connected` is set: whoever publishes on it sees the lost session first
                self.on_new_session()
            except Exception:
                log.exception("on_new_session failed")
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
            except Exception:  # an exception here would end the network thread; unacknowledged, it comes again
                log.exception("could not queue a message from %s", msg.topic)


def _inbound(msg: mqtt.MQTTMessage, conn: int) -> Inbound:
    size = len(msg.payload)
    # Past the contract's limit only the first bytes are kept (a copy: the whole goes with paho's packet).
    data = bytes(msg.payload[:KEEP_BYTES]) if size > MAX_MESSAGE_BYTES else bytes(msg.payload)
    return Inbound(msg.topic, data, time.time(), bool(msg.retain), msg.mid, msg.qos, conn, size)
