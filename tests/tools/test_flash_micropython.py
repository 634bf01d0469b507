"""`meetkit flash-micropython` against a board in download mode: the simulated ESP32 ROM bootloader
(tools/sim/rom.py) on a pty, driven by the real CLI and the real esptool 5. What the technician
sees: the file checked before the board is touched, the flash erased on a blank board and kept on
an update, the image at the chip's offset (read back with `esptool read-flash`), and a clear
message and exit 1 for every wrong file, chip, port and silent board.

No real board is flashed here (docs/technician.md says so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.espimage import Chip, build_image
from meetkit_tools.flashing import FlashError, check_firmware
from meetkit_tools.sim.mpimage import micropython_firmware
from meetkit_tools.sim.rom import RomBootloader, RomPty, micropython_image

MB = 1024 * 1024


def meetkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meetkit_tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def esptool(port: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "esptool", "--port", port, "--before", "no-reset",
                        "--after", "no-reset", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.fixture
def board() -> Iterator[RomPty]:
    """A blank ESP32 DevKitC held in download mode, as after a technician unpacks it."""
    with RomPty(RomBootloader("esp32")) as server:
        yield server


@pytest.fixture
def board_s3() -> Iterator[RomPty]:
    with RomPty(RomBootloader("esp32s3")) as server:
        yield server


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def fw32(tmp_path: Path) -> Path:
    return write(tmp_path, "ESP32_GENERIC-20241129-v1.24.1.bin", micropython_firmware("esp32", "v1.24.1"))


def test_a_blank_board_is_erased_and_flashed_at_0x1000_and_read_back_boots_micropython(
        board: RomPty, fw32: Path, tmp_path: Path) -> None:
    # what a board from the box holds: some factory firmware's data where MicroPython's filesystem goes
    board.rom.flash[0x200000:0x201000] = b"factory test firmware data".ljust(0x1000, b"\0")
    image = fw32.read_bytes()

    r = meetkit("flash-micropython", "--no-reset", "--port", board.port, "--firmware", str(fw32),
                "--board", "esp32-devkitc")

    assert r.returncode == 0, r.stdout + r.stderr
    assert "MicroPython v1.24.1 (built 2024-11-29, ESP-IDF v5.2.2) for ESP32" in r.stdout
    assert "Board: ESP32-D0WD-V3 (revision v3.0), MAC 24:0a:c4:12:34:56, flash 4MB" in r.stdout
    assert "No MicroPython on the board: erasing the whole flash first" in r.stdout
    assert f"Writing {len(image)} bytes at 0x1000" in r.stdout
    assert "The board now holds MicroPython v1.24.1" in r.stdout
    assert "press EN (RST) to start MicroPython" in r.stdout

    # read back by esptool itself, as a second tool would
    out = tmp_path / "readback.bin"
    esptool(board.port, "read-flash", "0", hex(0x1000 + len(image)), str(out))
    back = out.read_bytes()
    assert back[0x1000:] == image
    assert back[:0x1000] == b"\xff" * 0x1000  # nothing below the bootloader offset
    assert micropython_image(back + b"\xff" * (4 * MB - len(back))) == ("v1.24.1", "2024-11-29")
    assert board.rom.flash[0x200000:0x201000] == b"\xff" * 0x1000  # the factory data was erased
    assert board.rom.mode == "rom"  # esptool's stub left: pressing EN boots what was written


def test_an_update_writes_over_micropython_and_keeps_the_node_files(board: RomPty, tmp_path: Path) -> None:
    old = micropython_firmware("esp32", "v1.23.0", date="May 31 2024")
    board.rom.flash[0x1000:0x1000 + len(old)] = old
    board.rom.flash[0x200000:0x200010] = b"littlefs: nodes!"  # the node's config and spool
    new = write(tmp_path, "ESP32_GENERIC-v1.24.1.bin", micropython_firmware("esp32", "v1.24.1"))

    r = meetkit("flash-micropython", "--no-reset", "--port", board.port, "--firmware", str(new))

    assert r.returncode == 0, r.stdout + r.stderr
    assert "The board holds MicroPython v1.23.0: writing over it; its filesystem (the node's files) stays" in r.stdout
    assert bytes(board.rom.flash[0x200000:0x200010]) == b"littlefs: nodes!"
    assert micropython_image(board.rom.flash) == ("v1.24.1", "2024-11-29")

    r = meetkit("flash-micropython", "--no-reset", "--erase", "--port", board.port, "--firmware", str(new))
    assert r.returncode == 0, r.stdout + r.stderr
    assert bytes(board.rom.flash[0x200000:0x200010]) == b"\xff" * 16


def test_an_esp32_s3_gets_its_image_at_0x0(board_s3: RomPty, tmp_path: Path) -> None:
    fw = write(tmp_path, "ESP32_GENERIC_S3-v1.24.1.bin", micropython_firmware("esp32s3", "v1.24.1"))
    r = meetkit("flash-micropython", "--no-reset", "--port", board_s3.port, "--firmware", str(fw))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Board: ESP32-S3 (QFN56) (revision v0.2), MAC f4:12:fa:12:34:56, flash 8MB" in r.stdout
    assert "at 0x0 ..." in r.stdout
    assert bytes(board_s3.rom.flash[:len(fw.read_bytes())]) == fw.read_bytes()
    assert micropython_image(board_s3.rom.flash, "esp32s3") == ("v1.24.1", "2024-11-29")


def test_an_s3_image_on_an_esp32_is_refused_before_anything_is_written(board: RomPty, tmp_path: Path) -> None:
    fw = write(tmp_path, "ESP32_GENERIC_S3-v1.24.1.bin", micropython_firmware("esp32s3"))
    r = meetkit("flash-micropython", "--no-reset", "--port", board.port, "--firmware", str(fw))
    assert r.returncode == 1
    assert ("chip mismatch: the board on " + board.port + " is an ESP32 (ESP32-D0WD-V3 (revision v3.0)), "
            "ESP32_GENERIC_S3-v1.24.1.bin is for ESP32-S3. Nothing was written. Download the ESP32_GENERIC "
            "build") in r.stderr
    assert board.rom.flash == b"\xff" * (4 * MB)


def test_a_board_file_of_another_chip_is_refused_without_touching_the_port(fw32: Path, tmp_path: Path) -> None:
    s3 = write(tmp_path, "s3.bin", micropython_firmware("esp32s3"))
    r = meetkit("flash-micropython", "--port", "/dev/nonexistent-port", "--firmware", str(s3),
                "--board", "esp32-devkitc")
    assert r.returncode == 1
    assert "s3.bin is for ESP32-S3, board esp32-devkitc has an ESP32: download the ESP32_GENERIC build" in r.stderr
    r = meetkit("flash-micropython", "--port", "/dev/nonexistent-port", "--firmware", str(fw32), "--board", "nope")
    assert r.returncode == 1 and "unknown board 'nope': the boards are " in r.stderr and "esp32-devkitc" in r.stderr


def test_a_file_that_is_not_micropython_is_refused_by_the_cli(board: RomPty, tmp_path: Path) -> None:
    other = write(tmp_path, "blink.bin", micropython_firmware("esp32", "v1.0", project="blink"))
    r = meetkit("flash-micropython", "--no-reset", "--port", board.port, "--firmware", str(other))
    assert r.returncode == 1
    assert "blink.bin is blink v1.0, not MicroPython: download the ESP32_GENERIC build" in r.stderr
    assert board.rom.flash == b"\xff" * (4 * MB)  # the board was not touched
    assert board.sessions == 0


@pytest.mark.parametrize("name,data,message", [
    ("empty.bin", b"", "empty.bin is empty"),
    ("page.bin", b"<!DOCTYPE html><html>Download</html>", "page.bin is a web page, not a firmware"),
    ("firmware.elf", b"\x7fELF\x01\x01\x01" + b"\0" * 100, "firmware.elf is an ELF file"),
    ("noise.bin", b"\x12\x34\x56\x78" * 100, "noise.bin is not an ESP32 firmware image (it starts with 12 34 56 78"),
])
def test_files_that_are_no_firmware_at_all(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    with pytest.raises(FlashError, match=message.replace("(", r"\(")):
        check_firmware(write(tmp_path, name, data))


def test_damaged_and_partial_micropython_files(tmp_path: Path) -> None:
    good = micropython_firmware("esp32", "v1.24.1")
    cut = write(tmp_path, "cut.bin", good[:len(good) - 5000])  # an interrupted download
    with pytest.raises(FlashError, match=r"cut.bin is not a complete firmware for ESP32: .*cut off"):
        check_firmware(cut)
    flipped = bytearray(good)
    flipped[0xF000 + 0x5000] ^= 0x01  # one bit in the app
    with pytest.raises(FlashError, match=r"not a complete firmware for ESP32: the image at 0x10000 has checksum"):
        check_firmware(write(tmp_path, "flipped.bin", bytes(flipped)))
    app_only = write(tmp_path, "micropython.bin", good[0xF000:])  # the build's app part, not the merged file
    with pytest.raises(FlashError, match=r"only an app \(micropython v1.24.1\), without bootloader and partition"):
        check_firmware(app_only)
    c3 = build_image(Chip("esp32c3", "ESP32-C3", 5, 0x0), [(0x3FCD5820, b"bootloader" * 100)], 0x403CC71A)
    with pytest.raises(FlashError, match="a firmware for ESP32-C3; meetkit's boards have an ESP32 or ESP32-S3"):
        check_firmware(write(tmp_path, "c3.bin", c3))
    fw = check_firmware(write(tmp_path, "ok.bin", good))
    assert (fw.chip.name, fw.offset, fw.version, fw.build_date) == ("esp32", 0x1000, "v1.24.1", "2024-11-29")


def test_a_missing_port(fw32: Path) -> None:
    r = meetkit("flash-micropython", "--port", "/dev/ttyUSB97", "--firmware", str(fw32))
    assert r.returncode == 1
    assert "/dev/ttyUSB97: no such port. `meetkit ports` lists the boards plugged in" in r.stderr


def test_a_port_another_program_holds(board: RomPty, fw32: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import serial, sys, time\n"
                               f"s = serial.Serial({board.port!r}, exclusive=True)\n"
                               "print('holding', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        r = meetkit("flash-micropython", "--no-reset", "--port", board.port, "--firmware", str(fw32))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1
    assert f"{board.port} is busy: another program has it open (pid {holder.pid}: " in r.stderr
    assert "Close it (a serial monitor, mpremote, Thonny, another meetkit) and run this again" in r.stderr
    assert board.rom.flash == b"\xff" * (4 * MB)


def test_a_port_nobody_answers_on(fw32: Path) -> None:
    master, slave = os.openpty()  # a serial port with nothing behind it: a board not in its bootloader
    port = os.ttyname(slave)
    os.close(slave)
    try:
        r = meetkit("flash-micropython", "--no-reset", "--port", port, "--firmware", str(fw32))
    finally:
        os.close(master)
    assert r.returncode == 1
    assert f"no ESP32 bootloader answers on {port}. Is it an ESP32 board, and is it powered?" in r.stderr
    assert "hold BOOT (IO0), press and release EN (RST), release BOOT" in r.stderr
    assert "run this again with --no-reset" in r.stderr
