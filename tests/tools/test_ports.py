"""`meetkit ports`: which serial ports may be ESP32 boards. The classification runs over pyserial's
own ListPortInfo objects, filled in the order list_ports_linux's SysFS fills them from
/sys/class/tty (a laptop's ports cannot be plugged in here); the CLI test runs `meetkit ports` for
real, with a simulated board's registry entry for a live process (this test's pty) and a stale one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from serial.tools.list_ports_common import ListPortInfo

from meetkit_tools import ports
from meetkit_tools.paths import BOARDS


def usb_port(device: str, vid: int, pid: int, serial: str | None, manufacturer: str, product: str,
             interface: str | None = None, location: str = "1-1.2:1.0") -> ListPortInfo:
    """A port as list_ports_linux.SysFS describes a USB serial device."""
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial
    info.location, info.manufacturer, info.product, info.interface = location, manufacturer, product, interface
    info.apply_usb_info()
    return info


def builtin_port(device: str) -> ListPortInfo:
    """A motherboard's UART (subsystem pnp/serial-base): no USB ids."""
    info = ListPortInfo(device, skip_link_detection=True)
    info.description = info.name
    return info


def boards_dir(tmp_path: Path) -> Path:
    d = tmp_path / "boards"
    d.mkdir()
    for name, mcu, usb in [("esp32-devkitc", "esp32", ["10c4:ea60", "1a86:55d4"]),
                           ("olimex-esp32-poe", "esp32", ["1a86:7523"]),
                           ("esp32-s3-devkitc-1", "esp32s3", ["303a:1001", "10c4:ea60"]),
                           ("esp32-devkitc-air", "esp32", None)]:
        spec = {"board": name, "mcu": mcu}
        if usb:
            spec["usb"] = usb
        (d / f"{name}.json").write_text(json.dumps(spec))
    (d / "board.schema.json").write_text("{}")
    return d


LAPTOP = [
    usb_port("/dev/ttyUSB0", 0x10C4, 0xEA60, "0001", "Silicon Labs", "CP2102N USB to UART Bridge Controller"),
    usb_port("/dev/ttyUSB1", 0x1A86, 0x7523, None, "QinHeng Electronics", "USB Serial", location="1-3"),
    usb_port("/dev/ttyACM0", 0x303A, 0x1001, "F4:12:FA:4C:21:08", "Espressif", "USB JTAG/serial debug unit",
             interface="USB JTAG/serial debug unit"),
    usb_port("/dev/ttyACM1", 0x2341, 0x0043, "75833353035351E0E1A1", "Arduino (www.arduino.cc)", "Arduino Uno"),
    builtin_port("/dev/ttyS0"),
]


def test_each_port_is_named_by_its_usb_chip_and_the_boards_that_carry_it(tmp_path: Path) -> None:
    found, stale = ports.list_ports(LAPTOP, boards_dir(tmp_path), sim_dir=tmp_path / "none")
    by_port = {p.port: p for p in found}
    cp = by_port["/dev/ttyUSB0"]
    assert (cp.candidate, cp.usb_id, cp.boards, cp.serial_number) == (True, "10c4:ea60",
                                                                     ["esp32-devkitc", "esp32-s3-devkitc-1"], "0001")
    assert cp.usb_chip.startswith("CP210x USB-UART")
    ch = by_port["/dev/ttyUSB1"]
    assert (ch.candidate, ch.usb_chip, ch.boards) == (True, "CH340 USB-UART (WCH)", ["olimex-esp32-poe"])
    jtag = by_port["/dev/ttyACM0"]
    assert (jtag.candidate, jtag.usb_chip, jtag.boards) == (True, "ESP32 built-in USB-Serial/JTAG",
                                                            ["esp32-s3-devkitc-1"])
    assert "no BOOT button needed" in jtag.note
    uno, uart = by_port["/dev/ttyACM1"], by_port["/dev/ttyS0"]
    assert not uno.candidate and uno.usb_id == "2341:0043" and uno.boards == []
    assert not uart.candidate and uart.usb_id is None
    # candidates first, in port order; the others after
    assert [p.port for p in found] == ["/dev/ttyACM0", "/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyACM1", "/dev/ttyS0"]
    assert stale == 0

    table = ports.as_table(found, stale)
    assert "/dev/ttyUSB0  10c4:ea60  CP210x USB-UART" in table
    assert "esp32-devkitc, esp32-s3-devkitc-1" in table
    assert "Not ESP32 boards: /dev/ttyACM1 (2341:0043, not a USB serial chip of a known ESP32 board); " \
           "/dev/ttyS0 (a built-in serial port, not USB)" in table


def test_a_usb_chip_only_a_board_file_names_is_a_candidate(tmp_path: Path) -> None:
    d = boards_dir(tmp_path)
    (d / "odd.json").write_text(json.dumps({"board": "odd-board", "mcu": "esp32", "usb": ["1234:ABCD"]}))
    port = ports.classify(usb_port("/dev/ttyUSB3", 0x1234, 0xABCD, None, "Odd", "Odd bridge"),
                          ports.board_usb_index(d))
    assert port.candidate and port.boards == ["odd-board"]


def test_nothing_plugged_in_says_what_to_check(tmp_path: Path) -> None:
    found, stale = ports.list_ports([builtin_port("/dev/ttyS0")], boards_dir(tmp_path), sim_dir=tmp_path)
    assert ports.as_table(found, stale).startswith("No ESP32 board found. Plug it in with a data cable")


def test_the_repository_board_files_index(tmp_path: Path) -> None:
    index = ports.board_usb_index(BOARDS)  # whatever "usb" lists they carry, they parse
    assert all(":" in vidpid for vidpid in index)


def test_meetkit_ports_lists_a_running_simulated_board_and_skips_a_stale_entry(tmp_path: Path) -> None:
    registry = tmp_path / "sim-boards"
    registry.mkdir()
    master, slave = os.openpty()
    port = os.ttyname(slave)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    try:
        (registry / f"{os.getpid()}.json").write_text(json.dumps(
            {"port": port, "pid": os.getpid(), "board": "esp32-devkitc", "blank": True, "flash": "f.img"}))
        (registry / f"{dead_pid}.json").write_text(json.dumps(
            {"port": "/dev/pts/999", "pid": dead_pid, "board": "esp32-devkitc", "blank": False, "flash": "g.img"}))
        env = {**os.environ, "MEETKIT_SIM_BOARDS": str(registry)}
        r = subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "ports", "--json"], capture_output=True,
                           text=True, env=env, timeout=30)
        table = subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "ports"], capture_output=True,
                               text=True, env=env, timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    sims = [p for p in listing["ports"] if p["simulated"]]
    assert [(p["port"], p["boards"], p["candidate"]) for p in sims] == [(port, ["esp32-devkitc"], True)]
    assert sims[0]["sim"]["pid"] == os.getpid()
    assert listing["stale_sim_entries"] == 1
    assert table.returncode == 0
    assert f"{port}: ROM bootloader, no MicroPython: flash-micropython --no-reset" in table.stdout
    assert "(1 simulated board in " in table.stdout and "no longer running, skipped)" in table.stdout
