"""After the commit, and only then: the node's acknowledgement on <prefix>/<node>/ack and the MQTT
ack to the broker. The acknowledgement names the database and the seqs the database holds: one
message per node and boot for all the batches of that node and boot in the commit."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway.acks import MAX_RANGES, Ack, merge, ranges, split

from .conftest import Listener, Publisher, Running, batch, example, pubacks, seqs_of, wait_for, write_config

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
    acks.wait("meetkit/ams-001/ack", 1)
    node.publish("meetkit/ams-001/up", b)  # the node did not hear the first ack, say
    acks.wait("meetkit/ams-001/ack", 2)
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
    # 40 is acknowledged last: the gateway acknowledges in the order it took the messages, so any
    # ack for those before it has arrived by then (in the same message, if they share a commit)
    wait_for(lambda: 40 in acks.acked("meetkit/ams-001/ack"), what="the ack of the good batch")
    db_id = gateway.gateway.db_id
    assert acks.acked("meetkit/ams-001/ack") == [16, 17, 40]
    assert all(a == {"v": 1, "db": db_id, "boot": 3, "seq": a["seq"]} for a in acks.on("meetkit/ams-001/ack"))
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
    # each seq once: in the ack of its commit, with the others of that commit
    wait_for(lambda: len(acks.acked("meetkit/ams-004/ack")) >= 300, 30, "every seq acknowledged")
    assert sorted(acks.acked("meetkit/ams-004/ack")) == list(range(300))
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
    for name in nodes:  # in order, each once, whichever of them shared a commit
        wait_for(lambda: len(acks.acked(f"meetkit/{name}/ack")) >= 20, what=f"the acks of {name}")
        assert acks.acked(f"meetkit/{name}/ack") == list(range(20))


# -- one acknowledgement per node and boot for a commit ---------------------------------------------


def test_merge_joins_each_node_and_boot_and_keeps_the_order_of_first_appearance():
    a = Ack("ams-001", 3, (16, 17))
    b = Ack("ams-002", 3, (5,))
    env = Ack("ams-001", 9, (), env=True, compact=True)
    c = Ack("ams-001", 3, (18, 20, 17))  # a duplicate 17 among them
    d = Ack("ams-001", 4, (0,))
    v2 = Ack("ams-001", 3, (30,), compact=True)  # another form: another message
    assert merge([a, b, env, c, d, v2]) == [
        Ack("ams-001", 3, (16, 17, 18, 20)), b, env, d, v2,
    ]
    assert merge([env, env]) == [env, env]  # each asks on its own
    assert merge([]) == []


def test_a_merged_ack_of_too_many_ranges_is_split_and_stays_under_1_kb():
    top = 2**30 - 1
    seqs = tuple(s for k in range(MAX_RANGES + 5) for s in (top - 300 + 3 * k, top - 299 + 3 * k))
    parts = merge([Ack("ams-001", top, seqs[:40]), Ack("ams-001", top, seqs[40:])])
    assert [len(ranges(p.seqs)) for p in parts] == [MAX_RANGES, 5]
    assert sorted(s for p in parts for s in p.seqs) == sorted(seqs)
    # the largest an acknowledgement can be: 32 ranges of 10-digit seqs, a 10-digit boot, a safe pair
    assert max(len(p.payload("f" * 16, (top, top))) for p in parts) < 1024
    assert split(Ack("ams-001", 3, tuple(range(500)))) == [Ack("ams-001", 3, tuple(range(500)))]  # one range


def test_two_batches_of_a_node_in_one_commit_get_one_ack_two_nodes_two_an_env_ack_its_own(gateway, node, acks):
    """While another connection holds the store's write lock the writer waits in its commit; the
    messages that arrive meanwhile are committed together when it is let go."""
    w = gateway.gateway.writer
    lock = sqlite3.connect(gateway.cfg.store.path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        node.publish("meetkit/ams-009/up", batch(node="ams-009", seqs=[0]))  # the writer takes it, and waits
        wait_for(lambda: w.received == 1 and w.backlog == 0, what="the first message in the writer's hands")
        node.publish("meetkit/ams-001/up", batch(seqs=[1, 2]))
        node.publish("meetkit/ams-002/up", batch(node="ams-002", seqs=[5]))
        node.publish("meetkit/ams-001/up", b'[2,9,"AAAA"]')  # v2, a boot whose envelope it lacks
        node.publish("meetkit/ams-001/up", batch(seqs=[3, 7]))
        node.publish("meetkit/ams-001/up", batch(boot=4, seqs=[0]))
        wait_for(lambda: w.received == 6, what="the messages at the gateway")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    gateway.wait_committed(6)
    assert w.groups == 2
    db = gateway.gateway.db_id
    wait_for(lambda: len(acks.messages) >= 5, what="the acks")
    assert [(t, doc) for t, doc, _ in acks.messages] == [
        ("meetkit/ams-009/ack", {"v": 1, "db": db, "boot": 3, "seq": [[0, 0]]}),
        ("meetkit/ams-001/ack", {"v": 1, "db": db, "boot": 3, "seq": [[1, 3], [7, 7]]}),
        ("meetkit/ams-002/ack", {"v": 1, "db": db, "boot": 3, "seq": [[5, 5]]}),
        ("meetkit/ams-001/ack", {"db": db, "boot": 9, "seq": [], "env": 1}),
        ("meetkit/ams-001/ack", {"v": 1, "db": db, "boot": 4, "seq": [[0, 0]]}),
    ]
    # the broker still gets its MQTT ack (PUBACK) for each message, merged or not
    wait_for(lambda: gateway.gateway.source.acked == 6, what="a PUBACK for each of the 6 messages")


def test_every_acknowledgement_merge_makes_is_one_the_schema_allows():
    from .test_payload_schema import validator

    ack_v = validator("ack")
    seqs = tuple(range(0, 200, 2))  # 100 ranges of one seq
    for compact in (False, True):
        parts = merge([Ack("ams-001", 3, seqs, compact=compact)])
        assert len(parts) == 4
        for p in parts:
            doc = json.loads(p.payload("0123456789abcdef"))
            assert ack_v.is_valid(doc), doc
    too_many = json.loads(Ack("ams-001", 3, seqs).payload("0123456789abcdef"))
    assert not ack_v.is_valid(too_many)  # what the gateway sent before it split
