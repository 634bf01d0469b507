"""`meetkit provision` refuses bad input before it touches the board: each with the message a
technician can act on and exit status 2 (nothing changed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meetkit_tools import appbuild, nodeconfig, selftest


def meetkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meetkit_tools.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL, timeout=60)


BASE = ["provision", "--board", "esp32-devkitc", "--node-id", "ams-001", "--wifi", "lab", "--broker", "10.0.0.2"]
PW = {"MEETKIT_WIFI_PASSWORD": "wifi-secret-123"}


@pytest.mark.parametrize("args, message", [
    (["--board", "esp32-nosuch"], "--board esp32-nosuch: unknown board (known: "),
    (["--node-id", "Lamp 12"], "--node-id 'Lamp 12': 1-32 of a-z, 0-9 and '-'"),
    (["--interval", "5"], "config.interval_s: 5 is not a whole number from 10 to 3600"),
    (["--set", "noise_offset_db=loud"], "config.noise_offset_db: 'loud' is not a number from -20 to 20"),
    (["--broker", "10.0.0.2:99999"], "config.broker.port: 99999 is not a whole number"),
    (["--set", "noise_ofset_db=-3"], "--set noise_ofset_db: not a config.json key provision leaves to --set"),
    (["--set", "node_id=other"], "--set node_id: not a config.json key"),
    (["--wifi-password-file", "/nonexistent/pw"], "/nonexistent/pw: cannot read it (No such file or directory)"),
    (["--board", "board.schema"], "--board board.schema: unknown board"),
    (["--fleet", "/tmp/meetkit-test-fleet.toml", "--lat", "95"], "the fleet register would refuse: "),
])
def test_bad_input_is_refused_before_the_board_is_touched(tmp_path: Path, args: list[str], message: str) -> None:
    # A port that does not exist: the input is checked first, so the message is the input's.
    res = meetkit(*BASE, "--port", str(tmp_path / "ttyUSB9"), *args, env=PW)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stdout
    assert "nothing was changed on the board" in res.stdout
    assert "wifi-secret-123" not in res.stdout + res.stderr


def test_missing_port_is_named(tmp_path: Path) -> None:
    res = meetkit(*BASE, "--port", str(tmp_path / "ttyUSB9"), env=PW)
    assert res.returncode == 2
    assert f"{tmp_path / 'ttyUSB9'}: no such port" in res.stdout and "meetkit ports" in res.stdout


def test_wifi_without_a_password_is_refused(tmp_path: Path) -> None:
    res = meetkit(*BASE, "--port", str(tmp_path / "ttyUSB9"), env={"MEETKIT_WIFI_PASSWORD": ""})
    assert res.returncode == 2
    assert "--wifi: no password given" in res.stdout


def test_secret_never_on_the_command_line() -> None:
    res = meetkit("provision", "--help")
    assert "--wifi-password " not in res.stdout and "--broker-password " not in res.stdout


def test_the_firmware_rules_check_the_config() -> None:
    cfg = nodeconfig.build("ams-001", 60, ("lab", "pw"), {"host": "10.0.0.2", "tls": True, "user": "ams-001"}, {})
    with pytest.raises(nodeconfig.ConfigError) as e:
        nodeconfig.check(cfg)
    assert e.value.problems == ["config.broker.password: missing, but broker.user is set; measuring without an uplink"]


def test_lists_of_networks_and_brokers_pass_the_firmware_rules_and_old_files_still_do() -> None:
    """config.json's wifi and broker: one object (every config.json so far) or a list of them (the
    gateway sets one remotely): the firmware's own rules, under CPython, take both and name a bad
    entry by its place."""
    nets = [{"ssid": "lab", "password": "pw"}, {"ssid": "lab-2", "password": "pw2"}]
    brokers = [{"host": "10.0.0.2"}, {"host": "10.0.0.3", "port": 1884}]
    nodeconfig.check(nodeconfig.build("ams-001", 60, ("lab", "pw"), {"host": "10.0.0.2"}, {}))
    nodeconfig.check(nodeconfig.build("ams-001", 60, nets, brokers, {"config_version": 4, "trial_s": 600}))
    with pytest.raises(nodeconfig.ConfigError) as e:
        nodeconfig.check(nodeconfig.build("ams-001", 60, nets + [{"password": "x"}], brokers + [{"host": ""}], {}))
    assert e.value.problems == ["config.wifi[2].ssid: missing; measuring without an uplink",
                                "config.broker[2].host: missing; measuring without an uplink"]
    with pytest.raises(nodeconfig.ConfigError) as e:
        nodeconfig.check({"node_id": "ams-001", "wifi": [], "broker": []})
    assert e.value.problems == [
        "config.wifi: not an object or a non-empty list of them; measuring without an uplink",
        "config.broker: not an object or a non-empty list of them; measuring without an uplink"]
    assert "trial_s" in nodeconfig.settable()


def test_app_is_built_for_the_boards_cpu(tmp_path: Path) -> None:
    target = appbuild.Target.from_sys_mpy(6 | 3 << 8 | 10 << 10)
    assert target == appbuild.Target(6, 3, "xtensawin")
    board = {"board": "esp32-devkitc"}
    man = appbuild.build(tmp_path / "app", target, board, {"node_id": "a"}, {"fw": "x"}, ca_der=b"\x30\x82")
    files = man["files"]
    assert "lib/soundlevel.mpy" in files and "lib/node.mpy" in files and "main.py" in files
    assert not [f for f in files if f.startswith("lib/") and f.endswith(".py")]
    assert "ca.der" in files and "app.json" not in files
    assert (tmp_path / "app" / "config.json").stat().st_mode & 0o077 == 0   # it holds the passwords
    # The .mpy header names the architecture: byte 2's upper bits (MicroPython's mpy format).
    head = (tmp_path / "app" / "lib" / "soundlevel.mpy").read_bytes()[:4]
    assert head[0] == ord("M") and head[1] == 6 and head[2] >> 2 == 10
    for f, digest in files.items():
        assert appbuild.sha256(tmp_path / "app" / f) == digest


def test_an_old_micropython_is_refused_with_what_to_do() -> None:
    with pytest.raises(appbuild.BuildError, match="flash a current MicroPython"):
        appbuild.check_target(appbuild.Target(6, 1, "xtensawin"))
    with pytest.raises(appbuild.BuildError, match="--source"):
        appbuild.check_target(appbuild.Target(6, 3, None))


def test_checklist_reads_the_console() -> None:
    c = selftest.Checklist(selftest.expected_items({"climate": {}, "mic": {}}))
    assert c.items == ["board", "config", "climate", "mic", "network", "broker", "clock", "gateway"]
    for line in ["       0 I check: board: pass: esp32-devkitc (Espressif ESP32-DevKitC)",
                 "       3 E check: network: fail: wifi lab: wrong password",
                 "       0 I record 0: {}",
                 "      40 I check: network: pass: wifi lab 10.0.0.5 -60 dBm"]:
        c.feed(line)
    assert c.results["network"].ok and c.results["board"].ok and not c.passed
    text = c.render(12)
    assert "[FAIL] climate sensor answers" in text and "no result in 12 s" in text
    assert "check the BME280's wiring" in text
