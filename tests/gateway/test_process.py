"""The real `meetkit-gateway run` process: SIGTERM/SIGINT while messages flow, broker restarts."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import Broker, free_port

from .conftest import CLI, Publisher, batch, wait_for, write_config


class Process:
    """`meetkit-gateway run` with its stdout collected line by line."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [CLI, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_log(self, text: str, timeout: float = 15) -> None:
        wait_for(lambda: any(text in line for line in self.lines), timeout, f"{text!r} in the gateway's log")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


def count(db: Path, sql: str) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_while_messages_flow_keeps_everything_received(tmp_path, sig):
    # The broker logs each PUBACK the gateway sends: the gateway's own word that it received a message.
    broker = Broker(tmp_path, extra_conf="log_type all\n").start()
    gw = None
    stop_publishing = threading.Event()
    published = 0
    try:
        config = write_config(tmp_path, broker.port)
        db = tmp_path / "gateway.db"
        gw = Process(config)
        gw.wait_log("subscribed to meetkit/+/up")

        node = Publisher(broker.host, broker.port)

        def publish() -> None:
            nonlocal published
            seq = 0
            while not stop_publishing.is_set():
                node.publish("meetkit/ams-001/up", batch(seqs=[seq]), qos=1)
                seq += 1
                published = seq

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_for(lambda: db.exists() and count(db, "SELECT count(*) FROM records") >= 200, 30, "200 records")
        rc = gw.stop(sig)
        stop_publishing.set()
        publisher.join(10)
        node.close()
    finally:
        stop_publishing.set()
        if gw is not None and gw.proc.poll() is None:
            gw.proc.kill()
        broker.stop()

    assert rc == 0, gw.log
    assert f"{signal.Signals(sig).name} received" in gw.log
    stored = count(db, "SELECT count(*) FROM records")
    acked = len(re.findall(r"Received PUBACK from meetkit-gateway ", broker.log.read_text()))
    assert published > stored, "the gateway was stopped after the flow ended, not during it"
    said = "\n".join(line for line in gw.log.splitlines() if re.search(r"WARNING|ERROR|broker|stopp", line))
    assert stored == acked, f"the gateway acknowledged {acked} messages but stored {stored}; its log:\n{said}"
    # the broker delivers in order: what was stored is the first `stored` records, without gaps
    assert count(db, "SELECT max(seq) + 1 FROM records") == stored
    assert count(db, "SELECT count(*) FROM dead_letters") == 0
    assert f"stopped: {stored} messages received, {stored} committed, 0 refused; {stored} acknowledged to the broker, " \
           "0 stale" in gw.log


def test_the_gateway_reconnects_when_the_broker_comes_back(tmp_path):
    port = free_port()
    config = write_config(tmp_path, port)
    db = tmp_path / "gateway.db"
    gw = Process(config)  # the broker is not there yet
    broker = None
    try:
        gw.wait_log("connecting to mqtt://127.0.0.1:")
        broker = Broker(tmp_path, port=port).start()
        gw.wait_log("subscribed to meetkit/+/up")
        node = Publisher(broker.host, port)
        node.publish("meetkit/ams-001/up", batch(seqs=[0]))
        node.close()
        wait_for(lambda: db.exists() and count(db, "SELECT count(*) FROM records") == 1, 10, "record 0")

        broker.stop()
        gw.wait_log("lost the broker")
        broker = Broker(tmp_path, port=port).start()
        wait_for(lambda: sum("subscribed to" in line for line in gw.lines) == 2, 40, "a second subscription")
        node = Publisher(broker.host, port)
        node.publish("meetkit/ams-001/up", batch(seqs=[1]))
        node.close()
        wait_for(lambda: count(db, "SELECT count(*) FROM records") == 2, 10, "record 1")
        assert gw.stop() == 0, gw.log
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
        if broker is not None:
            broker.stop()
