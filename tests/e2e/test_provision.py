"""The technician's flow, for real: `meetkit provision` (real mpremote underneath) puts meetkit on
a simulated board on a pty that runs the unmodified firmware, makes the node's broker account in
the `meetkit broker init` folder, and reads the node's self-test; the node's batches are then in
the gateway's database. Bad input leaves the board as it was."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import serial

from meetkit_tools.services import FleetBroker, GatewayProcess
from meetkit_tools.sim.board import SimBoard

WIFI = ("lamppost-lan", "wifi-Secret-4711")
MPREMOTE = str(Path(sys.executable).parent / "mpremote")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("provision")
    broker = FleetBroker(work, []).start()
    gw = GatewayProcess(work / "gw", broker.host, broker.plain_port, mqtt_toml=broker.gateway_toml()).start()
    url = gw.status_url()
    yield {"work": work, "broker": broker, "gw": gw, "url": url}
    gw.stop()
    broker.stop()


def provision(site: dict, port: str, *args: str, node: str = "lamp-012", wifi_password: str = WIFI[1],
              timeout: float = 120) -> subprocess.CompletedProcess:
    b: FleetBroker = site["broker"]
    cmd = [sys.executable, "-m", "meetkit_tools.cli", "provision", "--port", port, "--node-id", node,
           "--fleet", str(site["work"] / "fleet.toml"), "--gateway", site["url"], "--interval", "10",
           "--timeout", "60", *args]
    env = dict(os.environ, MEETKIT_WIFI_PASSWORD=wifi_password)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def full(site: dict) -> list[str]:
    b: FleetBroker = site["broker"]
    return ["--board", "esp32-devkitc", "--wifi", WIFI[0], "--broker", f"127.0.0.1:{b.tls_port}",
            "--broker-dir", str(b.out), "--broker-reload", f"kill -HUP {b.proc.pid}"]


def records(site: dict, node: str) -> list[tuple[int, int]]:
    with sqlite3.connect(site["gw"].db) as db:
        return db.execute("SELECT boot, seq FROM records WHERE node = ? ORDER BY boot, seq", (node,)).fetchall()


def flash_ls(port: str, path: str = "") -> str:
    res = subprocess.run([MPREMOTE, "connect", port, "fs", "ls", ":" + path], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def flash_cat(port: str, path: str) -> str:
    res = subprocess.run([MPREMOTE, "connect", port, "fs", "cat", ":" + path], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def test_a_fresh_board_is_provisioned_and_delivers(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", speed=10, wifi=WIFI) as board:
        res = provision(site, board.port, *full(site), "--name", "Dam, lamp post 12", "--lat", "52.3731",
                        "--lon", "4.8922", "--height", "3.5", "--serial", "pm=PMS5003-2211-0042")
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        for item in ("board file usable", "climate sensor answers", "PM sensor sends data", "microphone hears",
                     "network connected", "broker accepts the node", "clock set (NTP)",
                     "gateway stored the first batch"):
            assert f"[PASS] {item}" in out
        assert "result: PASS" in out and "new record(s) of lamp-012 stored" in out
        secrets = json.loads((site["broker"].out / "secrets.json").read_text())
        assert WIFI[1] not in out and secrets["nodes"]["lamp-012"] not in out   # secrets never shown
        # The gateway has the node's records, which it acknowledged only once committed.
        assert records(site, "lamp-012")
        # The register has the node, as the gateway reads it.
        reg = tomllib.loads((site["work"] / "fleet.toml").read_text())["nodes"]["lamp-012"]
        assert reg["board"] == "esp32-devkitc" and reg["lat"] == 52.3731 and reg["serials"]["pm"] == "PMS5003-2211-0042"
        assert reg["chip"] and reg["fw"]
        # On the flash: the compiled app (no stale sources), its manifest, no staging left.
        lib = flash_ls(board.port, "lib")
        assert "node.mpy" in lib and "node.py" not in lib
        root = flash_ls(board.port)
        assert "app.json" in root and "new/" not in root and "config.json" in root and "ca.der" in root
        # The node key (what authenticates the gateway's configuration and releases to this node) is the
        # broker folder's, on the flash as hex, and never shown.
        keys = json.loads((site["broker"].out / "node-keys.json").read_text())["nodes"]
        assert len(bytes.fromhex(keys["lamp-012"])) == 32
        assert flash_cat(board.port, "node.key") == keys["lamp-012"]
        assert keys["lamp-012"] not in out and "node key    from" in out

        # Provisioned again (a firmware update): Wi-Fi and broker are kept from the board, the
        # account is not made again, the spool and boot counter stay.
        before = records(site, "lamp-012")
        # The microphone was calibrated meanwhile: the register's offset goes into the node's config.
        from meetkit_tools import fleetfile
        fleetfile.upsert(site["work"] / "fleet.toml", "lamp-012", {"noise_offset_db": -1.3})
        res = provision(site, board.port, "--board", "esp32-devkitc")
        out = res.stdout + res.stderr
        assert res.returncode == 0, out
        assert "calibration noise_offset_db -1.3 dB from the fleet register" in out
        cfg = subprocess.run([MPREMOTE, "connect", board.port, "fs", "cat", "config.json"], capture_output=True,
                             text=True, timeout=30).stdout
        assert json.loads(cfg)["noise_offset_db"] == -1.3
        assert json.loads(cfg)["interval_s"] == 10   # kept from the board: not given this time
        assert "wifi        kept from the board: lamppost-lan" in out
        assert "broker      kept from the board: 127.0.0.1" in out
        assert "node key    the board's node.key is kept" in out
        assert flash_cat(board.port, "node.key") == keys["lamp-012"]
        assert "installed   meetkit" in out and "as node lamp-012" in out
        after = records(site, "lamp-012")
        assert max(b for b, _ in after) > max(b for b, _ in before)   # a new boot, counted on


def test_wrong_wifi_password_fails_the_network_check(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", speed=10, wifi=WIFI) as board:
        res = provision(site, board.port, *full(site), node="lamp-013", wifi_password="not-the-password")
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "[FAIL] network connected" in out and "the access point refused the password" in out
        assert "check the Wi-Fi name and password" in out
        assert "[FAIL] broker accepts the node          not tried: no network" in out
        assert "[PASS] microphone hears" in out   # it measures, and keeps what it measures
        assert "not-the-password" not in out
        assert "app.json" in flash_ls(board.port)   # provisioned: a fixed config is all it needs


def test_a_board_file_for_another_chip_is_refused(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", wifi=WIFI) as board:
        res = provision(site, board.port, *full(site)[2:], "--board", "esp32-s3-devkitc-1", node="lamp-014")
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert "--board esp32-s3-devkitc-1 is for an ESP32S3, but the board is an ESP32" in out
        assert "nothing was changed on the board" in out
        assert flash_ls(board.port).strip() == "ls :"   # still empty


def test_a_full_flash_leaves_the_board_as_it_was(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", flash_kb=128, wifi=WIFI) as board:
        keep = tmp_path / "notes.txt"
        keep.write_text("mounted 2026-11-20\n")
        subprocess.run([MPREMOTE, "connect", board.port, "fs", "cp", str(keep), ":notes.txt"], check=True,
                       capture_output=True, timeout=30)
        res = provision(site, board.port, *full(site), node="lamp-015")
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert "the flash is full" in out and "the old app is in place" in out
        assert [ln.split()[-1] for ln in flash_ls(board.port).splitlines()[1:]] == ["notes.txt"]


def test_a_busy_port_is_named(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", wifi=WIFI) as board:
        # A terminal left open on the port (screen and minicom take no lock), and one that locks it.
        with open(board.port, "rb") as tty:
            screen = subprocess.Popen(["sleep", "60"], stdin=tty)
        try:
            res = provision(site, board.port, *full(site), node="lamp-016")
        finally:
            screen.kill()
            screen.wait()
        assert res.returncode == 2
        assert f"{board.port} is busy: another program has it open (pid {screen.pid}: sleep 60)" in res.stdout
        holder = serial.Serial(board.port, 115200, exclusive=True)
        try:
            res = provision(site, board.port, *full(site), node="lamp-016")
        finally:
            holder.close()
        assert res.returncode == 2 and f"{board.port} is busy: another program has it open" in res.stdout


def test_a_board_that_does_not_answer(site: dict) -> None:
    master, slave = os.openpty()   # a port with nothing behind it: a charge-only cable, say
    port = os.ttyname(slave)
    os.close(slave)   # we do not hold it: a holder would make it "busy"
    try:
        res = provision(site, port, *full(site), node="lamp-017")
    finally:
        os.close(master)
    assert res.returncode == 2
    assert "does not answer" in res.stdout and "nothing was changed" in res.stdout


def test_a_blank_board_is_flashed_then_provisioned(site: dict, tmp_path: Path) -> None:
    from meetkit_tools.sim.mpimage import micropython_firmware

    firmware = tmp_path / "ESP32_GENERIC-v1.29.0.bin"
    firmware.write_bytes(micropython_firmware("esp32", "v1.29.0"))
    with SimBoard(tmp_path / "board", speed=10, wifi=WIFI, blank=True) as board:
        res = provision(site, board.port, *full(site), node="lamp-018")
        assert res.returncode == 2, res.stdout
        assert "no MicroPython on the board" in res.stdout and "meetkit flash-micropython" in res.stdout
        flash = subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "flash-micropython", "--port", board.port,
                                "--firmware", str(firmware), "--board", "esp32-devkitc", "--no-reset"],
                               capture_output=True, text=True, timeout=120)
        assert flash.returncode == 0, flash.stdout + flash.stderr
        deadline = time.monotonic() + 30   # the board boots MicroPython once the flasher lets go
        while "flashed; the board boots it" not in board.console_text() and time.monotonic() < deadline:
            time.sleep(0.1)  # waits on: the condition polled above
        res = provision(site, board.port, *full(site), node="lamp-018")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "result: PASS" in res.stdout


CONSISTENT = r"""
import os, json, hashlib
def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        h.update(f.read())
    return h.digest().hex()
m = json.load(open('app.json'))
bad = [f for f, d in m['files'].items() if sha(f) != d]
try:
    os.stat('new')
    staged = True
except OSError:
    staged = False
print(json.dumps({'built': m['built'], 'bad': bad, 'staged': staged}))
"""


def test_an_interrupted_provisioning_leaves_one_whole_app(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", speed=10, wifi=WIFI) as board:
        assert provision(site, board.port, *full(site), node="lamp-019").returncode == 0
        # Again, killed the moment it starts copying (the laptop's lid closed, the cable pulled).
        cmd = [sys.executable, "-m", "meetkit_tools.cli", "provision", "--port", board.port, "--node-id", "lamp-019",
               "--board", "esp32-devkitc", "--source"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert p.stdout
        for line in p.stdout:
            if line.startswith("  flash "):
                time.sleep(0.3)   # waits on: a moment into the copy of the sources (about 1.5 s here)
                p.kill()
                break
        p.wait(10)
        left = subprocess.run([MPREMOTE, "connect", board.port, "resume", "fs", "ls", ":new/lib"], capture_output=True,
                              text=True, timeout=30)
        print("left by the killed provisioning:", left.stdout.count(".py"), "files in new/lib")
        # The board is reset (EN, or the watchdog): it runs one whole app, the old or the new.
        mark = len(board.console_text())
        subprocess.run([MPREMOTE, "connect", board.port, "reset"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while "check: board: pass" not in board.console_text()[mark:] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "check: board: pass" in board.console_text()[mark:]
        res = subprocess.run([MPREMOTE, "connect", board.port, "exec", CONSISTENT], capture_output=True, text=True,
                             timeout=30)
        state = json.loads(res.stdout.strip().splitlines()[-1])
        assert state["bad"] == [] and state["staged"] is False, state


@pytest.mark.parametrize("board_name, node, wifi, interval", [("esp32-s3-devkitc-1", "lamp-020", True, "300"),
                                                              ("olimex-esp32-poe", "lamp-021", False, "10")])
def test_the_other_boards(site: dict, tmp_path: Path, board_name: str, node: str, wifi: bool, interval: str) -> None:
    """The ESP32-S3 (its own chip, RGB LED), with a first batch that comes long after every other
    check (a 5-minute interval: 30 s here), and the Ethernet board (no Wi-Fi to give)."""
    b: FleetBroker = site["broker"]
    args = ["--board", board_name, "--broker", f"127.0.0.1:{b.tls_port}", "--broker-dir", str(b.out),
            "--broker-reload", f"kill -HUP {b.proc.pid}", "--interval", interval] + (["--wifi", WIFI[0]] if wifi else [])
    with SimBoard(tmp_path / "board", board=board_name, speed=10, wifi=WIFI) as board:
        res = provision(site, board.port, *args, node=node)
        assert res.returncode == 0, res.stdout + res.stderr
        assert ("ethernet " if not wifi else f"wifi {WIFI[0]}") in res.stdout
        assert ("ESP32S3" if wifi else "with ESP32,") in res.stdout.splitlines()[1]


def test_a_board_moves_to_another_node_only_when_asked(site: dict, tmp_path: Path) -> None:
    with SimBoard(tmp_path / "board", speed=10, wifi=WIFI) as board:
        assert provision(site, board.port, *full(site), node="lamp-022").returncode == 0
        res = provision(site, board.port, *full(site), node="lamp-023")
        assert res.returncode == 2, res.stdout
        assert "this board is node lamp-022, with its spool (sp/) of records not yet delivered" in res.stdout
        assert "--reassign" in res.stdout and "nothing was changed on the board" in res.stdout
        res = provision(site, board.port, *full(site), "--reassign", node="lamp-023")
        assert res.returncode == 0, res.stdout
        assert "the spool of lamp-022 deleted: the board is lamp-023 from now on" in res.stdout
        assert records(site, "lamp-023")
