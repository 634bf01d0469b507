"""The ESP32 ROM serial bootloader, and the flasher stub esptool uploads into it, simulated.

A blank board held in download mode (BOOT pressed at reset) answers esptool through its ROM: SYNC,
registers (the chip's magic word, eFuses with its MAC and revision, the SPI controller through
which esptool reads the flash's JEDEC id), RAM downloads (esptool's stub, which then says "OHAI"
and takes over) and flash writes. RomBootloader is that protocol as a pure engine: SLIP frames
in, SLIP frames out, over a NOR flash image (erase sets 0xFF, programming can only clear bits).
Real esptool 5 talks to it unchanged with `--before no-reset` (a pty cannot pulse DTR/RTS).

What is simulated, and how (docs/technician.md, "Practising without a board", has the user's view):
- ROM: 4 status bytes, error 0x05 for commands it does not know (GET_SECURITY_INFO on an ESP32,
  the stub's 0xD0-0xD3 commands), MD5 as 32 hex digits, FLASH_BEGIN erasing up front,
  READ_FLASH_SLOW in 64-byte blocks (ESP32 only, as on the chip).
- Stub (any code uploaded with MEM_* and started at an entry point inside it): 2 status bytes,
  error 0xC3 for unknown commands, raw MD5, erase-as-you-write, ERASE_FLASH, ERASE_REGION,
  READ_FLASH with its acknowledged packets, FLASH_END(reboot) back to the ROM.
- ESP32: chip detection by the magic word at 0x40001000; ESP32-S3: by GET_SECURITY_INFO (chip id 9).
- CHANGE_BAUDRATE is answered and remembered; the bytes do not care (a pty has no baud rate).
- Not simulated: flash encryption, secure boot, Secure Download Mode, timing (erases are instant).

`python -m meetkit_tools.sim.rom [--chip esp32] [--flash FILE]` serves it on a pty and prints the
pty's path as its first line.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import select
import signal
import struct
import sys
import threading
import tty
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meetkit_tools.espimage import CHIPS, ImageError, read_flash_app, xor_bytes

SLIP_END = 0xC0
SECTOR = 0x1000

# Commands (esptool's ESPLoader.ESP_CMDS).
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END, SPI_FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH = 0xD0, 0xD1, 0xD2

# ROM error codes (the byte after status 1) and the stub's (esptool util.py names them).
ROM_INVALID, ROM_FAILED, ROM_BAD_CRC, ROM_DEFLATE = 0x05, 0x06, 0x07, 0x0B
STUB_BAD_LEN, STUB_BAD_CHECKSUM, STUB_BAD_BLOCKSIZE, STUB_INVALID = 0xC0, 0xC1, 0xC2, 0xC3
STUB_SPI_FAILED, STUB_NOT_IN_FLASH_MODE, STUB_INFLATE, STUB_NOT_ENOUGH, STUB_TOO_MUCH = 0xC4, 0xC6, 0xC7, 0xC8, 0xC9

SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32
ROM_SYNC_VALUE = 0x20120707  # the stub answers SYNC with 0: esptool tells them apart by it

# SPI controller bits esptool drives to run a flash command (loader.run_spiflash_command).
SPI_CMD_USR = 1 << 18
SPI_USR_ADDR, SPI_USR_MISO = 1 << 30, 1 << 28


def slip(payload: bytes) -> bytes:
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class SlipDecoder:
    """Frames from a byte stream; bytes outside frames (line noise, a boot log) are dropped."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while True:
            if not self._in_frame:
                start = self._buf.find(SLIP_END)
                if start < 0:
                    self._buf.clear()
                    return frames
                del self._buf[:start + 1]
                self._in_frame = True
            end = self._buf.find(SLIP_END)
            if end < 0:
                return frames
            raw = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if not raw:  # C0 C0: the first closed nothing, the second opens a frame
                continue
            self._in_frame = False
            # Every 0xDB starts a pair, so two left-to-right replaces undo the escaping exactly.
            frame = raw.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
            if frame.count(b"\xdb") == raw.count(b"\xdb\xdd"):
                frames.append(frame)


@dataclass(frozen=True)
class ChipModel:
    """What esptool reads from a chip: its registers and how its ROM differs."""

    name: str
    label: str
    magic: int  # the word at 0x40001000 esptool reads to tell ESP32-family chips apart
    security_info: bool  # the ROM knows GET_SECURITY_INFO (ESP32-S3 and later)
    rom_read_flash_slow: bool
    spi_base: int
    spi_usr: int
    spi_usr1: int
    spi_usr2: int
    spi_miso_dlen: int
    spi_w0: int
    spi_addr_msb: bool  # the address sits in the top bits of SPI_ADDR_REG (ESP32)
    uart_clkdiv: int | None
    default_mac: str
    default_flash_mb: int

    def efuses(self, mac: bytes) -> dict[int, int]:
        if self.name == "esp32":
            base = 0x3FF5A000
            return {
                base + 4 * 1: int.from_bytes(mac[2:6], "big"),
                base + 4 * 2: (mac[0] << 8) | mac[1],
                base + 4 * 3: (1 << 9) | (1 << 15),  # package D0WD, revision bit 0
                base + 4 * 4: 80,  # CK8M calibration, with RTCCALICFG1 gives the ROM's 40 MHz
                base + 4 * 5: 1 << 20,  # revision bit 1; SPI pads from the default pins
                0x3FF6607C: 1 << 31,  # APB_CTL_DATE: revision bit 2 -> v3.0, an ESP32-D0WD-V3
                0x3FF5F06C: 1280 << 7,  # RTCCALICFG1
                0x3FF44038: 0x13,  # GPIO_STRAP: GPIO0 low, download boot
            }
        base = 0x60007000
        block1 = base + 0x44
        return {
            block1: int.from_bytes(mac[2:6], "big"),
            block1 + 4: (mac[0] << 8) | mac[1],
            block1 + 12: (2 << 18) | (1 << 24),  # minor revision 2, block version 1.1; QFN56, no in-package flash
            base + 0x5C + 16: 1,  # block 2 version major 1
            0x60004038: 0x0,  # GPIO_STRAP: GPIO0 low, download boot
        }


MODELS = {
    "esp32": ChipModel("esp32", "ESP32", 0x00F01D83, False, True, 0x3FF42000, 0x1C, 0x20, 0x24, 0x2C, 0x80,
                       True, 0x3FF40014, "24:0a:c4:12:34:56", 4),
    "esp32s3": ChipModel("esp32s3", "ESP32-S3", 0x00000009, True, False, 0x60002000, 0x18, 0x1C, 0x20, 0x28,
                         0x58, False, None, "f4:12:fa:12:34:56", 8),
}

# JEDEC ids: GigaDevice GD25Q (0xC8 0x40), the capacity byte 2^n bytes.
_CAPACITY = {1: 0x14, 2: 0x15, 4: 0x16, 8: 0x17, 16: 0x18}
# A minimal SFDP table: the signature, one JEDEC parameter header, nothing after it.
_SFDP = b"SFDP\x06\x01\x00\xff\x00\x06\x01\x10\x30\x00\x00\xff" + b"\xff" * 48


def micropython_image(flash: bytes | bytearray | memoryview, chip: str | None = None) -> tuple[str, str] | None:
    """(version, build date) when the flash boots MicroPython, as the chip's ROM and ESP-IDF's
    bootloader would find it: a valid bootloader at the chip's offset, a partition table, and a
    valid app image in the factory (or ota_0) partition whose descriptor names "micropython".
    None for anything else (blank, half-written, corrupt, another app)."""
    try:
        found = read_flash_app(flash, CHIPS[chip] if chip else None)
    except (ImageError, KeyError):
        return None
    if found.desc is None or found.desc.project != "micropython":
        return None
    return found.desc.version, found.desc.build_date


class RomBootloader:
    """One chip in download mode: feed() it what esptool sends, send back what it returns."""

    def __init__(self, chip: str = "esp32", flash: bytearray | str | os.PathLike | None = None,
                 flash_mb: int | None = None, mac: str | None = None) -> None:
        self.model = MODELS[chip]
        self.chip = chip
        size = (flash_mb or self.model.default_flash_mb) * 1024 * 1024
        self.path: Path | None = None
        if isinstance(flash, bytearray):
            self.flash = flash
        else:
            self.flash = bytearray(b"\xff" * size)
            if flash is not None:
                self.path = Path(flash)
                if self.path.exists():
                    data = self.path.read_bytes()[:size]
                    self.flash[:len(data)] = data
        if len(self.flash) // (1024 * 1024) not in _CAPACITY:
            raise ValueError(f"flash of {len(self.flash)} bytes: 1, 2, 4, 8 or 16 MB")
        self.mac = bytes.fromhex((mac or self.model.default_mac).replace(":", ""))
        self.mode = "rom"  # "rom", "stub", or "app" (left the bootloader: ignores the serial port)
        self.baud = 115200
        self.events: list[str] = []  # what happened, for people (the pty server prints them)
        self._slip = SlipDecoder()
        self._regs: dict[int, int] = self.model.efuses(self.mac)
        self._ram: list[tuple[int, bytearray]] = []
        self._mem: dict | None = None
        self._write: dict | None = None
        self._read: dict | None = None
        self._last_op = -1

    # -- the serial line ----------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self.mode == "app":
            return b""
        out = bytearray()
        for frame in self._slip.feed(data):
            if self.mode == "app":
                break
            if self._read is not None and len(frame) == 4:
                out += self._read_ack(struct.unpack("<I", frame)[0])
                continue
            self._read = None
            out += self._command(frame)
        return bytes(out)

    def save(self) -> None:
        """Write the flash back to its file (atomically: a reader never sees half of it)."""
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(self.flash)
            os.replace(tmp, self.path)

    def micropython(self) -> tuple[str, str] | None:
        return micropython_image(self.flash, self.chip)

    def _event(self, text: str) -> None:
        if not self.events or self.events[-1] != text:  # esptool repeats some reads
            self.events.append(text)

    def _resp(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> bytes:
        status = bytes([1 if error else 0, error])
        if self.mode == "rom":
            status += b"\0\0"  # the ROM's two reserved status bytes
        body = data + status
        return slip(struct.pack("<BBHI", 1, op, len(body), value) + body)

    def _err(self, op: int, rom: int, stub: int) -> bytes:
        return self._resp(op, error=rom if self.mode == "rom" else stub)

    # -- commands -----------------------------------------------------------------------------

    def _command(self, frame: bytes) -> bytes:
        if len(frame) < 8:
            return b""
        direction, op, size, chk = struct.unpack_from("<BBHI", frame)
        data = frame[8:]
        if direction != 0:
            return b""
        if size != len(data):
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        handler = self._handlers().get(op)
        if handler is None:
            return self._err(op, ROM_INVALID, STUB_INVALID)
        out = handler(op, data, chk)
        self._last_op = op
        return out

    def _handlers(self) -> dict[int, Callable[[int, bytes, int], bytes]]:
        common = {SYNC: self._sync, READ_REG: self._read_reg, WRITE_REG: self._write_reg,
                  MEM_BEGIN: self._mem_begin, MEM_DATA: self._mem_data, MEM_END: self._mem_end,
                  FLASH_BEGIN: self._flash_begin, FLASH_DATA: self._flash_data, FLASH_END: self._flash_end,
                  FLASH_DEFL_BEGIN: self._flash_begin, FLASH_DEFL_DATA: self._flash_data,
                  FLASH_DEFL_END: self._flash_end, SPI_SET_PARAMS: self._ok, SPI_ATTACH: self._ok,
                  CHANGE_BAUDRATE: self._change_baud, SPI_FLASH_MD5: self._md5}
        if self.model.security_info:
            common[GET_SECURITY_INFO] = self._security_info
        if self.mode == "rom":
            if self.model.rom_read_flash_slow:
                common[READ_FLASH_SLOW] = self._read_flash_slow
        else:
            common.update({ERASE_FLASH: self._erase_flash, ERASE_REGION: self._erase_region,
                           READ_FLASH: self._read_flash})
        return common

    def _ok(self, op: int, data: bytes, chk: int) -> bytes:
        return self._resp(op)

    def _sync(self, op: int, data: bytes, chk: int) -> bytes:
        if data != SYNC_PAYLOAD:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        if self._last_op != SYNC:
            self._event(f"sync ({'ROM bootloader' if self.mode == 'rom' else 'flasher stub'})")
        value = ROM_SYNC_VALUE if self.mode == "rom" else 0
        return self._resp(op, value) * 8  # both answer a SYNC eight times

    def _security_info(self, op: int, data: bytes, chk: int) -> bytes:
        # flags, flash_crypt_cnt, 7 key purposes, chip id, API version: nothing secured
        return self._resp(op, data=struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                               CHIPS[self.chip].image_chip_id, 0))

    # registers: the eFuses, the UART divider, the SPI controller

    def _reg(self, addr: int) -> int:
        if addr == 0x40001000:
            return self.model.magic
        if addr == self.model.uart_clkdiv:
            return 40_000_000 // self.baud  # the APB clock over the baud rate
        return self._regs.get(addr, 0)

    def _read_reg(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 4:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        return self._resp(op, self._reg(struct.unpack("<I", data)[0]))

    def _write_reg(self, op: int, data: bytes, chk: int) -> bytes:
        if not data or len(data) % 16:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        for addr, value, mask, _delay in struct.iter_unpack("<IIII", data):
            self._regs[addr] = (self._reg(addr) & ~mask | value & mask) & 0xFFFFFFFF
            if addr == self.model.spi_base and self._regs[addr] & SPI_CMD_USR:
                self._spi_user_command()
        return self._resp(op)

    def _spi_user_command(self) -> None:
        """Run the command esptool set up in the SPI controller against the flash chip."""
        m, base = self.model, self.model.spi_base
        usr = self._regs.get(base + m.spi_usr, 0)
        command = self._regs.get(base + m.spi_usr2, 0) & 0xFF
        addr = self._regs.get(base + 0x04, 0)
        if usr & SPI_USR_ADDR and m.spi_addr_msb:
            addr_len = ((self._regs.get(base + m.spi_usr1, 0) >> 26) & 0x3F) + 1
            addr >>= 32 - addr_len
        reply = b""
        if command == 0x9F:  # RDID: manufacturer, memory type, capacity
            reply = bytes([0xC8, 0x40, _CAPACITY[len(self.flash) // (1024 * 1024)]])
            self._event(f"flash id read: GigaDevice, {len(self.flash) // (1024 * 1024)} MB")
        elif command == 0x5A:  # SFDP
            reply = _SFDP[addr:addr + 8]
        if usr & SPI_USR_MISO:
            bits = self._regs.get(base + m.spi_miso_dlen, 0) + 1
            reply = (reply + b"\0" * 64)[:(bits + 7) // 8]
            for i in range(0, len(reply), 4):
                self._regs[base + m.spi_w0 + i] = int.from_bytes(reply[i:i + 4].ljust(4, b"\0"), "little")
        self._regs[base] &= ~SPI_CMD_USR  # done at once

    # RAM downloads: the stub

    def _mem_begin(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 16:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        size, blocks, blocksize, offset = struct.unpack("<IIII", data)
        self._mem = {"addr": offset, "data": bytearray(), "size": size, "blocks": blocks,
                     "blocksize": blocksize, "seq": 0}
        return self._resp(op)

    def _block(self, op: int, data: bytes, chk: int, state: dict | None) -> tuple[bytes | None, bytes]:
        """A _DATA packet's payload, or the error the loader gives for it."""
        if state is None or len(data) < 16:
            return None, self._err(op, ROM_INVALID, STUB_NOT_IN_FLASH_MODE)
        length, seq = struct.unpack_from("<II", data)
        payload = data[16:]
        if length != len(payload):
            return None, self._err(op, ROM_INVALID, STUB_BAD_LEN)
        if xor_bytes(payload, 0xEF) != chk & 0xFF:
            return None, self._err(op, ROM_BAD_CRC, STUB_BAD_CHECKSUM)
        if seq != state["seq"]:
            return None, self._err(op, ROM_INVALID, STUB_BAD_BLOCKSIZE)
        state["seq"] += 1
        return payload, b""

    def _mem_data(self, op: int, data: bytes, chk: int) -> bytes:
        payload, err = self._block(op, data, chk, self._mem)
        if payload is None:
            return err
        assert self._mem is not None
        self._mem["data"] += payload
        if len(self._mem["data"]) >= self._mem["size"]:
            self._ram.append((self._mem["addr"], self._mem["data"][:self._mem["size"]]))
        return self._resp(op)

    def _mem_end(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 8:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        no_exec, entry = struct.unpack("<II", data)
        out = self._resp(op)
        self._mem = None
        if no_exec:
            return out
        if any(addr <= entry < addr + len(seg) for addr, seg in self._ram):
            size = sum(len(seg) for _, seg in self._ram)
            self._event(f"stub uploaded ({size} bytes in {len(self._ram)} segments), running at {entry:#010x}")
            self.mode = "stub"
            self._ram.clear()
            return out + slip(b"OHAI")  # the stub's greeting, the only frame nobody asked for
        self._event(f"jumped to {entry:#010x}, where nothing was loaded: the chip hangs")
        self.mode = "app"
        return out

    # flash writes, plain and deflated

    def _flash_begin(self, op: int, data: bytes, chk: int) -> bytes:
        plain = op == FLASH_BEGIN
        if len(data) not in (16, 20) or (len(data) == 20 and self.mode == "rom" and self.chip == "esp32"):
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        size, blocks, blocksize, offset = struct.unpack_from("<IIII", data)
        if len(data) == 20 and struct.unpack_from("<I", data, 16)[0]:
            self._event("refused an encrypted write: this chip has no flash encryption key")
            return self._err(op, ROM_FAILED, STUB_SPI_FAILED)
        if offset + size > len(self.flash):
            return self._err(op, ROM_FAILED, STUB_TOO_MUCH)
        self._write = {"plain": plain, "offset": offset, "size": size, "blocksize": blocksize, "seq": 0,
                       "blocks": blocks, "pos": offset, "written": 0, "erased": set(),
                       "inflate": None if plain else zlib.decompressobj()}
        if self.mode == "rom" and size:  # the ROM erases the whole region before the first byte
            self._erase(offset, size)
        if size:
            self._event(f"write begins at {offset:#08x}: {size} bytes{'' if plain else ' (deflated)'}")
        return self._resp(op)

    def _erase(self, offset: int, size: int) -> None:
        start = offset - offset % SECTOR
        end = min(len(self.flash), -(-(offset + size) // SECTOR) * SECTOR)
        self.flash[start:end] = b"\xff" * (end - start)

    def _program(self, addr: int, data: bytes) -> bool:
        """NOR programming: bits only go from 1 to 0 (the stub erases each sector first)."""
        if addr + len(data) > len(self.flash):
            return False
        w = self._write
        if self.mode == "stub" and w is not None:
            for sector in range(addr // SECTOR, (addr + len(data) + SECTOR - 1) // SECTOR):
                if sector not in w["erased"]:
                    w["erased"].add(sector)
                    self._erase(sector * SECTOR, SECTOR)
        old = int.from_bytes(self.flash[addr:addr + len(data)], "little")
        new = old & int.from_bytes(data, "little")
        self.flash[addr:addr + len(data)] = new.to_bytes(len(data), "little")
        return True

    def _flash_data(self, op: int, data: bytes, chk: int) -> bytes:
        w = self._write
        if w is None or w["plain"] != (op == FLASH_DATA):
            return self._err(op, ROM_INVALID, STUB_NOT_IN_FLASH_MODE)
        payload, err = self._block(op, data, chk, w)
        if payload is None:
            return err
        if w["plain"]:
            chunk = payload[:len(self.flash) - w["pos"]]
            if self.mode == "stub":  # the stub writes only what was announced, not the last block's padding
                chunk = payload[:max(0, w["offset"] + w["size"] - w["pos"])]
        else:
            try:
                chunk = w["inflate"].decompress(payload)
            except zlib.error:
                return self._err(op, ROM_DEFLATE, STUB_INFLATE)
            if self.mode == "stub" and w["pos"] + len(chunk) > w["offset"] + w["size"]:
                return self._err(op, ROM_DEFLATE, STUB_TOO_MUCH)
        if not self._program(w["pos"], chunk):
            return self._err(op, ROM_FAILED, STUB_SPI_FAILED)
        w["pos"] += len(chunk)
        w["written"] += len(chunk)
        return self._resp(op)

    def _flash_end(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 4:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        stay = struct.unpack("<I", data)[0]  # ROM: 1 runs the app; stub: 1 stays, 0 reboots
        w, self._write = self._write, None
        if w is not None and w["written"]:
            self._event(f"wrote {w['written']} bytes at {w['offset']:#08x}..{w['pos']:#08x}")
        out = self._resp(op)
        if self.mode == "rom" and stay:
            self._event("left the bootloader: the chip runs the app in flash")
            self.mode = "app"
        elif not stay:
            self._reboot()
        return out

    def _reboot(self) -> None:
        """A software reset with GPIO0 still held low: the ROM bootloader again, the stub gone."""
        self._event("rebooted into the ROM bootloader (download mode)")
        self.mode = "rom"
        self.baud = 115200
        self._write = self._mem = self._read = None

    def _change_baud(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 8:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        out = self._resp(op)  # answered at the old rate, then the UART switches
        self.baud = struct.unpack_from("<I", data)[0]
        self._event(f"baud rate {self.baud}")
        return out

    def _md5(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 16:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        addr, size = struct.unpack_from("<II", data)
        if addr + size > len(self.flash):
            return self._err(op, ROM_FAILED, STUB_SPI_FAILED)
        digest = hashlib.md5(self.flash[addr:addr + size])
        self._event(f"md5 of {size} bytes at {addr:#08x}")
        return self._resp(op, data=digest.hexdigest().encode() if self.mode == "rom" else digest.digest())

    def _read_flash_slow(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 8:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        addr, size = struct.unpack("<II", data)
        if size > 64 or addr + size > len(self.flash):
            return self._err(op, 0x0A, STUB_SPI_FAILED)  # "flash read length error"
        return self._resp(op, data=bytes(self.flash[addr:addr + size]).ljust(64, b"\xff"))

    # stub-only commands

    def _erase_flash(self, op: int, data: bytes, chk: int) -> bytes:
        self.flash[:] = b"\xff" * len(self.flash)
        self._event(f"erased the whole flash ({len(self.flash) // (1024 * 1024)} MB)")
        return self._resp(op)

    def _erase_region(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 8:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        addr, size = struct.unpack("<II", data)
        if addr % SECTOR or size % SECTOR or addr + size > len(self.flash):
            return self._err(op, ROM_INVALID, STUB_BAD_BLOCKSIZE)
        self._erase(addr, size)
        self._event(f"erased {size} bytes at {addr:#08x}")
        return self._resp(op)

    def _read_flash(self, op: int, data: bytes, chk: int) -> bytes:
        if len(data) != 16:
            return self._err(op, ROM_INVALID, STUB_BAD_LEN)
        addr, size, packet, unacked = struct.unpack("<IIII", data)
        if addr + size > len(self.flash) or not packet or not unacked:
            return self._err(op, ROM_INVALID, STUB_SPI_FAILED)
        self._event(f"read {size} bytes at {addr:#08x}")
        self._read = {"addr": addr, "size": size, "packet": packet, "unacked": unacked, "sent": 0, "acked": 0}
        return self._resp(op) + self._read_send()

    def _read_send(self) -> bytes:
        """Packets until `unacked` are in flight, then (all acknowledged) the data's MD5."""
        r = self._read
        assert r is not None
        out = bytearray()
        while r["sent"] < r["size"] and r["sent"] - r["acked"] < r["unacked"] * r["packet"]:
            n = min(r["packet"], r["size"] - r["sent"])
            start = r["addr"] + r["sent"]
            out += slip(bytes(self.flash[start:start + n]))
            r["sent"] += n
        if r["acked"] >= r["size"]:
            out += slip(hashlib.md5(self.flash[r["addr"]:r["addr"] + r["size"]]).digest())
            self._read = None
        return bytes(out)

    def _read_ack(self, acked: int) -> bytes:
        assert self._read is not None
        self._read["acked"] = max(self._read["acked"], acked)
        return self._read_send()


# -- on a pseudo-terminal ---------------------------------------------------------------------------


class RomPty:
    """A RomBootloader behind a pty, served from a thread: `port` is the device esptool opens.

    When the last process closes the port the flash is saved to its file (if any) and
    on_close(rom) runs; the chip stays as it was (in the ROM, or in the stub if esptool left it
    running), as a real board held in download mode does."""

    def __init__(self, rom: RomBootloader, on_close: Callable[[RomBootloader], None] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.rom = rom
        self.on_close = on_close
        self.on_event = on_event
        self._master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, before anyone opens it
        self.port = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self._master, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"rom-pty {self.port}", daemon=True)
        self.sessions = 0

    def start(self) -> RomPty:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        try:
            os.close(self._master)
        except OSError:
            pass
        self.rom.save()

    def __enter__(self) -> RomPty:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _drain_events(self) -> None:
        while self.rom.events:
            text = self.rom.events.pop(0)
            if self.on_event:
                self.on_event(text)

    def _serve(self) -> None:
        out = bytearray()
        is_open = False
        while not self._stop.is_set():
            try:
                r, w, _ = select.select([self._master], [self._master] if out else [], [], 0.05)
            except (OSError, ValueError):
                return
            if r:
                try:
                    data = os.read(self._master, 1 << 16)
                except BlockingIOError:
                    data = b""
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    # EIO: no process has the port open (never opened yet, or just closed)
                    if is_open:
                        is_open = False
                        out.clear()
                        self._closed()
                    self._stop.wait(0.02)
                    continue
                if data:
                    if not is_open:
                        is_open = True
                        self.sessions += 1
                    out += self.rom.feed(data)
                    self._drain_events()
            if out:
                try:
                    del out[:os.write(self._master, out)]
                except BlockingIOError:
                    pass
                except OSError:
                    out.clear()

    def _closed(self) -> None:
        self.rom.save()
        self._drain_events()
        if self.on_close:
            self.on_close(self.rom)


def _registry_entry(path: Path, port: str, board: str, flash: Path | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid(), "board": board, "blank": True,
                               "flash": str(flash) if flash else None}))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from meetkit_tools.paths import BUILD

    ap = argparse.ArgumentParser(prog="python -m meetkit_tools.sim.rom",
                                 description="An ESP32 in download mode (its ROM serial bootloader) on a "
                                 "pseudo-terminal: esptool and `meetkit flash-micropython --no-reset` flash it. "
                                 "Prints the pty's path on the first line.")
    ap.add_argument("--chip", choices=sorted(MODELS), default="esp32")
    ap.add_argument("--flash", type=Path, help="the flash image file (read at start, written whenever the "
                    "port is closed; created if missing); without it the flash lives in memory")
    ap.add_argument("--flash-mb", type=int, help="flash size (default 4 MB for an ESP32, 8 MB for an ESP32-S3)")
    ap.add_argument("--mac", help="the chip's MAC address, like 24:0a:c4:12:34:56")
    ap.add_argument("--register", action="store_true",
                    help="list it in `meetkit ports` (writes build/sim-boards/<pid>.json while running)")
    ap.add_argument("--board", help="the board name in that listing (default esp32-devkitc / esp32-s3-devkitc-1)")
    args = ap.parse_args(argv)

    rom = RomBootloader(args.chip, args.flash, args.flash_mb, args.mac)

    def say(text: str) -> None:
        print(f"rom: {text}", flush=True)

    def closed(r: RomBootloader) -> None:
        mp = r.micropython()
        say(f"port closed; the flash {'boots MicroPython %s (built %s)' % mp if mp else 'holds no bootable MicroPython'}"
            f"{'; saved to %s' % r.path if r.path else ''}")

    server = RomPty(rom, on_close=closed, on_event=say)
    registry = None
    if args.register:
        registry = BUILD / "sim-boards" / f"{os.getpid()}.json"
        _registry_entry(registry, server.port, args.board or ("esp32-devkitc" if args.chip == "esp32"
                                                             else "esp32-s3-devkitc-1"), args.flash)
    print(server.port, flush=True)
    mp = rom.micropython()
    say(f"{MODELS[args.chip].label} in download mode, MAC {rom.mac.hex(':')}, flash "
        f"{len(rom.flash) // (1024 * 1024)} MB{' from %s' % args.flash if args.flash else ' (in memory)'}, "
        f"{'holding MicroPython %s' % mp[0] if mp else 'no MicroPython'}")
    say("flash it with: meetkit flash-micropython --no-reset --port " + server.port + " --firmware FILE.bin")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        if registry is not None:
            registry.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
