"""Real services started on loopback ports of our own: Mosquitto, VictoriaMetrics and the gateway
process."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_bin() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed: run `make setup` (it installs it with apt)")


def wait_listening(host: str, port: int, proc: subprocess.Popen, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with code {proc.returncode}")
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {host}:{port}")


class Mosquitto:
    """A real Mosquitto on 127.0.0.1:<port> with its own config, log and persistence file in
    `workdir`. Persistent sessions, their queued QoS 1 messages and retained messages survive
    `stop()` and `start()` again (also a new `Mosquitto` on the same workdir and port), as on the
    gateway's Raspberry Pi (docs/operator.md)."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "",
                 max_queued_messages: int = 100_000) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = Path(workdir)
        self.conf = self.workdir / f"mosquitto-{self.port}.conf"
        self.log = self.workdir / f"mosquitto-{self.port}.log"
        self.db = self.workdir / f"mosquitto-{self.port}.db"  # the persistence file
        self.extra_conf = extra_conf
        self.max_queued_messages = max_queued_messages
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"mosquitto on port {self.port} is running already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Run as root, mosquitto switches to the user `mosquitto`, which may not write to the
        # workdir: it stays the user that runs us instead (no effect when that is not root).
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {user}\n"
            f"persistence true\npersistence_location {self.workdir}\npersistence_file {self.db.name}\n"
            f"autosave_interval 1\nmax_queued_messages {self.max_queued_messages}\n"
            f"log_dest file {self.log}\n{self.extra_conf}"  # a log file is flushed line by line, stdout is not
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.host, self.port, self.proc, "mosquitto")
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file and exits."""
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what was saved last (at most `autosave_interval` ago) is what comes back."""
        kill_process(self.proc)
        self.proc = None


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL)
    proc.wait()


class GatewayProcess:
    """`meetkit-gateway run` as its own process, with a config written into `workdir`. It can be
    stopped (SIGTERM) or killed (SIGKILL) and started again: the same client id resumes the
    broker's persistent session, and the same database is used."""

    def __init__(self, workdir: Path, broker_host: str, broker_port: int, client_id: str = "meetkit-gateway",
                 extra_toml: str = "") -> None:
        """`extra_toml`: more tables at the end of its gateway.toml ([[forward]] targets, say)."""
        self.workdir = Path(workdir)
        self.db = self.workdir / "gateway.db"
        self.conf = self.workdir / "gateway.toml"
        self.log = self.workdir / "gateway.log"
        self.broker = (broker_host, broker_port)
        self.client_id = client_id
        self.extra_toml = extra_toml
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        import sys

        if self.running:
            raise RuntimeError("the gateway is running already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        host, port = self.broker
        self.conf.write_text(f'[mqtt]\nhost = "{host}"\nport = {port}\nclient_id = "{self.client_id}"\n\n'
                             f'[store]\npath = "{self.db}"\n\n[log]\nlevel = "INFO"\n\n'
                             f'[http]\nhost = "127.0.0.1"\nport = 0\n{self.extra_toml}')
        exe = Path(sys.executable).parent / "meetkit-gateway"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(exe) if exe.exists() else "meetkit-gateway", "run",
                                          "--config", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        stop_process(self.proc)
        return None if self.proc is None else self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would: no clean shutdown at all."""
        kill_process(self.proc)


def victoria_metrics_bin() -> str:
    for cand in (shutil.which("victoria-metrics"), "/usr/bin/victoria-metrics"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("victoria-metrics is not installed: run `make setup` (apt package victoria-metrics)")


class VictoriaMetrics:
    """A real VictoriaMetrics (Debian's `victoria-metrics`) on 127.0.0.1:<port>, storage in
    `workdir`: the InfluxDB-compatible upstream of the forwarding tests. One sample per series and
    timestamp (`-dedup.minScrapeInterval=1ms`), as InfluxDB keeps one point: a replay overwrites."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = Path(workdir)
        self.data = self.workdir / f"vm-{self.port}"
        self.log = self.workdir / f"vm-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "VictoriaMetrics":
        self.data.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [victoria_metrics_bin(), f"-storageDataPath={self.data}", f"-httpListenAddr={self.host}:{self.port}",
                 "-retentionPeriod=100y", "-dedup.minScrapeInterval=1ms", "-search.disableCache",
                 "-loggerLevel=WARN"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.host, self.port, self.proc, "victoria-metrics")
        return self

    def export(self, match: str = '{__name__=~".+"}') -> list[dict]:
        """Every sample stored for `match` (flushed first), one dict per series:
        {"metric": {...labels}, "values": [...], "timestamps": [ms...]}."""
        import json
        import urllib.parse
        import urllib.request

        urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10).read()
        q = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{q}", timeout=10) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
