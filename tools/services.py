"""Real services started on loopback ports of our own: Mosquitto and the gateway process."""

from __future__ import annotations

import shutil
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
    """A real Mosquitto on 127.0.0.1:<port> with its own config and log in `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.workdir = Path(workdir)
        self.conf = self.workdir / f"mosquitto-{self.port}.conf"
        self.log = self.workdir / f"mosquitto-{self.port}.log"
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Mosquitto":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest stdout\n{self.extra_conf}"
        )
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([mosquitto_bin(), "-c", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.host, self.port, self.proc, "mosquitto")
        return self

    def stop(self) -> None:
        stop_process(self.proc)
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
