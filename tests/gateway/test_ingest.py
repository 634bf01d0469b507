"""Valid messages published to a real broker end up in SQLite with everything the contract carries."""

from __future__ import annotations

import sqlite3
import time

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway.store import SCHEMA_VERSION, Store, StoreError

from .conftest import Running, batch, example, write_config


def rows(path, sql, *args):
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_valid_batch_is_stored_with_all_fields(gateway, node):
    node.publish("meetkit/ams-001/up", example())
    gateway.wait_committed(1)
    db = gateway.cfg.store.path

    assert rows(db, "SELECT node, boot, seq, ts, start, up, dur, fw, board, sensors, err FROM records ORDER BY seq") == [
        ("ams-001", 3, 16, None, 1795510740, 960, 60, "0.2.0", "esp32-devkitc",
         '{"climate":"bme280","mic":"ics43434","pm":"pms5003"}', None),
        ("ams-001", 3, 17, 1795510800, 1795510800, 1020, 60, "0.2.0", "esp32-devkitc",
         '{"climate":"bme280","mic":"ics43434","pm":"pms5003"}', '{"pm":2}'),
    ]
    with Store(db, readonly=True) as s:
        readings = sorted((g.seq, g.quantity, g.avg, g.min, g.max, g.n, g.unit, g.flags) for g in s.readings())
    assert readings == [
        (16, "pm1", 3.0, 2.0, 4.0, 57, "ug/m3", ""),
        (16, "pm25", None, None, None, None, "ug/m3", "missing"),
        (16, "temp", 12.3, 12.3, 12.4, 12, "degC", ""),
        # the noise indicators: LAeq a summary (LAFmin, LAFmax, seconds), the others avg only
        (17, "LA10", 58.4, None, None, None, "dB", ""),
        (17, "LA50", 53.9, None, None, None, "dB", ""),
        (17, "LA90", 49.6, None, None, None, "dB", ""),
        (17, "LAeq", 55.2, 48.3, 67.1, 60, "dB", ""),
        (17, "LZeq", 63.8, None, None, None, "dB", ""),
        (17, "cov", 1.0, None, None, None, "1", ""),
        (17, "pm1", 3.1, 2.0, 5.0, 58, "ug/m3", ""),
        (17, "pm10", 8.9, 6.0, 12.0, 58, "ug/m3", ""),
        (17, "pm25", 5.2, 4.0, 7.0, 58, "ug/m3", "rh_high"),
        (17, "press", 1013.21, 1013.1, 1013.3, 12, "hPa", ""),
        (17, "rh", 81.2, 80.9, 81.5, 12, "%", ""),
        (17, "temp", 12.34, 12.3, 12.4, 12, "degC", ""),
    ]
    # received_at is the gateway's clock, not the node's
    (received_at,) = rows(db, "SELECT DISTINCT received_at FROM records")[0]
    assert abs(received_at - time.time()) < 60
    with gateway.store() as s:
        assert s.counters() == {"batches": 1, "records": 2}
        assert s.counts().dead_letters == 0
        assert [n.node for n in s.nodes()] == ["ams-001"]
        assert s.nodes()[0].last_seen is not None


def test_records_before_the_clock_get_their_time_from_a_later_batch(gateway, node):
    # boot 5: no NTP yet for seq 0..2, then the clock is known from seq 3 on
    node.publish("meetkit/ams-002/up", batch(node="ams-002", boot=5, seqs=range(3), ts0=None))
    gateway.wait_committed(1)
    with gateway.store() as s:
        assert s.readings(node="ams-002") == []
        assert s.untimed(node="ams-002") == 3
    node.publish("meetkit/ams-002/up", batch(node="ams-002", boot=5, seqs=[3], ts0=1795510800))
    gateway.wait_committed(2)
    with gateway.store() as s:
        assert s.untimed() == 0
        starts = sorted({g.start for g in s.readings(node="ams-002")})
    assert starts == [1795510800 + 60 * k for k in range(4)]


def test_status_and_last_will_fill_the_nodes_table(gateway, node):
    node.publish("meetkit/ams-001/status",
                 {"v": 1, "node": "ams-001", "boot": 3, "online": True, "fw": "0.1.0", "up": 1020, "rssi": -61},
                 retain=True)
    gateway.wait_committed(1)
    with gateway.store() as s:
        (n,) = s.nodes()
    assert (n.node, n.online, n.boot, n.fw, n.up, n.rssi) == ("ams-001", True, 3, "0.1.0", 1020, -61)
    assert n.last_seen is not None and n.status_at == n.last_seen

    node.publish("meetkit/ams-001/status", {"v": 1, "node": "ams-001", "online": False})
    gateway.wait_committed(2)
    with gateway.store() as s:
        (n,) = s.nodes()
        assert s.counters() == {"status": 2}
    # the last will says only "offline": what the node said before stays
    assert (n.online, n.boot, n.fw, n.rssi) == (False, 3, "0.1.0", -61)


def test_a_retained_status_from_before_the_start_is_not_a_sign_of_life(tmp_path, broker, node):
    node.publish("meetkit/ams-009/status",
                 {"v": 1, "node": "ams-009", "boot": 1, "online": True, "fw": "0.1.0", "up": 5, "rssi": -70},
                 retain=True)
    g = Running(configuration.load(write_config(tmp_path, broker.port))).wait_subscribed()
    try:
        g.wait_committed(1)
        with g.store() as s:
            (n,) = s.nodes()
        assert n.online is True and n.rssi == -70
        assert n.last_seen is None  # the broker replayed it; the node itself was not heard from
    finally:
        g.stop()


def test_latest_gives_the_newest_record_of_each_node(gateway, node):
    node.publish("meetkit/ams-001/up", batch(node="ams-001", boot=2, seqs=range(5)))
    node.publish("meetkit/ams-001/up", batch(node="ams-001", boot=3, seqs=range(2)))  # rebooted
    node.publish("meetkit/ams-002/up", batch(node="ams-002", boot=0, seqs=range(3)))
    gateway.wait_committed(3)
    with gateway.store() as s:
        latest = s.latest()
    assert [(x.node, x.boot, x.seq) for x in latest] == [("ams-001", 3, 1), ("ams-002", 0, 2)]
    assert list(latest[1].readings) == ["pm25", "temp"]
    pm = latest[1].readings["pm25"]
    assert (pm.avg, pm.min, pm.max, pm.n, pm.unit) == (7.0, 4.0, 9.0, 58, "ug/m3")
    assert latest[1].start == 1795510800 + 2 * 60


def test_the_topic_prefix_comes_from_the_config(tmp_path, broker, node):
    cfg = configuration.load(write_config(tmp_path, broker.port, 'topic_prefix = "city/meetkit"\n'))
    g = Running(cfg).wait_subscribed()
    try:
        node.publish("meetkit/ams-001/up", batch(node="ams-001", seqs=[1]))  # not ours
        node.publish("city/meetkit/ams-001/up", batch(node="ams-001", seqs=[2]))
        g.wait_committed(1)
        with g.store() as s:
            assert [(r.node, r.seq) for r in s.readings()] == [("ams-001", 2), ("ams-001", 2)]
    finally:
        g.stop()


def test_the_store_is_wal_and_versioned_and_survives_a_restart(tmp_path, broker, node):
    cfg = configuration.load(write_config(tmp_path, broker.port))
    for k in range(2):
        g = Running(cfg).wait_subscribed()
        try:
            node.publish("meetkit/ams-001/up", batch(seqs=[k]))
            g.wait_committed(1)
        finally:
            g.stop()
    assert rows(cfg.store.path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(cfg.store.path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(cfg.store.path, "SELECT seq FROM records ORDER BY seq") == [(0,), (1,)]


def test_a_store_from_a_newer_gateway_is_refused(tmp_path):
    path = tmp_path / "new.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this gateway's "
                                         f"{SCHEMA_VERSION}"):
        Store(path)
