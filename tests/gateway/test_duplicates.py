"""(node, boot, seq) identifies a record for ever: a repeat is counted, not stored again."""

from __future__ import annotations

from .conftest import batch


def stored(gateway):
    with gateway.store() as s:
        c = s.counts()
        keys = sorted({(g.node, g.boot, g.seq) for g in s.readings()})
    return c, keys


def test_the_same_batch_twice_is_stored_once(gateway, node):
    b = batch(seqs=range(3))
    node.publish("meetkit/ams-001/up", b)
    node.publish("meetkit/ams-001/up", b)
    gateway.wait_committed(2)
    c, keys = stored(gateway)
    assert (c.records, c.readings, c.duplicates) == (3, 6, 3)
    assert keys == [("ams-001", 3, 0), ("ams-001", 3, 1), ("ams-001", 3, 2)]


def test_overlapping_batches_store_each_record_once(gateway, node):
    node.publish("meetkit/ams-001/up", batch(seqs=range(0, 4)))
    node.publish("meetkit/ams-001/up", batch(seqs=range(2, 7)))  # 2 and 3 again, e.g. a resend
    gateway.wait_committed(2)
    c, keys = stored(gateway)
    assert (c.records, c.duplicates) == (7, 2)
    assert [k[2] for k in keys] == list(range(7))
    with gateway.store() as s:
        assert s.counters()["records"] == 7


def test_the_first_copy_wins(gateway, node):
    first, second = batch(seqs=[5]), batch(seqs=[5])
    second["recs"][0]["pm25"] = [99.0, 98.0, 100.0, 58]
    node.publish("meetkit/ams-001/up", first)
    node.publish("meetkit/ams-001/up", second)
    gateway.wait_committed(2)
    with gateway.store() as s:
        (pm,) = s.readings(quantity="pm25")
        assert pm.avg == 10.0
        assert s.counts().duplicates == 1


def test_same_seq_of_another_boot_or_node_is_not_a_duplicate(gateway, node):
    node.publish("meetkit/ams-001/up", batch(node="ams-001", boot=3, seqs=[0]))
    node.publish("meetkit/ams-001/up", batch(node="ams-001", boot=4, seqs=[0]))  # after a reboot
    node.publish("meetkit/ams-002/up", batch(node="ams-002", boot=3, seqs=[0]))
    gateway.wait_committed(3)
    c, keys = stored(gateway)
    assert (c.records, c.duplicates) == (3, 0)
    assert keys == [("ams-001", 3, 0), ("ams-001", 4, 0), ("ams-002", 3, 0)]
