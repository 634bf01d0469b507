"""The writer commits what queued up while it was busy in one transaction (group commit)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from meetkit_gateway.ingest import Inbound, Writer
from meetkit_gateway.mqtt import KEEP_BYTES
from meetkit_gateway.store import Store
from meetkit_gateway.topics import Topics

from .conftest import batch, encode, wait_for


def messages(n: int) -> list[Inbound]:
    return [Inbound("meetkit/ams-001/up", encode(batch(seqs=[k])), time.time(), mid=k + 1, qos=1) for k in range(n)]


def test_messages_queued_meanwhile_share_one_transaction(tmp_path):
    store = Store(tmp_path / "g.db")
    committed: list[list[int]] = []
    w = Writer(store, Topics(), on_committed=lambda done: committed.append([d.msg.mid for d in done]))
    for m in messages(200):
        w.submit(m)
    w.start()
    w.close()
    assert (w.received, w.committed, w.groups) == (200, 200, 1)
    # on_committed hears of every message once, in order, after its commit
    assert committed == [list(range(1, 201))]
    assert store.counts().records == 200
    store.close()


def test_groups_are_bounded(tmp_path):
    store = Store(tmp_path / "g.db")
    w = Writer(store, Topics(), max_group=50)
    for m in messages(120):
        w.submit(m)
    w.start()
    w.close()
    assert (w.committed, w.groups) == (120, 3)
    assert store.counts().records == 120
    store.close()


def test_a_message_on_a_foreign_topic_is_dead_lettered_not_lost(tmp_path):
    store = Store(tmp_path / "g.db")
    w = Writer(store, Topics())
    w.submit(Inbound("meetkit/ams-001/up/extra", b"{}", time.time()))
    w.start()
    w.close()
    (dl,) = store.dead_letters()
    assert dl.reason == "topic 'meetkit/ams-001/up/extra' is not <prefix>/<node>/up, /status or /event"
    store.close()


def test_a_group_with_a_mix_comes_out_as_one_by_one(tmp_path):
    # Batches (two nodes, one sent twice), a status, a bad batch and a foreign topic in one group:
    # each message gets what it would alone, and the acknowledgements keep the order of arrival.
    store = Store(tmp_path / "g.db")
    got: list = []
    w = Writer(store, Topics(), on_committed=lambda done: got.extend(done))
    t = 1795600000.0  # received a day after the batches' records started
    msgs = [
        Inbound("meetkit/ams-001/up", encode(dict(batch(seqs=[0, 1]), dropped=4)), t),
        Inbound("meetkit/ams-002/up", encode(batch(node="ams-002", seqs=[5], ts0=None)), t + 1),
        Inbound("meetkit/ams-001/status", b'{"v":1,"node":"ams-001","online":true}', t + 2),
        Inbound("meetkit/ams-001/up", encode(batch(seqs=[1, 2])), t + 3),  # seq 1 again
        Inbound("meetkit/ams-002/up", b'{"v":1,"node":"ams-002","boot":3,"recs":[{"seq":6}]}', t + 4),
        Inbound("meetkit/ams-002/up", encode(batch(node="ams-002", seqs=[7])), t + 5),
        Inbound("meetkit/x", b"{}", t + 6),
    ]
    for m in msgs:
        w.submit(m)
    w.start()
    w.close()
    assert w.groups == 1
    assert [d.msg for d in got] == msgs
    acks = [None if d.ack is None else (d.ack.node, d.ack.boot, d.ack.seqs) for d in got]
    assert acks == [("ams-001", 3, (0, 1)), ("ams-002", 3, (5,)), None, ("ams-001", 3, (1, 2)),
                    ("ams-002", 3, (6,)), ("ams-002", 3, (7,)), None]
    c = store.counters()
    assert (c["batches"], c["records"], c["duplicates"], c["status"]) == (4, 5, 1, 1)
    assert (c["rejected.missing_field"], c["rejected.bad_value"]) == (1, 1)
    # ams-002 seq 5 had no clock: it gets its start from seq 7 of the same boot
    starts = {(r.node, r.seq): r.start for r in store.readings()}
    assert starts[("ams-002", 5)] == starts[("ams-002", 7)] - 2 * 60
    nodes = {n.node: n for n in store.nodes()}
    assert (nodes["ams-001"].last_seen, nodes["ams-001"].online, nodes["ams-002"].last_seen) == (t + 3, True, t + 5)
    assert (nodes["ams-001"].dropped, nodes["ams-002"].dropped) == (4, None)  # a later batch not saying keeps it
    store.close()


def test_a_bug_in_one_batch_of_a_group_loses_only_that_one(tmp_path):
    # A bug that shows only when a certain batch is written (a trigger of the real SQLite raising
    # where the gateway expects none): the group is taken again one by one, that batch is
    # dead-lettered as an internal error, all the others are stored and acknowledged.
    store = Store(tmp_path / "g.db")
    store.db.execute("CREATE TRIGGER bug BEFORE INSERT ON recs WHEN NEW.seq = 3"
                     " BEGIN SELECT RAISE(ABORT, 'a bug'); END")
    bad = batch(seqs=[3])
    bad["recs"][0]["temp"] = [66.6, 12.0, 70.0, 12]
    msgs = messages(3) + [Inbound("meetkit/ams-001/up", encode(bad), time.time(), mid=9, qos=1)] + \
        [Inbound("meetkit/ams-001/up", encode(batch(seqs=[k])), time.time(), mid=k + 1, qos=1) for k in (4, 5)]
    got: list = []
    w = Writer(store, Topics(), on_committed=lambda done: got.extend(done))
    for m in msgs:
        w.submit(m)
    w.start()
    w.close()
    assert w.groups == 1
    assert [d.msg.mid for d in got] == [1, 2, 3, 9, 5, 6]
    # the dead-lettered batch is acknowledged too (the database holds it, as a dead letter)
    assert [d.ack.seqs for d in got] == [(0,), (1,), (2,), (3,), (4,), (5,)]
    assert sorted(r.seq for r in store.readings() if r.quantity == "temp") == [0, 1, 2, 4, 5]
    (dl,) = store.dead_letters()
    assert dl.code == "internal" and "a bug" in dl.reason and dl.payload == encode(bad)
    c = store.counters()
    assert (c["batches"], c["records"], c["rejected.internal"]) == (5, 5, 1)
    store.close()


def write_locked(db) -> sqlite3.Connection:
    """Another connection holding the store's write lock, as a long query or a backup would: the
    writer's commits wait, then fail with "database is locked" and are retried."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    return con


@pytest.mark.parametrize("bound", ["messages", "bytes"])
def test_submit_waits_while_the_messages_held_are_at_a_bound_and_loses_none(tmp_path, bound):
    # The writer cannot commit (the store is locked): what it holds, queued or in the group it is
    # trying to commit, stays within max_queue messages and max_queue_bytes bytes, and submit()
    # blocks (paho's thread, which then stops reading) until a commit makes room. None is
    # acknowledged before its commit; once the lock goes, every message is committed once, in order.
    store = Store(tmp_path / "g.db")
    msgs = messages(60)
    size = max(m.held_bytes for m in msgs)
    limits = dict(max_queue=10) if bound == "messages" else dict(max_queue_bytes=10 * size + size // 2)
    committed: list[int] = []
    w = Writer(store, Topics(), on_committed=lambda done: committed.extend(d.msg.mid for d in done), **limits)
    lock = write_locked(tmp_path / "g.db")
    submitted: list[int] = []

    def submit_all() -> None:
        for m in msgs:
            w.submit(m)
            submitted.append(m.mid)

    w.start()
    t = threading.Thread(target=submit_all)
    t.start()
    try:
        wait_for(lambda: w.waits >= 1, what="submit() to wait for room")
        items, nbytes = w.held
        assert items == len(submitted) == 10, "ten held, the eleventh waits"
        assert nbytes <= 10 * size + size // 2
        assert committed == [] and store.counts().records == 0
    finally:
        lock.rollback()
        lock.close()
    t.join(30)
    assert not t.is_alive(), "submit() went on once the writer committed"
    w.close()
    assert committed == [m.mid for m in msgs]
    assert store.counts().records == 60
    assert w.held == (0, 0) and w.received == w.committed == 60
    store.close()


def test_the_bytes_bound_lets_one_message_in_whatever_its_size(tmp_path):
    # A message larger than the bound is still taken when nothing else is held: no deadlock.
    store = Store(tmp_path / "g.db")
    w = Writer(store, Topics(), max_queue_bytes=100)
    w.submit(messages(1)[0])
    w.start()
    w.close()
    assert store.counts().records == 1
    store.close()


def test_a_message_held_truncated_is_dead_lettered_by_the_size_it_had(tmp_path):
    # mqtt.py keeps only the first bytes of a message over the contract's limit. Here those first
    # bytes are a valid batch followed by spaces (valid JSON): it must not be stored, nor its seqs
    # acknowledged, and the dead letter says the size the message had.
    store = Store(tmp_path / "g.db")
    whole = encode(batch(seqs=[1, 2])).ljust(1 << 20)
    got: list = []
    w = Writer(store, Topics(), on_committed=lambda done: got.extend(done))
    w.submit(Inbound("meetkit/ams-001/up", whole[:KEEP_BYTES], time.time(), mid=5, qos=1, size=len(whole)))
    w.submit(messages(1)[0])
    w.start()
    w.close()
    assert [d.ack for d in got][0] is None and got[1].ack is not None
    (dl,) = store.dead_letters()
    assert (dl.code, dl.reason) == ("oversized", "1048576 bytes, the limit is 4096 (kept the first 4096 of 1048576 bytes)")
    assert dl.payload == whole[:4096]
    assert store.counts().records == 1 and store.counters()["rejected.oversized"] == 1
    store.close()
