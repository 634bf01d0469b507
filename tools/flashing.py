"""`meetkit flash-micropython`: MicroPython onto a blank (or outdated) ESP32 board, through esptool.

The file is checked before the board is touched: an ESP32 image (magic 0xE9) for a chip meetkit
has boards for, MicroPython's complete .bin (bootloader, partition table, and an app whose
esp_app_desc_t says "micropython"), for the chip the board file names. Then esptool 5 (its
Python API, in this process) connects, the chip it reports must be the file's, and the file goes
to the chip's offset (0x1000 on the ESP32, 0x0 on the ESP32-S3, as micropython.org says),
verified by MD5 and by reading MicroPython's descriptor back.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from meetkit_tools import serialport
from meetkit_tools.espimage import (
    CHIPS, PARTITION_TABLE_OFFSET, PARTITION_TABLE_SIZE, Chip, ImageError, app_desc_of, chip_for_id,
    chip_id_label, parse_image, parse_partition_table, peek_app_desc, read_flash_app,
)
from meetkit_tools.paths import BOARDS

MICROPYTHON_BUILD = {"esp32": "ESP32_GENERIC", "esp32s3": "ESP32_GENERIC_S3"}
DOWNLOAD = "https://micropython.org/download/"
HOLD_BOOT = ("hold BOOT (IO0), press and release EN (RST), release BOOT: the board now waits in its "
             "bootloader; then run this again with --no-reset")


class FlashError(Exception):
    """Something the technician must change; the message says what, without a traceback."""


@dataclass
class Firmware:
    path: Path
    data: bytes
    chip: Chip
    version: str
    build_date: str
    idf: str
    end: int  # the flash address after MicroPython's app: the flash must be at least this big

    @property
    def offset(self) -> int:
        return self.chip.bootloader_offset

    def describe(self) -> str:
        return (f"MicroPython {self.version} (built {self.build_date}, ESP-IDF {self.idf}) for {self.chip.label}, "
                f"{len(self.data)} bytes, written at {self.offset:#x}")


def check_firmware(path: Path) -> Firmware:
    """The firmware file, checked as a whole before any board is touched."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FlashError(f"{path}: no such file (download it from {DOWNLOAD})") from None
    except OSError as e:
        raise FlashError(f"{path}: cannot read it ({e.strerror})") from None
    name = path.name
    if not data:
        raise FlashError(f"{name} is empty (an interrupted download?)")
    what = {b"\x7fELF": "an ELF file (a build's firmware.elf): flash the .bin next to it",
            b"UF2\n": "a UF2 file, for boards that appear as a USB drive: download the .bin",
            b"PK\x03\x04": "a zip archive: unpack it and give the .bin inside"}.get(data[:4])
    if what is None and data.lstrip()[:1] == b"<":
        what = "a web page, not a firmware (the download link was saved instead of the file?)"
    if what is None and data[0] != 0xE9:
        what = f"not an ESP32 firmware image (it starts with {data[:4].hex(' ')}, an image with e9)"
    if what:
        raise FlashError(f"{name} is {what}")
    try:
        first = parse_image(data)
    except ImageError as e:
        raise FlashError(f"{name} is not a valid ESP32 firmware image: {e}") from None
    chip = chip_for_id(first.chip_id)
    if chip is None:
        raise FlashError(f"{name} is a firmware for {chip_id_label(first.chip_id)}; meetkit's boards have an ESP32 "
                         f"or ESP32-S3: download the {' or '.join(MICROPYTHON_BUILD.values())} build from {DOWNLOAD}")
    app_only = app_desc_of(first)
    if app_only is not None:
        raise FlashError(f"{name} is only an app ({app_only.project} {app_only.version}), without bootloader and "
                         f"partition table: use the complete .bin from {DOWNLOAD}{MICROPYTHON_BUILD[chip.name]}/")
    try:
        found = read_flash_app(b"\xff" * chip.bootloader_offset + data, chip)
    except ImageError as e:
        raise FlashError(f"{name} is not a complete firmware for {chip.label}: {e}") from None
    desc = found.desc
    if desc is None:
        raise FlashError(f"{name}: its app has no ESP-IDF app descriptor, so it is not MicroPython")
    if desc.project != "micropython":
        raise FlashError(f"{name} is {desc.project} {desc.version}, not MicroPython: download the "
                         f"{MICROPYTHON_BUILD[chip.name]} build from {DOWNLOAD}")
    return Firmware(path, data, chip, desc.version, desc.build_date, desc.idf_ver, found.end)


def board_mcu(board: str, boards_dir: Path = BOARDS) -> tuple[str, dict]:
    """The board file's "mcu" (contract 1), or a FlashError naming the boards there are."""
    path = boards_dir / f"{board}.json"
    known = sorted(p.stem for p in boards_dir.glob("*.json") if not p.name.endswith(".schema.json"))
    if not path.exists():
        raise FlashError(f"unknown board {board!r}: the boards are {', '.join(known)}")
    try:
        spec = json.loads(path.read_text())
    except ValueError as e:
        raise FlashError(f"{path}: not valid JSON ({e})") from None
    mcu = spec.get("mcu")
    if mcu not in CHIPS:
        raise FlashError(f"{path}: \"mcu\" is {mcu!r}, expected one of {', '.join(CHIPS)}")
    return mcu, spec


def check_port(port: str) -> None:
    try:
        serialport.check_port(port)
    except serialport.PortError as e:
        raise FlashError(str(e)) from None


# -- esptool's output, folded into ours ---------------------------------------------------------------

def _esptool_logger(out: TextIO, verbose: bool):
    from esptool.logger import TemplateLogger

    class Lines(TemplateLogger):
        """esptool's own lines only with --verbose; its warnings always; its progress as ours."""

        def __init__(self) -> None:
            self.shown = 0
            self.tty = out.isatty()

        def print(self, *args, **kwargs) -> None:
            text = " ".join(str(a) for a in args).strip()
            if verbose and text:
                out.write(f"  esptool: {text}\n")

        def note(self, message: str) -> None:
            if verbose:
                out.write(f"  esptool note: {message}\n")

        def warning(self, message: str) -> None:
            if "RTS/DTR" not in message:  # a pty's missing modem lines: --no-reset says it already
                out.write(f"  esptool warning: {message}\n")

        def error(self, message: str) -> None:
            out.write(f"  esptool error: {message}\n")

        def stage(self, finish: bool = False) -> None:
            pass

        def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                         bar_length: int = 30) -> None:
            pct = 100 * cur_iter // max(1, total_iters)
            if self.tty:
                out.write(f"\r  {pct:3d}% {prefix.strip()}   ")
                if cur_iter >= total_iters:
                    out.write("\n")
            elif pct >= 25 * (self.shown + 1):
                self.shown = pct // 25
                out.write(f"  {pct}%\n")
            out.flush()

        def set_verbosity(self, verbosity: str) -> None:
            pass

        def reset_progress(self) -> None:
            self.shown = 0

    return Lines()


# -- the flash ------------------------------------------------------------------------------------------


def _installed(esp, chip: Chip) -> str | None:
    """The MicroPython version a board's flash holds (bootloader, table and app descriptor), or None."""
    try:
        head = esp.read_flash(0, PARTITION_TABLE_OFFSET + PARTITION_TABLE_SIZE)
        boot = parse_image(head, chip.bootloader_offset)
        if boot.chip_id != chip.image_chip_id:
            return None
        apps = [p for p in parse_partition_table(head[PARTITION_TABLE_OFFSET:]) if p.is_app]
        if not apps:
            return None
        desc = peek_app_desc(esp.read_flash(apps[0].offset, 32 + 256))
    except ImageError:
        return None
    return desc.version if desc and desc.project == "micropython" else None


def has_modem_lines(port: str) -> bool:
    """Whether DTR and RTS can be set on `port` (a USB-serial chip: yes; a pseudo-terminal, as a
    simulated board has, or a network port: no, and esptool's reset would only warn)."""
    import errno
    import fcntl
    import os
    import struct
    import termios

    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return True   # esptool says what is wrong with the port
    try:
        fcntl.ioctl(fd, termios.TIOCMGET, struct.pack("I", 0))
    except OSError as e:
        return e.errno not in (errno.ENOTTY, errno.EINVAL)
    finally:
        os.close(fd)
    return True


def _connect_error(e: Exception, port: str, no_reset: bool) -> FlashError:
    msg = str(e)
    if "Wrong boot mode" in msg:
        return FlashError(f"the board on {port} is running its firmware, not waiting in its bootloader: {HOLD_BOOT}")
    if "Failed to connect" in msg or "No serial data" in msg or "Invalid head of packet" in msg:
        how = "" if no_reset else (" (meetkit reset it through DTR/RTS, as the USB-serial chip on most boards "
                                   "allows; this one did not respond to that)")
        return FlashError(f"no ESP32 bootloader answers on {port}{how}. Is it an ESP32 board, and is it "
                          f"powered? To put it into the bootloader by hand: {HOLD_BOOT}")
    return FlashError(f"esptool could not talk to the board on {port}: {msg}")


@dataclass
class Result:
    chip: str
    description: str
    mac: str
    flash_size: str | None
    erased: bool
    previous: str | None
    seconds: float


def flash_micropython(port: str, firmware: Path, board: str | None = None, *, reset: bool = True,
                      baud: int = 460800, erase: bool | None = None, verbose: bool = False,
                      out: TextIO = sys.stdout, connect_attempts: int | None = None,
                      boards_dir: Path = BOARDS) -> Result:
    """Flash MicroPython; raises FlashError with what to do when anything is wrong."""
    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    fw = check_firmware(firmware)
    say(f"{firmware.name}: {fw.describe()}")
    mcu = None
    if board:
        mcu, spec = board_mcu(board, boards_dir)
        if mcu != fw.chip.name:
            build = spec.get("micropython") or MICROPYTHON_BUILD[mcu]
            raise FlashError(f"{firmware.name} is for {fw.chip.label}, board {board} has an {CHIPS[mcu].label}: "
                             f"download the {build} build from {DOWNLOAD}{build}/")
    check_port(port)

    import serial
    from esp_pylib.logger import EspLog
    from esptool.cmds import attach_flash, detect_chip, detect_flash_size, erase_flash, reset_chip, run_stub, write_flash
    from esptool.logger import log
    from esptool.util import FatalError

    saved_logger = EspLog.instance
    lines = _esptool_logger(out, verbose)
    log.set_logger(lines)
    started = time.monotonic()
    esp = None
    stage = "connecting"
    # A port without DTR/RTS (a simulated board's pty) cannot reset the board: say so once, and do
    # not let esptool try (it would warn "Chip was NOT reset" beside a claim that it was).
    lines_missing = reset and not has_modem_lines(port)
    if lines_missing:
        reset = False
        say(f"{port} has no DTR/RTS lines (a simulated board, or a network port): the board is not reset "
            "through them, it must be waiting in its bootloader (as with --no-reset)")
    after = "no-reset" if not reset else "hard-reset"
    try:
        say(f"Connecting to {port}" + (" (the board must be waiting in its bootloader)" if not reset
                                        else " (resetting it into its bootloader through DTR/RTS)") + " ...")
        try:
            esp = detect_chip(port, 115200, "no-reset" if not reset else "default-reset",
                              connect_attempts=connect_attempts or (2 if not reset else 7))
        except (FatalError, OSError, serial.SerialException) as e:
            raise _connect_error(e, port, not reset) from None
        detected = chip_for_id(esp.IMAGE_CHIP_ID) if esp.IMAGE_CHIP_ID is not None else None
        description = esp.get_chip_description()
        mac = ":".join(f"{b:02x}" for b in esp.read_mac())
        if detected is None:
            raise FlashError(f"the board on {port} is an {esp.CHIP_NAME} ({description}); meetkit's boards have "
                             "an ESP32 or an ESP32-S3")
        if mcu and detected.name != mcu:
            raise FlashError(f"the board on {port} is an {detected.label} ({description}), board file {board} "
                             f"says {CHIPS[mcu].label}: wrong --board, or wrong port? Nothing was written")
        if detected != fw.chip:
            raise FlashError(f"chip mismatch: the board on {port} is an {detected.label} ({description}), "
                             f"{firmware.name} is for {fw.chip.label}. Nothing was written. Download the "
                             f"{MICROPYTHON_BUILD[detected.name]} build from {DOWNLOAD}"
                             f"{MICROPYTHON_BUILD[detected.name]}/")
        stage = "starting esptool's flasher stub"
        esp = run_stub(esp)
        if baud > 115200:
            esp.change_baud(baud)
        attach_flash(esp)
        flash_size = detect_flash_size(esp)
        say(f"Board: {description}, MAC {mac}, flash {flash_size or 'of unknown size'}"
            + (f" (board file {board}: {CHIPS[mcu].label}, matches)" if mcu else ""))
        if flash_size:
            size = int(flash_size[:-2]) * (1024 if flash_size.endswith("KB") else 1024 * 1024)
            if fw.end > size:
                raise FlashError(f"{firmware.name} needs {fw.end} bytes of flash, the board has {flash_size}. "
                                 "Nothing was written")
        previous = _installed(esp, fw.chip)
        if erase is None:
            erase = previous is None
            say(f"The board holds MicroPython {previous}: writing over it; its filesystem (the node's files) stays "
                "(--erase wipes it)" if previous else
                "No MicroPython on the board: erasing the whole flash first, as micropython.org advises")
        if erase:
            stage = "erasing the flash"
            t = time.monotonic()
            say("Erasing the flash (up to a minute on a real board) ...")
            erase_flash(esp)
            say(f"  erased in {time.monotonic() - t:.1f} s")
        stage = "writing"
        t = time.monotonic()
        say(f"Writing {len(fw.data)} bytes at {fw.offset:#x} ...")
        lines.reset_progress()
        write_flash(esp, [(fw.offset, fw.data)], flash_size="keep")
        say(f"  written and verified (the flash's MD5 matches the file) in {time.monotonic() - t:.1f} s")
        now = _installed(esp, fw.chip)
        if now != fw.version:
            raise FlashError(f"after writing, the board's flash reads as {now or 'no MicroPython'}, "
                             f"not MicroPython {fw.version}: run this again; if it fails twice the flash chip "
                             "may be faulty")
        say(f"The board now holds MicroPython {now}")
        stage = "done"
        reset_chip(esp, after)
        if reset:
            say("Reset the board through RTS: MicroPython is starting")
        elif lines_missing:
            say("Not reset (no DTR/RTS lines): a simulated board starts MicroPython once this program lets go "
                "of the port; a real one: press EN (RST)")
        else:
            say("The board still waits in its bootloader: press EN (RST) to start MicroPython")
        say(f"Next: meetkit provision --port {port} --board {board or 'BOARD'} --node-id ID")
        return Result(detected.name, description, mac, flash_size, erase, previous, time.monotonic() - started)
    except FlashError:
        if reset and esp is not None and stage in ("connecting", "starting esptool's flasher stub"):
            try:  # nothing was written: back to the firmware it had
                esp.hard_reset()
            except Exception:
                pass
        raise
    except (FatalError, serial.SerialException, OSError) as e:
        half = (" The flash may hold half a firmware: run this again (on a board without auto-reset: "
                f"{HOLD_BOOT})") if stage in ("erasing the flash", "writing") else ""
        raise FlashError(f"esptool failed while {stage} on {port}: {e}.{half}") from None
    finally:
        if esp is not None:
            try:
                esp._port.close()
            except Exception:
                pass
        EspLog.instance = saved_logger
