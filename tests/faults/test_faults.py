"""The fault suite (issue 3): no record lost, none stored twice, each with its right time.

Each test runs real parts (Mosquitto, the gateway process, SQLite, simulated nodes running the
unmodified firmware), breaks one thing the way it breaks in a street, lets everything recover,
then compares every node's ledger with the gateway's database (tools/dev/faultrig.py). `make faults`
prints the table of all of them. The nodes are air-only boards (no microphone): the faults are
about the data's path, and a node without audio simulates an hour in a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from meetkit_tools.dev.faultrig import Rig, db_rows, read_ledger, scenario
from meetkit_tools.dev.waits import wait_for

AIR = "esp32-devkitc-air"
INFLIGHT_MAX_RECORDS = 4 * 12   # node.py: INFLIGHT_MAX batches of at most about 12 records
H = 3600


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def stored(rig: Rig) -> int:
    try:
        return len(db_rows(rig.gateway.db))
    except sqlite3.Error:
        return 0


def assert_clean(out) -> None:
    assert out.generated > 0
    assert out.lost == 0, out.problems
    assert out.duplicated == 0, out.problems
    assert out.wrong_time == 0, out.problems
    assert out.untimed == 0, out.problems
    assert out.crashes == 0, "the firmware hit an unexpected error (see the node's console.log)"


# 1 -----------------------------------------------------------------------------------------------
def test_wifi_down_six_hours(rig: Rig) -> None:
    outage = (1800, 1800 + 6 * H)
    n = rig.node("air-01", scenario(wifi_down=[outage]), board=AIR, until_s=outage[1] + 1 * H)
    rig.run()
    rig.settle()
    out = rig.judge("wifi down 6 h")
    assert_clean(out)
    led = read_ledger(n.console.read_text())
    in_outage = [k for k, r in led.records.items() if outage[0] <= r["up"] < outage[1]]
    assert len(in_outage) >= 350, "the node kept measuring (and spooling) through the outage"


# 2 -----------------------------------------------------------------------------------------------
def test_broker_restarted_five_times(rig: Rig) -> None:
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
    rng = random.Random(2)
    at = sorted(rng.uniform(0.3 * H, 2 * H) for _ in range(5))   # simulated times, then an hour of calm

    def faults() -> None:
        for t in at:
            rig.wait_virtual("air-01", t)
            rig.broker.stop()
            time.sleep(rng.uniform(0.2, 0.8))  # waits on: the broker away a random while
            rig.broker.start()

    rig.run(faults)
    rig.settle()
    assert_clean(rig.judge("broker restarted 5x"))


# 3 -----------------------------------------------------------------------------------------------
def test_gateway_killed_ten_times_while_ingesting(rig: Rig) -> None:
    # A backlog (an hour without Wi-Fi) so that the gateway is busy when it dies.
    for i, sc in enumerate(("quiet-street", "busy-road", "quiet-street")):
        rig.node(f"air-0{i + 1}", scenario(sc, wifi_down=[(600, 2 * H)]), board=AIR, until_s=24 * H, seed=i + 1)
    rng = random.Random(3)
    at = sorted(rng.uniform(2 * H, 3 * H) for _ in range(10))   # the backlogs drain from 2 h on
    kills = []

    def faults() -> None:
        for t in at:
            rig.wait_virtual("air-01", t)
            before = stored(rig)
            # killed while storing: once it has committed something since its (re)start
            wait_for(lambda: stored(rig) > before, 20, "the gateway to store again")
            time.sleep(rng.uniform(0.0, 0.2))  # waits on: a random moment of ingest to kill it in
            p = rig.gateway.proc
            assert p is not None and p.poll() is None, "the gateway should be running"
            p.kill()  # SIGKILL: no clean-up at all
            p.wait()
            kills.append(stored(rig))
            rig.gateway.proc = None
            time.sleep(rng.uniform(0.05, 0.3))  # waits on: the gateway away a random while
            rig.gateway.start()

    rig.run(faults)
    rig.settle()
    out = rig.judge("gateway SIGKILL 10x")
    out.notes["rows_at_kills"] = kills
    assert len(kills) == 10
    assert_clean(out)


# 4 -----------------------------------------------------------------------------------------------
def test_power_cut_at_random_flash_writes(rig: Rig) -> None:
    # Cut points: cumulative flash program operations, at random gaps; about 20-80 programs apart
    # (a record append, a state save and a boot each take a handful).
    rng = random.Random(4)
    cuts, w = [], 0
    for _ in range(100):
        w += rng.randint(20, 80)
        cuts.append(w)
    n = rig.node("air-01", "quiet-street", board=AIR, until_s=6 * H, power_cuts=cuts)
    rig.run(timeout=1200)
    rig.settle()
    out = rig.judge("power cut at 100 flash writes")
    out.notes["power_cuts"] = n.power_cuts_done
    assert n.power_cuts_done == 100
    assert_clean(out)


# 5 -----------------------------------------------------------------------------------------------
def test_batches_delivered_twice(rig: Rig) -> None:
    rig.node("air-01", "quiet-street", board=AIR, until_s=2 * H)
    seen: set[bytes] = set()
    copies = [0]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-duplicator")

    def on_message(client, userdata, msg) -> None:
        if msg.payload not in seen:  # our own copy comes back too: copy only the first
            seen.add(msg.payload)
            client.publish(msg.topic, msg.payload, qos=1)
            copies[0] += 1

    subscribed = threading.Event()
    c.on_message = on_message
    c.on_connect = lambda client, *a: client.subscribe("meetkit/+/up", qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(rig.broker.host, rig.broker.port)
    c.loop_start()
    try:
        assert subscribed.wait(10), "the copier subscribed before the nodes start"
        rig.run()
        rig.settle()
        # the last copies may still be on their way: wait for them before the copier goes
        wait_for(lambda: rig.counter("duplicates") >= copies[0], 20, "the copies to be stored")
    finally:
        c.loop_stop()
        c.disconnect()
    out = rig.judge("batches delivered twice")
    out.notes["copies_sent"] = copies[0]
    out.notes["duplicates_seen"] = rig.counter("duplicates")
    assert copies[0] >= 10
    assert_clean(out)


# 6 -----------------------------------------------------------------------------------------------
def test_ntp_only_after_two_hours(rig: Rig) -> None:
    n = rig.node("air-01", scenario(ntp_unreachable=[(0, 2 * H)]), board=AIR, until_s=3 * H)
    rig.run()
    rig.settle()
    out = rig.judge("NTP after 2 h")
    assert_clean(out)
    led = read_ledger(n.console.read_text())
    early = [r for r in led.records.values() if r["ts"] is None]
    assert len(early) >= 110, "records before NTP carried uptime only"
    con = sqlite3.connect(rig.gateway.db)
    first = con.execute("SELECT min(ts) FROM records").fetchone()[0]
    assert first >= 1767225600, "nothing stamped 1970 or 2000"


# 7 -----------------------------------------------------------------------------------------------
def test_spool_full_drops_oldest_counts_and_reports(rig: Rig) -> None:
    # the smallest spool (32 KB) holds about 1,800 of this board's records (about 18 bytes each):
    # at an interval of 15 s, about 7.5 hours
    outage = (600, 600 + 9 * H)
    n = rig.node("air-01", scenario(wifi_down=[outage]), board=AIR, until_s=outage[1] + H,
                 interval_s=15, extra_config={"spool_kb": 32})
    rig.run()
    rig.settle()
    out = rig.judge("spool full")
    assert out.lost == 0 and out.duplicated == 0 and out.wrong_time == 0, out.problems
    led = read_ledger(n.console.read_text())
    dropped = led.dropped_keys()
    # The node counts what it dropped without an acknowledgement: a batch in flight when the link
    # went may have reached the gateway after all, so the count can exceed what is missing.
    logged = sum(c for c, *_ in led.dropped)
    assert 0 < out.dropped <= logged <= out.dropped + INFLIGHT_MAX_RECORDS
    first_kept_in_outage = min(k for k, r in led.records.items() if k not in dropped and r["up"] >= outage[0])
    assert max(dropped) < first_kept_in_outage, "the oldest went first"
    assert not out.problems, out.problems   # the node's reported count reached the gateway


# 8 -----------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "small-disk"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        log = d / "gateway" / "gateway.log"
        if log.exists():  # kept for reading after the test: the tmpfs goes
            shutil.copy(log, tmp_path / "gateway.log")
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_gateway_disk_full_then_space_returns(tmp_path: Path, small_disk: Path) -> None:
    rig = Rig(tmp_path / "rig", gateway_dir=small_disk / "gateway")
    try:
        rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
        rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
        filler = small_disk / "filler"
        full_at = []
        alarms: list[dict] = []
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-alarm-watcher")
        watcher.on_message = lambda c, u, msg: alarms.append(json.loads(msg.payload))
        watcher.on_connect = lambda c, *a: c.subscribe("meetkit/gateway/alarm", qos=1)
        watcher.connect(rig.broker.host, rig.broker.port)
        watcher.loop_start()

        def disk_full_alarm() -> bool:
            return any(a.get("alarm") == "disk_full" and a.get("active") for a in alarms)

        def faults() -> None:
            rig.wait_virtual("air-01", 1 * H)
            # fill the disk to the last byte; unbuffered, so that closing has nothing left to
            # flush (a buffered file raised ENOSPC again from close, now and then)
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            full_at.append(stored(rig))
            # SQLite goes on writing into the room its WAL file already has: the disk bites only
            # once the WAL must grow. Keep it full until the gateway says so, then an hour more.
            wait_for(lambda: disk_full_alarm() or not rig.running, 120, "the disk_full alarm")
            assert disk_full_alarm(), "the gateway raised no disk_full alarm on a full disk"
            rig.wait_virtual("air-01", rig.virtual_s("air-01") + 1 * H)
            full_at.append(stored(rig))
            filler.unlink()

        rig.run(faults)
        rig.settle()
        out = rig.judge("gateway disk full")
        out.notes["rows_while_full"] = full_at
        assert_clean(out)
        assert rig.counter("refused") > 0, "the disk was full while the nodes were sending"
        wait_for(lambda: alarms and not alarms[-1]["active"], 20, "the alarm to be cleared")
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        rig.close()


# 9 -----------------------------------------------------------------------------------------------
def test_gateway_database_corrupted_between_runs(rig: Rig) -> None:
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H)
    moved = []

    def faults() -> None:
        rig.wait_virtual("air-01", 1 * H)
        rig.gateway.stop()
        db = rig.gateway.db
        with open(db, "r+b") as f:   # a torn header and garbage over the first pages
            f.write(os.urandom(3 * 4096))
        for side in (Path(str(db) + "-wal"), Path(str(db) + "-shm")):
            side.unlink(missing_ok=True)
        rig.gateway.start()
        wait_for(lambda: any(".corrupt" in p.name for p in db.parent.iterdir()), 30, "the move aside")
        moved.extend(p.name for p in db.parent.iterdir() if ".corrupt" in p.name)

    rig.run(faults)
    rig.settle()
    out = rig.judge("gateway db corrupted")
    out.notes["moved_aside"] = moved
    assert moved, "the corrupt database was moved aside, not deleted"
    assert_clean(out)   # refilled from the nodes' spools
