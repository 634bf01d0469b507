"""Backpressure: while the store cannot commit, the gateway holds a bounded amount and stops
reading; the broker keeps the rest. A real Mosquitto with no message size limit, the gateway's
real MQTT side and writer in this process, real SQLite locked from another connection."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway.ingest import MAX_QUEUE_BYTES
from meetkit_gateway.mqtt import KEEP_BYTES

from tests.conftest import Broker

from .conftest import Listener, Publisher, Running, batch, encode, pubacks, wait_for

CLIENT_ID = "meetkit-gateway"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", extra_conf="log_type all\n").start()  # its log shows each PUBACK
    try:
        yield b
    finally:
        b.stop()


def start_gateway(tmp_path: Path, broker: Broker, keepalive: int = 60) -> Running:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nkeepalive = {keepalive}\n'
                    f'client_id = "{CLIENT_ID}"\n[store]\npath = "gateway.db"\n[http]\nport = 0\n')
    return Running(configuration.load(path)).wait_subscribed()


def write_locked(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    return con


def flood(broker: Broker, tmp_path: Path, count: int, size: int, topic: str = "meetkit/flood/up") -> None:
    """`count` messages of `size` bytes at QoS 0 from another client (mosquitto_pub)."""
    f = tmp_path / "flood.bin"
    f.write_bytes(b"x" * size)
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "0", "-t", topic,
                    "-f", str(f), "--repeat", str(count)], check=True, timeout=60)


def acked(acks: Listener, node: str = "ams-001") -> set[int]:
    return {s for a in acks.on(f"meetkit/{node}/ack") for lo, hi in a["seq"] for s in range(lo, hi + 1)}


def test_a_message_over_the_limit_is_held_as_its_first_bytes(tmp_path, broker):
    # A valid batch padded with spaces to 1 MB (trailing whitespace is valid JSON) while the store
    # is locked: the gateway holds its first 4097 bytes, not 1 MB; it is dead-lettered with the size it
    # had, nothing of it stored, its seqs not acknowledged. The next batch is.
    gw = start_gateway(tmp_path, broker)
    acks = Listener(broker.host, broker.port, "meetkit/+/ack")
    node = Publisher(broker.host, broker.port)
    lock = write_locked(Path(gw.cfg.store.path))
    try:
        whole = encode(batch(seqs=[1, 2])).ljust(1 << 20)
        node.publish("meetkit/ams-001/up", whole)
        wait_for(lambda: gw.gateway.writer.received == 1, what="the message to reach the writer")
        items, nbytes = gw.gateway.writer.held
        assert items == 1 and nbytes < 5_000, f"held {nbytes} bytes for a 1 MB message"
        lock.rollback()
        node.publish("meetkit/ams-001/up", batch(seqs=[7]))
        wait_for(lambda: acked(acks) == {7}, what="the next batch's acknowledgement")
        gw.wait_committed(2)
        with gw.store() as s:
            (dl,) = s.dead_letters()
            assert s.counts().records == 1
        assert dl.code == "oversized"
        assert dl.reason == "1048576 bytes, the limit is 4096 (kept the first 4096 of 1048576 bytes)"
        assert dl.payload == whole[:4096]
        assert acked(acks) == {7}, "the oversized batch's seqs were not acknowledged"
    finally:
        lock.close()
        node.close()
        acks.close()
        gw.stop()


def test_held_past_keepalive_the_broker_drops_the_gateway_and_delivers_again(tmp_path, broker):
    # The store is locked; node batches arrive and are held, then a QoS 0 flood fills what the
    # gateway may hold (MAX_QUEUE_BYTES): paho's thread waits, sends nothing (not even PINGREQ),
    # and the broker drops the connection after 1.5 keepalives. Once the lock goes: every batch
    # stored once, acknowledged to its node, and acknowledged to the broker exactly once (the
    # held ones, committed after the drop, when delivered again on the new connection).
    gw = start_gateway(tmp_path, broker, keepalive=5)
    acks = Listener(broker.host, broker.port, "meetkit/+/ack")
    node = Publisher(broker.host, broker.port)
    lock = write_locked(Path(gw.cfg.store.path))
    try:
        for k in range(5):
            node.publish("meetkit/ams-001/up", batch(seqs=[2 * k, 2 * k + 1]))
        wait_for(lambda: gw.gateway.writer.received == 5, what="the batches to reach the writer")
        flood(broker, tmp_path, count=2 * MAX_QUEUE_BYTES // KEEP_BYTES, size=5_000)  # each held as KEEP_BYTES
        wait_for(lambda: gw.gateway.writer.waits >= 1, what="the gateway to stop reading")
        held, nbytes = gw.gateway.writer.held
        assert nbytes <= MAX_QUEUE_BYTES
        for k in range(5, 10):  # they wait in the broker
            node.publish("meetkit/ams-001/up", batch(seqs=[2 * k, 2 * k + 1]))
        wait_for(lambda: f"Client {CLIENT_ID} has exceeded timeout" in broker.log.read_text(), 30,
                 "the broker to drop the silent gateway")
        assert pubacks(broker, CLIENT_ID) == 0, "nothing acknowledged before its commit"
        lock.rollback()
        wait_for(lambda: acked(acks) == set(range(20)), 60, "every seq acknowledged to the node")
        wait_for(lambda: pubacks(broker, CLIENT_ID) >= 10, 30, "the broker's acks")
        with gw.store() as s:
            assert s.counts().records == 20
            c = s.counters()
        assert c.get("duplicates", 0) > 0, "the held batches came again on the new connection"
        assert c["rejected.oversized"] >= held - 5, "what it held of the flood, dead-lettered"
        assert pubacks(broker, CLIENT_ID) == 10, "each batch acknowledged to the broker once"
    finally:
        lock.close()
        node.close()
        acks.close()
        gw.stop()
