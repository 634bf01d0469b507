"""The gateway's MQTT Source (gateway/mqtt.py): its own network loop over paho's external-loop API,
with the socket read ahead and paho's writes gathered, against a real Mosquitto."""

from __future__ import annotations

import inspect
import queue
import threading
from importlib.metadata import version

import paho.mqtt.client as mqtt

from meetkit_gateway.config import MqttConfig
from meetkit_gateway.ingest import Inbound
from meetkit_gateway.mqtt import KEEP_BYTES, Source
from meetkit_gateway.payload import MAX_MESSAGE_BYTES
from meetkit_gateway.topics import Topics
from meetkit_tools.dev.waits import wait_for

from .conftest import Publisher

# remaining lengths of one to four bytes, a body across the 64 KiB read-ahead, empty ones
SIZES = (0, 1, 100, 127, 128, 3000, 16_383, 16_384, 70_000, 200_000)


def test_paho_is_the_version_whose_internals_the_source_uses():
    # gateway/mqtt.py `_Client` overrides paho's private `_sock_recv` and `_sock_send`, and drives
    # paho through loop_read / loop_write / loop_misc. Before moving paho on, check that it still
    # reads and writes every packet through those two and closes a socket as below, then change this.
    assert version("paho-mqtt") == "2.2.0"
    src = inspect.getsource
    assert "self._sock_recv(" in src(mqtt.Client._packet_read)
    assert "self._sock_send(" in src(mqtt.Client._packet_write)
    assert "self._sock_recv(" not in src(mqtt.Client._packet_write)
    assert "self._packet_write()" in src(mqtt.Client.loop_write)
    assert "self._packet_read()" in src(mqtt.Client.loop_read)
    # the socket is closed after our on_socket_close saw it (what was gathered is sent first), and
    # a packet queued from another thread reaches us through on_socket_register_write
    close = src(mqtt.Client._sock_close)
    assert close.index("self._call_socket_close(sock)") < close.index("sock.close()")
    assert "self._call_socket_register_write()" in src(mqtt.Client._packet_queue)
    assert "self._sockpairW is not None" in src(mqtt.Client._packet_queue)  # no socketpair unless loop_start


def payload(i: int) -> bytes:
    size = SIZES[i % len(SIZES)]
    return bytes((i + k) % 251 for k in range(size))


def start(broker, sink) -> Source:
    s = Source(MqttConfig(host=broker.host, port=broker.port, client_id="test-source"), Topics(), sink)
    s.start()
    assert s.wait_settled(10), "the source did not subscribe"
    return s


def test_a_burst_of_every_size_arrives_whole_in_order_and_each_is_acknowledged_once(broker):
    # A writer thread acknowledges in groups, as the gateway's does after a commit, and the source
    # stops right after the last group: the acks still reach the broker, so a second connection in
    # the same session gets nothing again, only the marker published after it subscribed.
    n = 400
    got: queue.Queue[Inbound] = queue.Queue()
    received: list[Inbound] = []
    handed = threading.Event()

    def writer() -> None:
        while len(received) < n:
            group = [got.get(timeout=30)]
            while not got.empty():
                group.append(got.get())
            received.extend(group)
            for m in group:
                source.ack(m)
        handed.set()

    source = start(broker, got.put)
    threading.Thread(target=writer, daemon=True).start()
    node = Publisher(broker.host, broker.port)
    try:
        infos = [node.client.publish(f"meetkit/m{i}/up", payload(i), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
        assert handed.wait(30), f"the source passed on {len(received)} of {n} messages"
        source.stop()
        assert [m.topic for m in received] == [f"meetkit/m{i}/up" for i in range(n)]
        for i, m in enumerate(received):
            p = payload(i)
            whole = p if len(p) <= MAX_MESSAGE_BYTES else p[:KEEP_BYTES]
            assert (m.payload, m.size) == (whole, len(p)), f"message {i} changed on its way"
        assert (source.acked, source.stale) == (n, 0)

        again: queue.Queue[Inbound] = queue.Queue()
        second = start(broker, again.put)
        try:
            node.publish("meetkit/marker/up", b"marker")
            first = again.get(timeout=10)
            assert first.topic == "meetkit/marker/up", f"delivered again: {first.topic} {first.payload[:8]!r}"
        finally:
            second.stop()
    finally:
        node.close()


def test_an_ack_over_an_earlier_connection_is_not_sent_and_the_message_comes_again(broker):
    got: queue.Queue[Inbound] = queue.Queue()
    source = start(broker, got.put)
    node = Publisher(broker.host, broker.port)
    try:
        node.publish("meetkit/ams-001/up", b"one")
        first = got.get(timeout=10)
        # another client takes over the session's client id: the broker drops the source, which
        # reconnects (after RETRY_MIN_S) and is handed the unacknowledged message again
        thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-source", clean_session=False)
        thief.connect(broker.host, broker.port)
        thief.disconnect()
        again = got.get(timeout=15)
        assert (again.payload, again.conn) == (b"one", first.conn + 1)
        source.ack(first)  # from this thread: queued for the network thread, which finds it stale
        source.ack(again)
        wait_for(lambda: (source.stale, source.acked) == (1, 1), 10, "the two acks taken")
    finally:
        node.close()
        source.stop()
