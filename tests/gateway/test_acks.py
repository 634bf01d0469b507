"""After the commit, and only then: the node's acknowledgement on <prefix>/<node>/ack and the MQTT
ack to the broker. The acknowledgement names the database and the seqs the database holds."""

from __future__ import annotations

import re
import sqlite3
import threading
import time

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway.acks import ranges


from .conftest import Listener, Publisher, Running, batch, example, pubacks, wait_for, write_config

DB_ID = re.compile(r"[0-9a-f]{16}")


def test_a_batch_is_acknowledged_after_its_commit_with_its_seqs_and_the_db_id(gateway, node, acks):
    seen_in_store: list[int] = []

    def on_ack(topic: str, doc: dict) -> None:  # the moment the node hears of it
        con = sqlite3.connect(gateway.cfg.store.path)
        seen_in_store.append(con.execute("SELECT count(*) FROM records WHERE seq IN (16, 17)").fetchone()[0])
        con.close()

    acks.on_message = on_ack
    node.publish("meetkit/ams-001/up", example())
    (ack,) = acks.wait("meetkit/ams-001/ack", 1)
    with gateway.store() as s:
        db_id = s.db_id
    assert DB_ID.fullmatch(db_id)
    assert ack == {"v": 1, "db": db_id, "boot": 3, "seq": [[16, 17]]}
    assert seen_in_store == [2]  # both records were committed before the ack went out
    assert gateway.gateway.db_id == db_id


def test_the_ack_message_is_compact_json_in_the_documented_form(gateway, node, broker):
    raw: list[tuple[bytes, int, bool]] = []
    listener = Listener(broker.host, broker.port, "meetkit/ams-001/ack")
    listener.client.on_message = lambda c, u, m: raw.append((m.payload, m.qos, m.retain))
    try:
        node.publish("meetkit/ams-001/up", batch(boot=7, seqs=[1, 2, 3, 7, 9, 10]))
        wait_for(lambda: raw, what="the ack")
    finally:
        listener.close()
    payload, qos, retain = raw[0]
    db_id = gateway.gateway.db_id
    assert payload == b'{"v":1,"db":"%s","boot":7,"seq":[[1,3],[7,7],[9,10]]}' % db_id.encode()
    assert (qos, retain) == (1, False)


def test_ranges():
    assert ranges([]) == []
    assert ranges([5]) == [(5, 5)]
    assert ranges([3, 1, 2, 7, 9, 10, 10]) == [(1, 3), (7, 7), (9, 10)]


def test_duplicates_are_acknowledged_again(gateway, node, acks):
    b = batch(seqs=range(3))
    node.publish("meetkit/ams-001/up", b)
    node.publish("meetkit/ams-001/up", b)  # the node did not hear the first ack, say
    node.publish("meetkit/ams-001/up", batch(seqs=range(2, 5)))  # overlaps: 2 is a duplicate
    first, second, third = acks.wait("meetkit/ams-001/ack", 3)
    assert first == second == {"v": 1, "db": gateway.gateway.db_id, "boot": 3, "seq": [[0, 2]]}
    assert third["seq"] == [[2, 4]]
    with gateway.store() as s:
        assert (s.counts().records, s.counts().duplicates) == (5, 4)


def test_a_dead_lettered_batch_is_acknowledged_when_its_seqs_can_be_read(gateway, node, acks):
    bad = example()
    bad["recs"][1]["temp"] = [191.5, 12.3, 12.4, 12]  # impossible: the value is refused, its record kept
    node.publish("meetkit/ams-001/up", bad)
    node.publish("meetkit/ams-002/up", example())  # node_mismatch: the ack goes to the topic's node
    node.publish("meetkit/ams-001/up", b"garbage")  # no seqs to read: not acknowledged
    node.publish("meetkit/ams-001/up", {"v": 1, "boot": 3, "recs": [{"seq": "x"}]})  # nor this
    node.publish("meetkit/ams-001/status", {"v": 1, "node": "ams-001", "online": True})  # no ack for status
    node.publish("meetkit/ams-001/up", batch(seqs=[40]))  # a good one, to know all came through
    gateway.wait_committed(6)
    # its ack is the last: the gateway acknowledges in the order it took the messages, so any ack
    # for those before it has arrived by then
    wait_for(lambda: {"v": 1, "db": gateway.gateway.db_id, "boot": 3, "seq": [[40, 40]]}
             in acks.on("meetkit/ams-001/ack"), what="the ack of the good batch")
    db_id = gateway.gateway.db_id
    assert acks.on("meetkit/ams-001/ack") == [
        {"v": 1, "db": db_id, "boot": 3, "seq": [[16, 17]]},
        {"v": 1, "db": db_id, "boot": 3, "seq": [[40, 40]]},
    ]
    assert acks.on("meetkit/ams-002/ack") == [{"v": 1, "db": db_id, "boot": 3, "seq": [[16, 17]]}]
    with gateway.store() as s:
        assert s.counts().dead_letters == 4
        assert s.counts().records == 3


def test_records_without_a_clock_are_stored_acknowledged_and_queryable(gateway, node, acks):
    node.publish("meetkit/ams-003/up", batch(node="ams-003", boot=0, seqs=range(4), ts0=None))
    (ack,) = acks.wait("meetkit/ams-003/ack", 1)
    assert ack["seq"] == [[0, 3]]
    con = sqlite3.connect(gateway.cfg.store.path)
    try:
        rows = con.execute("SELECT seq, ts, start, up FROM records WHERE node = 'ams-003' ORDER BY seq").fetchall()
    finally:
        con.close()
    assert rows == [(0, None, None, 0), (1, None, None, 60), (2, None, None, 120), (3, None, None, 180)]
    with gateway.store() as s:
        assert s.untimed(node="ams-003") == 4


def acks_sent(broker, client_id: str = "meetkit-gateway") -> int:
    """Acks to ams-001 the broker received from the gateway (`log_type all`)."""
    return sum(f"Received PUBLISH from {client_id} " in line and "'meetkit/ams-001/ack'" in line
               for line in broker.log.read_text().splitlines())


def test_the_mqtt_ack_waits_for_the_commit(tmp_path, broker):
    # The broker logs each PUBACK the gateway sends. While another connection holds the database's
    # write lock, the gateway cannot commit: the broker must not hear from it, nor the node.
    broker.stop()
    broker.extra_conf = "log_type all\n"
    broker.start()
    cfg = configuration.load(write_config(tmp_path, broker.port))
    g = Running(cfg).wait_subscribed()
    node2 = Publisher(broker.host, broker.port)
    acks2 = Listener(broker.host, broker.port, "meetkit/+/ack")
    try:
        node2.publish("meetkit/ams-001/up", batch(seqs=[0]))
        acks2.wait("meetkit/ams-001/ack", 1)
        wait_for(lambda: pubacks(broker) == 1, what="the first PUBACK in the broker's log")

        lock = sqlite3.connect(cfg.store.path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            node2.publish("meetkit/ams-001/up", batch(seqs=[1]))
            wait_for(lambda: g.gateway.writer.received == 2, what="the second message at the gateway")
            # the writer stuck in the commit: its loop, which passes every second, stops passing
            wait_for(lambda: time.monotonic() - g.gateway.writer.alive_at > 1.5, 10, "the writer in the commit")
            # a marker over the gateway's own connection: whatever it sent before (a PUBACK, an
            # ack to the node) reaches the broker, which logs it, before the marker
            g.gateway.source.client.publish("meetkit-test/marker", b"", qos=0)
            wait_for(lambda: "'meetkit-test/marker'" in broker.log.read_text(), 10, "the marker at the broker")
            assert pubacks(broker) == 1, "the gateway acknowledged a message it had not committed"
            assert acks_sent(broker) == 1, "the gateway told the node of a batch it had not committed"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        acks2.wait("meetkit/ams-001/ack", 2, timeout=15)
        wait_for(lambda: pubacks(broker) == 2, what="the second PUBACK")
        assert acks_sent(broker) == 2
    finally:
        acks2.close()
        node2.close()
        g.stop()


def test_the_dropped_count_is_kept_per_node(gateway, node, acks):
    node.publish("meetkit/ams-001/up", example(dropped=0))
    node.publish("meetkit/ams-002/up", example(node="ams-002", dropped=12))
    node.publish("meetkit/ams-002/up", example(node="ams-002", boot=4))  # without the field: kept
    node.publish("meetkit/ams-001/up", example(boot=4, dropped=3))  # the latest counts
    gateway.wait_committed(4)
    with gateway.store() as s:
        assert {n.node: n.dropped for n in s.nodes()} == {"ams-001": 3, "ams-002": 12}
    assert len(acks.wait("meetkit/ams-002/ack", 2)) == 2


@pytest.mark.parametrize("value, code, reason", [
    (-1, "out_of_range", "dropped: -1 is outside 0..9223372036854775807"),
    ("12", "wrong_type", "dropped: must be an integer, got a string"),
    (1.5, "wrong_type", "dropped: must be an integer, got a number"),
])
def test_a_bad_dropped_count_is_rejected(gateway, node, value, code, reason):
    node.publish("meetkit/ams-001/up", example(dropped=value))
    gateway.wait_committed(1)
    with gateway.store() as s:
        (dl,) = s.dead_letters()
    assert (dl.code, dl.reason) == (code, reason)


def test_acks_keep_flowing_when_many_batches_arrive_at_once(gateway, broker, acks):
    # More messages than the broker has in flight to one client (20): the gateway must keep
    # acknowledging, or the broker would stop sending.
    node = Publisher(broker.host, broker.port)
    try:
        infos = [node.client.publish("meetkit/ams-004/up", encode_batch(k), qos=1) for k in range(300)]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        node.close()
    got = acks.wait("meetkit/ams-004/ack", 300, timeout=30)
    assert sorted(a["seq"][0][0] for a in got) == list(range(300))
    with gateway.store() as s:
        assert s.counts().records == 300


def encode_batch(k: int) -> bytes:
    from .conftest import encode

    return encode(batch(node="ams-004", seqs=[k]))


def test_publishing_acks_from_the_writer_thread_while_paho_runs(gateway, broker, acks):
    # Several nodes at once, from several threads: acks land on the right topics.
    nodes = [f"ams-1{k:02d}" for k in range(5)]

    def run(name: str) -> None:
        p = Publisher(broker.host, broker.port)
        try:
            for seq in range(20):
                p.publish(f"meetkit/{name}/up", batch(node=name, seqs=[seq]))
        finally:
            p.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for name in nodes:
        got = acks.wait(f"meetkit/{name}/ack", 20)
        assert [a["seq"] for a in got] == [[[s, s]] for s in range(20)]
