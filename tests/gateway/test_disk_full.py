"""A REAL full disk (a small tmpfs under the database): the gateway refuses new data without
acknowledging it to the nodes, keeps the broker flowing, damages nothing it has, raises an alarm,
and takes data again as soon as there is space, without a restart."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway import config as configuration

from .conftest import Listener, Running, batch, cli, wait_for, write_config

UP, ACK, ALARM = "meetkit/ams-001/up", "meetkit/ams-001/ack", "meetkit/gateway/alarm"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs (room for the WAL to grow to its checkpoint size, 1000 pages, once the test
    frees the disk again), mounted for the test and unmounted after (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)])


def fill(folder: Path) -> Path:
    """Write a file until the file system says there is no space left."""
    path = folder / "filler"
    with path.open("wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    return path


def seqs_of(acks: Listener) -> set[int]:
    return {s for a in acks.on(ACK) for lo, hi in a["seq"] for s in range(lo, hi + 1)}


def settled(g: Running, n: int) -> bool:
    w = g.gateway.writer
    return w.received >= n and w.committed + w.refused == w.received


def stored_seqs(db: Path) -> set[int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {s for (s,) in con.execute("SELECT seq FROM records")}
    finally:
        con.close()


def test_a_full_disk_refuses_new_data_without_damage_then_space_returns(tmp_path, broker, node, acks, small_disk):
    db = small_disk / "gateway.db"
    config = write_config(tmp_path, broker.port, store=db)
    alarms = Listener(broker.host, broker.port, ALARM)
    g = Running(configuration.load(config)).wait_subscribed()
    sent = 0

    def send(k: int) -> None:  # batch k holds seqs 5k .. 5k+4
        nonlocal sent
        node.publish(UP, batch(seqs=range(5 * k, 5 * k + 5)))
        sent += 1
        wait_for(lambda: settled(g, sent), what=f"message {sent} committed or refused")

    try:
        for k in range(20):
            send(k)
        wait_for(lambda: seqs_of(acks) == set(range(100)), what="the first 100 acks")
        assert g.gateway.writer.refused == 0

        filler = fill(small_disk)
        k = 20
        while g.gateway.writer.refused == 0:  # the WAL may have a little room left: use it up
            assert k < 500, "the gateway never noticed that the disk is full"
            send(k)
            k += 1
        first_refused = k - 1
        # While the disk stays full every batch is refused, and more than the broker keeps in
        # flight (20) arrive: the gateway acknowledges them to the broker, which keeps sending.
        for k in range(first_refused + 1, first_refused + 41):
            send(k)
        refused_batches = range(first_refused, first_refused + 41)
        assert g.gateway.writer.refused == 41
        refused_seqs = {s for b in refused_batches for s in range(5 * b, 5 * b + 5)}

        (alarm,) = alarms.wait(ALARM, 1)
        assert (alarm["alarm"], alarm["active"]) == ("disk_full", True)
        assert "database or disk is full" in alarm["reason"]
        # nothing committed before is damaged, nothing refused got in
        wait_for(lambda: seqs_of(acks) == set(range(5 * first_refused)), what="acks up to the first refusal")
        assert stored_seqs(db) == set(range(5 * first_refused))
        assert not seqs_of(acks) & refused_seqs, "a refused record was acknowledged to the node"

        filler.unlink()  # space is back
        k = first_refused + 41
        send(k)  # a live batch
        for b in refused_batches:  # the node sends again what it was not acknowledged
            send(b)
        everything = set(range(5 * (k + 1)))
        wait_for(lambda: seqs_of(acks) == everything, what="acks for everything")
        assert stored_seqs(db) == everything
        assert g.gateway.writer.refused == 41  # no restart was needed

        over = alarms.wait(ALARM, 2)[1]
        assert (over["alarm"], over["active"]) == ("disk_full", False)
        assert "41 messages were refused" in over["reason"]
        with g.store() as s:
            assert s.counters()["refused"] == 41
            assert s.counters()["alarm.disk_full"] == 1
            assert [(a.code, a.active) for a in s.alarms()] == [("disk_full", True), ("disk_full", False)]
            assert s.counts().duplicates == 0
    finally:
        g.stop()
        alarms.close()

    out = cli("check", "--config", str(config)).stdout
    assert "41 messages refused" in out
    assert "  ALARM       " in out and "  alarm over  " in out
