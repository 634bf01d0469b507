"""Real services started on loopback ports of our own: Mosquitto, VictoriaMetrics and the gateway
process."""

from __future__ import annotations

import json
import os
import pwd
import re
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


def hold_port() -> socket.socket:
    """A loopback port kept bound (not listening) until the caller closes the socket, for a server
    whose port must be known long before it starts: while held, no other test worker's bind(0) and
    no outgoing connection gets it. Close it right before the server binds."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


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
                 mqtt_toml: str | None = None, extra_toml: str = "", store_toml: str = "",
                 http_port: int = 0) -> None:
        """`mqtt_toml`: the whole [mqtt] table instead of host and port (an account, say: the
        lines `meetkit broker init` prints); the client id is added to it. `extra_toml`: more
        tables at the end ([[forward]] targets, say). `store_toml`: more keys of [store] (bounds).
        `http_port`: the status page's port (0: a free one, read from the log by status_url())."""
        self.http_port = http_port
        self.workdir = Path(workdir)
        self.mqtt_toml = mqtt_toml
        self.extra_toml = extra_toml
        self.store_toml = store_toml
        self.db = self.workdir / "gateway.db"
        self.conf = self.workdir / "gateway.toml"
        self.log = self.workdir / "gateway.log"
        self.broker = (broker_host, broker_port)
        self.client_id = client_id
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        import sys

        if self.running:
            raise RuntimeError("the gateway is running already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        host, port = self.broker
        mqtt = self.mqtt_toml or f'[mqtt]\nhost = "{host}"\nport = {port}'
        self.conf.write_text(f'{mqtt}\nclient_id = "{self.client_id}"\n\n'
                             f'[store]\npath = "{self.db}"\n{self.store_toml}\n[log]\nlevel = "INFO"\n\n'
                             f'[http]\nhost = "127.0.0.1"\nport = {self.http_port}\n{self.extra_toml}')
        exe = Path(sys.executable).parent / "meetkit-gateway"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(exe) if exe.exists() else "meetkit-gateway", "run",
                                          "--config", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 15) -> "re.Match[str]":
        """The first match of the regular expression `pattern` in the gateway's log, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text())
            if m:
                return m
            if time.monotonic() > deadline or not self.running:
                raise RuntimeError(f"gateway log: no {pattern!r} within {timeout} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def status_url(self, timeout: float = 15) -> str:
        """Where the gateway's own status page and /metrics listen ([http] port = 0: a free port),
        from its log line `status page and /metrics on http://host:port`."""
        return self.wait_log(r"status page and /metrics on (http://\S+)", timeout)[1]

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


class FleetBroker:
    """A real Mosquitto running what `meetkit broker init` generates for `nodes` (accounts, the
    ACL, a loopback plaintext listener and a TLS listener with the lab CA), on free loopback
    ports. Only what a test must have of its own differs from the Pi: ports, persistence, log,
    no pid file, and the user that runs us (root would switch to `mosquitto`)."""

    def __init__(self, workdir: Path, nodes: list[str], prefix: str = "meetkit", ca_from: Path | None = None) -> None:
        """`ca_from`: another `meetkit broker init` folder whose lab CA this one takes (a region's
        gateways share one CA, docs/operator.md "A region of gateways")."""
        from meetkit_tools import broker

        self.workdir = Path(workdir)
        self.ca_from = ca_from
        self.out = self.workdir / "broker"
        self.host = "127.0.0.1"
        self.fleet = broker.Fleet(prefix=prefix, hostname="meetkit-gw", ips=[self.host], plain_port=free_port(),
                                  tls_port=free_port(), persistence_location=f"{self.workdir}/", pid_file=None,
                                  log_dest=f"file {self.workdir / 'mosquitto.log'}",
                                  user=pwd.getpwuid(os.geteuid()).pw_name)
        self.nodes = list(nodes)
        self.proc: subprocess.Popen | None = None

    @property
    def plain_port(self) -> int:
        return self.fleet.plain_port

    @property
    def tls_port(self) -> int:
        return self.fleet.tls_port

    def init(self) -> "FleetBroker":
        """`meetkit broker init` of the folder (again: keeps what is there, visitors included)."""
        from meetkit_tools import broker

        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.ca_from is not None and not (self.out / "ca").exists():
            shutil.copytree(Path(self.ca_from) / "ca", self.out / "ca")
        broker.init(self.out, self.fleet, self.nodes)
        return self

    def start(self) -> "FleetBroker":
        self.init()
        with (self.workdir / "mosquitto.out").open("ab") as log:
            self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(self.out / "mosquitto" / "mosquitto.conf")],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.host, self.plain_port, self.proc, "mosquitto")
        wait_listening(self.host, self.tls_port, self.proc, "mosquitto (TLS)")
        return self

    def password(self, node: str) -> str:
        return json.loads((self.out / "secrets.json").read_text())["nodes"][node]

    @property
    def ca_der(self) -> bytes:
        return (self.out / "ca" / "ca.der").read_bytes()

    def gateway_toml(self) -> str:
        """The [mqtt] lines `meetkit broker init` prints for the gateway."""
        from meetkit_tools import broker

        return broker.gateway_toml(self.out, self.fleet)

    def monitor_command(self, tls: bool = False) -> str:
        """The shell command `meetkit broker init` prints for the monitor account (the alarm and
        the nodes' statuses): over the loopback listener, or over TLS with the lab CA."""
        from meetkit_tools import broker

        return broker.monitor_command(self.out, self.fleet, tls_host=self.host if tls else None)

    def node_broker(self, node: str, password: str | None = None) -> dict:
        """config.json's broker section for `node` over TLS, with its generated password."""
        return {"host": self.host, "port": self.tls_port, "user": node,
                "password": self.password(node) if password is None else password, "tls": True}

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class SecureMosquitto(Mosquitto):
    """A real Mosquitto as a city's central broker would be: TLS only (a lab CA and a server
    certificate for `hostname` and 127.0.0.1, made with openssl by tools/broker.py), accounts from
    a password file hashed by mosquitto_passwd, and an ACL. `ca` is the CA certificate clients
    trust; `users` and `acl` may be changed before a `start()`."""

    def __init__(self, workdir: Path, users: dict[str, str], acl: str, hostname: str = "upstream-broker",
                 port: int | None = None, more_conf: str = "") -> None:
        super().__init__(workdir, port)
        self.more_conf = more_conf
        self.users = dict(users)
        self.acl = acl
        self.hostname = hostname
        self.tls = self.workdir / "tls"
        self.ca = self.tls / "ca" / "ca.crt"

    def start(self) -> "SecureMosquitto":
        from meetkit_tools import broker

        if not self.ca.exists():
            broker.make_ca(self.tls / "ca")
            broker.make_server_cert(self.tls / "ca", self.tls, broker.Fleet(hostname=self.hostname, ips=[self.host]))
        passwd, acl = self.workdir / f"passwd-{self.port}", self.workdir / f"acl-{self.port}"
        passwd.write_text("\n".join(broker.hash_passwords(self.users, self.workdir)) + "\n")
        acl.write_text(self.acl)
        # These follow the listener line of Mosquitto.start: they make that listener TLS only; the
        # later allow_anonymous overrides the earlier one.
        self.extra_conf = (f"cafile {self.ca}\ncertfile {self.tls / 'server.crt'}\nkeyfile {self.tls / 'server.key'}\n"
                           f"tls_version tlsv1.2\npassword_file {passwd}\nacl_file {acl}\nallow_anonymous false\n{self.more_conf}")
        super().start()
        return self
