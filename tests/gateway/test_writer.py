"""The writer commits what queued up while it was busy in one transaction (group commit)."""

from __future__ import annotations

import time

from meetkit_gateway.ingest import Inbound, Writer
from meetkit_gateway.store import Store
from meetkit_gateway.topics import Topics

from .conftest import batch, encode


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
    assert dl.reason == "topic 'meetkit/ams-001/up/extra' is not <prefix>/<node>/up or /status"
    store.close()
