"""Starting `meetkit-gateway` as an operator does: the status page's port taken is a start-up error
(a clear message, exit 1, nothing left running without its page and /healthz), `check` finds it
first, and `--config` defaults to /etc/meetkit/gateway.toml, where install puts it."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.conftest import Broker, free_port

from .conftest import CLI, cli, wait_for
from .test_process import Process


def config_with_port(tmp_path: Path, broker: Broker, http_port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n[store]\npath = "gateway.db"\n'
                    f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n')
    return path


def test_a_port_taken_by_another_program_stops_run_and_check_says_so(tmp_path: Path, broker: Broker) -> None:
    other = socket.create_server(("127.0.0.1", 0))   # another program on the port
    port = other.getsockname()[1]
    try:
        config = config_with_port(tmp_path, broker, port)
        said = (f"cannot listen on 127.0.0.1:{port} for the status page, /healthz and /metrics: Address already in "
                "use; another program listens there")
        r = cli("check", "--config", str(config))
        assert r.returncode == 1 and said in r.stderr and "OK" not in r.stdout, (r.stdout, r.stderr)
        # the broker is up: before, the gateway ran on without its page; now it does not start
        r = subprocess.run([CLI, "run", "--config", str(config)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"ERROR meetkit_gateway: cannot start: {said}" in r.stdout, r.stdout
        assert "connected to" not in r.stdout   # nothing was started: not even the broker's connection
    finally:
        other.close()
    # the port free again: check is content, and run serves its page there
    assert cli("check", "--config", str(config)).returncode == 0


def test_check_beside_the_running_gateway_names_it_and_a_second_run_is_refused(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    config = config_with_port(tmp_path, broker, port)
    gw = Process(config)
    try:
        gw.wait_log(f"status page and /metrics on http://127.0.0.1:{port}")
        r = cli("check", "--config", str(config))
        assert r.returncode == 0, r.stderr
        assert "in use by a running meetkit gateway (database " in r.stdout, r.stdout
        second = tmp_path / "second"
        second.mkdir()
        r = subprocess.run([CLI, "run", "--config", str(config_with_port(second, broker, port))], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1 and "a gateway already running?" in r.stdout, r.stdout
        assert gw.proc.poll() is None   # the first one runs on, its page served
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as page:
            assert json.loads(page.read())["status"] == "ok"
    finally:
        assert gw.stop() == 0


def test_config_defaults_to_etc_meetkit_gateway_toml() -> None:
    default = Path("/etc/meetkit/gateway.toml")
    for args in (["check"], ["nodes"], ["export"], ["fleet", "status"], ["release", "list"]):
        r = cli(*args)
        assert str(default) in r.stdout + r.stderr, (args, r.stdout, r.stderr)
        if not default.exists():   # a development machine: the clear error, and how to go on
            assert r.returncode == 1
            assert r.stderr.splitlines()[:2] == [f"{default}: 1 error", "  cannot read the file: No such file or directory"]
            assert "--config PATH" in r.stderr
    assert "(default /etc/meetkit/gateway.toml, where install puts it)" in " ".join(cli("run", "--help").stdout.split())


def test_a_reload_onto_a_taken_port_goes_on_with_the_old_configuration(tmp_path: Path, broker: Broker) -> None:
    import signal

    port = free_port()
    config = config_with_port(tmp_path, broker, port)
    gw = Process(config)
    other = socket.create_server(("127.0.0.1", 0))
    try:
        gw.wait_log(f"status page and /metrics on http://127.0.0.1:{port}")
        taken = other.getsockname()[1]
        config_with_port(tmp_path, broker, taken)   # the operator edits [http] port to a taken one
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_log(f"SIGHUP: cannot listen on 127.0.0.1:{taken} for the status page")
        gw.wait_log("going on with the old configuration")
        # the old port is served again, by a gateway that runs on
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as page:
                    return json.loads(page.read())["status"] == "ok"
            except OSError:
                return False

        wait_for(healthy, 30, "/healthz on the old port")
        assert gw.proc.poll() is None
    finally:
        other.close()
        assert gw.stop() == 0
