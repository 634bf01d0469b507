"""The simulated ROM bootloader (tools/sim/rom.py) as esptool 5 sees it: the real esptool, unchanged,
through the ROM alone (--no-stub) and through its stub; the protocol details a real ROM gives
(status bytes, error codes, SYNC answered eight times); the pty server's command line; and
micropython_image() refusing every flash that would not boot."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from meetkit_tools.sim.mpimage import micropython_firmware
from meetkit_tools.sim.rom import RomBootloader, RomPty, SlipDecoder, micropython_image, slip

MB = 1024 * 1024


def esptool(port: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "esptool", "--port", port, "--before", "no-reset",
                        "--after", "no-reset", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def command(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    return slip(struct.pack("<BBHI", 0, op, len(data), chk) + data)


def responses(raw: bytes) -> list[tuple[int, int, int, bytes]]:
    return [(op, size, value, body) for _d, op, size, value, body in
            ((*struct.unpack_from("<BBHI", f), f[8:]) for f in SlipDecoder().feed(raw))]


def test_esptool_through_the_rom_alone_and_through_its_stub(tmp_path: Path) -> None:
    fw = micropython_firmware("esp32", "v1.24.1")
    (tmp_path / "fw.bin").write_bytes(fw)
    with RomPty(RomBootloader("esp32")) as board:
        out = esptool(board.port, "flash-id")
        assert "Chip type:          ESP32-D0WD-V3 (revision v3.0)" in out
        assert "Manufacturer: c8" in out and "Detected flash size: 4MB" in out
        assert "MAC:                24:0a:c4:12:34:56" in out

        # the ROM only: plain FLASH_DATA blocks, MD5 as hex digits, 64-byte READ_FLASH_SLOW
        out = esptool(board.port, "--no-stub", "write-flash", "0x1000", str(tmp_path / "fw.bin"))
        assert "Hash of data verified." in out
        esptool(board.port, "--no-stub", "read-flash", "0x1000", "1000", str(tmp_path / "slow.bin"))
        assert (tmp_path / "slow.bin").read_bytes() == fw[:1000]
        assert micropython_image(board.rom.flash) == ("v1.24.1", "2024-11-29")

        # the stub: region erase, then its acknowledged READ_FLASH
        esptool(board.port, "erase-region", "0x10000", "0x1000")
        assert board.rom.flash[0x10000:0x11000] == b"\xff" * 0x1000
        assert micropython_image(board.rom.flash) is None  # the app's first sector is gone
        esptool(board.port, "read-flash", "0x1000", hex(len(fw)), str(tmp_path / "back.bin"))
        back = (tmp_path / "back.bin").read_bytes()
        assert back[:0xF000] == fw[:0xF000] and back[0xF000:0x10000] == b"\xff" * 0x1000

        # left running by one esptool, the stub answers the next (SYNC value 0)
        out = esptool(board.port, "--after", "no-reset-stub", "read-mac")
        assert board.rom.mode == "stub"
        out = esptool(board.port, "erase-flash")
        assert "Stub flasher is already running. No upload is necessary." in out
        assert board.rom.flash == b"\xff" * (4 * MB)


def test_rom_and_stub_answer_as_the_chip_does() -> None:
    rom = RomBootloader("esp32")
    sync = responses(rom.feed(command(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32)))
    assert len(sync) == 8 and all(r[0] == 0x08 and r[2] == 0x20120707 for r in sync)
    magic = responses(rom.feed(command(0x0A, struct.pack("<I", 0x40001000))))
    assert magic == [(0x0A, 4, 0x00F01D83, b"\0\0\0\0")]  # the ROM's four status bytes
    # GET_SECURITY_INFO is unknown to the ESP32's ROM: status 1, error 0x05
    assert responses(rom.feed(command(0x14))) == [(0x14, 4, 0, b"\x01\x05\0\0")]
    # a bad checksum on a RAM block: 0x07
    rom.feed(command(0x05, struct.pack("<IIII", 4, 1, 4, 0x40090000)))
    bad = responses(rom.feed(command(0x07, struct.pack("<IIII", 4, 0, 0, 0) + b"abcd", chk=0x00)))
    assert bad[0][3] == b"\x01\x07\0\0"
    # the stub's commands are not the ROM's
    assert responses(rom.feed(command(0xD0)))[0][3] == b"\x01\x05\0\0"

    # upload something and jump into it: the stub greets with OHAI, then answers with 2 status bytes
    rom.feed(command(0x05, struct.pack("<IIII", 4, 1, 4, 0x40090000)))
    block = b"\x36\x41\x00\x00"
    chk = 0xEF
    for b in block:
        chk ^= b
    assert responses(rom.feed(command(0x07, struct.pack("<IIII", 4, 0, 0, 0) + block, chk=chk)))[0][3] == b"\0\0\0\0"
    raw = rom.feed(command(0x06, struct.pack("<II", 0, 0x40090000)))
    assert SlipDecoder().feed(raw)[-1] == b"OHAI" and rom.mode == "stub"
    assert responses(rom.feed(command(0x99)))[0][3] == b"\x01\xc3"  # the stub's "invalid command"
    assert responses(rom.feed(command(0xD0))) == [(0xD0, 2, 0, b"\0\0")]  # ERASE_FLASH


def test_the_s3_tells_its_chip_id_through_get_security_info() -> None:
    rom = RomBootloader("esp32s3")
    (op, size, _v, body), = responses(rom.feed(command(0x14)))
    assert size == 24 and struct.unpack("<IBBBBBBBBII", body[:20])[9] == 9 and body[20:] == b"\0\0\0\0"


def test_flash_is_nor_and_writes_without_erase_only_clear_bits() -> None:
    rom = RomBootloader("esp32", flash=bytearray(b"\x0f" * MB))  # 1 MB, every byte 0x0f
    rom.mode = "stub"
    rom._write = {"erased": {0}}  # sector 0 already erased in this write: program on top of 0x0f
    assert rom._program(0, b"\xf0\xff")
    assert bytes(rom.flash[:3]) == b"\x00\x0f\x0f"


def test_micropython_image_refuses_what_would_not_boot() -> None:
    flash = bytearray(b"\xff" * 4 * MB)
    assert micropython_image(flash) is None
    fw = micropython_firmware("esp32", "v1.22.2", date="Feb 22 2024")
    flash[0x1000:0x1000 + len(fw)] = fw
    assert micropython_image(flash) == ("v1.22.2", "2024-02-22")
    assert micropython_image(flash, "esp32s3") is None  # nothing at the S3's offset
    torn = bytearray(flash)
    torn[0x1000 + len(fw) - 40] ^= 0xFF  # the app's SHA-256 no longer matches
    assert micropython_image(torn) is None
    other = micropython_firmware("esp32", "v5.2", project="esp-at")
    flash[0x1000:0x1000 + len(other)] = other
    assert micropython_image(flash) is None


def test_the_pty_server_command_line_saves_the_flash_when_the_port_closes(tmp_path: Path) -> None:
    image = tmp_path / "flash.img"
    (tmp_path / "fw.bin").write_bytes(micropython_firmware("esp32s3", "v1.24.1"))
    server = subprocess.Popen([sys.executable, "-m", "meetkit_tools.sim.rom", "--chip", "esp32s3",
                               "--flash", str(image)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert port.startswith("/dev/pts/")
        assert "ESP32-S3 in download mode, MAC f4:12:fa:12:34:56, flash 8 MB" in server.stdout.readline()
        esptool(port, "write-flash", "0x0", str(tmp_path / "fw.bin"))
        for line in server.stdout:
            if line.startswith("rom: port closed"):
                break
        assert "the flash boots MicroPython v1.24.1 (built 2024-11-29); saved to" in line
    finally:
        server.terminate()
        server.wait(10)
    assert server.returncode == 0
    assert micropython_image(image.read_bytes(), "esp32s3") == ("v1.24.1", "2024-11-29")
    assert len(image.read_bytes()) == 8 * MB


@pytest.mark.parametrize("payload", [b"\xc0", b"\xdb", b"a\xdb\xdcb\xc0\xdb", bytes(range(256))])
def test_slip_round_trip(payload: bytes) -> None:
    dec = SlipDecoder()
    framed = slip(payload)
    got = dec.feed(b"boot noise" + framed[:3]) + dec.feed(framed[3:] + slip(b"next"))
    assert got == [payload, b"next"]


@pytest.mark.parametrize("chip,base", [("esp32", 0x1000), ("esp32s3", 0x0)])
def test_esptool_image_info_reads_the_stand_in_firmware(tmp_path: Path, chip: str, base: int) -> None:
    fw = micropython_firmware(chip, "v1.24.1")
    (tmp_path / "boot.bin").write_bytes(fw[:0x8000 - base])
    (tmp_path / "app.bin").write_bytes(fw[0x10000 - base:])
    for part, expect in [("boot.bin", "Bootloader Information"), ("app.bin", "Project name: micropython")]:
        r = subprocess.run([sys.executable, "-m", "esptool", "image-info", str(tmp_path / part)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "(valid)" in r.stdout.split("Checksum:")[1].splitlines()[0]
        assert "(valid)" in r.stdout.split("Validation hash:")[1].splitlines()[0]
        assert expect in r.stdout
    assert "App version: v1.24.1" in r.stdout
