"""The persistent session: the gateway may die at any moment or be away, the broker may restart;
every batch a node published is stored exactly once and acknowledged to the node."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

from meetkit_tools.services import GatewayProcess

from tests.conftest import Broker

from .conftest import Listener, Publisher, batch, encode, wait_for

NODES = ("ams-001", "ams-002", "ams-003", "ams-004")


def count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def acked_seqs(acks: Listener, node: str) -> set[int]:
    return {s for a in acks.on(f"meetkit/{node}/ack") for lo, hi in a["seq"] for s in range(lo, hi + 1)}


def wait_log(gw: GatewayProcess, text: str, n: int = 1, timeout: float = 15) -> None:
    wait_for(lambda: gw.log.exists() and gw.log.read_text().count(text) >= n, timeout, f"{text!r} x{n} in the log")


def test_sigkill_during_ingest_loses_nothing_and_stores_nothing_twice(tmp_path):
    rng = random.Random(3)
    broker = Broker(tmp_path).start()
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port)
    acks = Listener(broker.host, broker.port, "meetkit/+/ack")
    node = Publisher(broker.host, broker.port)
    batches, per_batch = 100, 2  # per node: 400 batches, 800 records in all
    done = threading.Event()
    try:
        gw.start()
        wait_log(gw, "subscribed to meetkit/+/up")  # the session exists from here on

        def publish() -> None:
            infos = []
            for k in range(batches):
                for name in NODES:
                    seqs = range(k * per_batch, (k + 1) * per_batch)
                    infos.append(node.client.publish(f"meetkit/{name}/up", encode(batch(node=name, seqs=seqs)), qos=1))
                time.sleep(0.06)  # waits on: the nodes' pace (the kills fall while they publish)
            for info in infos:
                info.wait_for_publish(10)
            done.set()

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        at_kill = []
        for k in range(8):
            time.sleep(rng.uniform(0.2, 0.7))  # waits on: a random moment of ingest to kill it in
            gw.kill()
            at_kill.append(count(gw.db, "SELECT count(*) FROM records"))
            time.sleep(rng.uniform(0.0, 0.3))  # waits on: the gateway away a random while
            gw.start()
            # kill while ingesting, not while starting (a loaded machine can take longer than the
            # pause above to subscribe): each start resumes the session before the next kill
            wait_log(gw, "subscribed to meetkit/+/up", k + 2)
        assert done.wait(60), "the publisher did not finish"
        total = len(NODES) * batches * per_batch
        wait_for(lambda: count(gw.db, "SELECT count(*) FROM records") == total, 60, f"{total} records")
        for name in NODES:  # every batch acknowledged at least once, some twice (after a kill)
            wait_for(lambda: acked_seqs(acks, name) == set(range(batches * per_batch)), 30, f"all acks of {name}")
        wait_log(gw, "subscribed to meetkit/+/up", 9)  # the last start is up (SIGTERM before is a kill)
        assert gw.stop() == 0
    finally:
        node.close()
        acks.close()
        gw.kill()
        broker.stop()

    # The kills hit the gateway while it was ingesting, not before or after.
    print("records at each kill:", at_kill)
    assert any(0 < n < total for n in at_kill), at_kill
    assert count(gw.db, "SELECT count(*) FROM records") == total
    assert count(gw.db, "SELECT count(*) FROM (SELECT DISTINCT node, boot, seq FROM records)") == total
    assert count(gw.db, "SELECT sum(nv) FROM recs") == 2 * total  # a record's readings in its row
    assert count(gw.db, "SELECT count(*) FROM dead_letters") == 0
    for name in NODES:
        assert count(gw.db, f"SELECT max(seq) + 1 FROM records WHERE node = '{name}'") == batches * per_batch
    db_ids = {a["db"] for name in NODES for a in acks.on(f"meetkit/{name}/ack")}
    assert len(db_ids) == 1
    log = gw.log.read_text()
    assert log.count("session resumed") >= 8  # each restart picked up the same session


def test_messages_for_the_absent_gateway_survive_a_broker_restart(tmp_path):
    broker = Broker(tmp_path).start()
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port)
    try:
        gw.start()
        wait_log(gw, "subscribed to meetkit/+/up")
        assert gw.stop() == 0  # stopped cleanly: the subscription stays in the session

        node = Publisher(broker.host, broker.port)
        for k in range(50):
            node.publish("meetkit/ams-001/up", batch(seqs=[k]))
        node.close()

        broker.stop()  # writes its persistence file
        assert broker.db.exists()
        broker.start()  # same port, same file
        gw.start()
        wait_for(lambda: count(gw.db, "SELECT count(*) FROM records") == 50, 30, "the 50 queued batches")
        wait_log(gw, "session resumed", 1)
        assert gw.stop() == 0
    finally:
        gw.kill()
        broker.stop()
    assert count(gw.db, "SELECT max(seq) + 1 FROM records") == 50


def test_a_killed_broker_keeps_what_it_saved(tmp_path):
    # autosave_interval is 1 s: what was queued a few seconds before a crash of the broker is kept.
    broker = Broker(tmp_path).start()
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port)
    try:
        gw.start()
        wait_log(gw, "subscribed to meetkit/+/up")
        gw.kill()
        node = Publisher(broker.host, broker.port)
        for k in range(10):
            node.publish("meetkit/ams-001/up", batch(seqs=[k]))
        node.close()
        published = time.time()
        wait_for(lambda: broker.db.exists() and broker.db.stat().st_mtime > published, 15,
                 "the broker's autosave after the last publish")
        broker.kill()
        broker.start()
        gw.start()
        wait_for(lambda: count(gw.db, "SELECT count(*) FROM records") == 10, 30, "the 10 queued batches")
    finally:
        gw.kill()
        broker.stop()
