"""Talking to a board on a serial port: through mpremote's own transport (raw REPL, raw-paste),
with every failure turned into a message a technician can act on.

    link = BoardLink.open("/dev/ttyUSB0")     # BoardError: no such port, busy, no MicroPython, ...
    info = link.probe()                       # chip, .mpy target, free flash, the installed app
    link.put(local, "new/lib/node.mpy")
    link.reset(); for line in link.console(deadline): ...
"""

from __future__ import annotations

import ast
import contextlib
import errno
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import serial
from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

from meetkit_tools import serialport

BAUD = 115200
# esptool's SYNC command: a board held in its ROM bootloader (download mode) answers it.
ROM_SYNC = b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32 + b"\xc0"
ROM_BANNER = (b"waiting for download", b"ets ", b"ESP-ROM", b"invalid header", b"rst:0x")


class BoardError(Exception):
    """Something about the board or its port; the message says what to do."""


def _flash_first(port: str) -> str:
    return (f"no MicroPython on the board at {port}: the ESP32's ROM bootloader answers. Flash MicroPython "
            f"first: meetkit flash-micropython --port {port} --firmware <MicroPython .bin for the board>")


def check_port(port: str) -> None:
    try:
        serialport.check_port(port)
    except serialport.PortError as e:
        raise BoardError(str(e)) from None


@dataclass
class BoardInfo:
    machine: str          # os.uname().machine, e.g. "Generic ESP32 module with ESP32"
    release: str
    mpy: int              # sys.implementation._mpy
    block_size: int
    blocks: int
    free_blocks: int
    unique_id: str
    app: dict[str, Any] | None      # /app.json of the installed meetkit app
    config: dict[str, Any] | None   # /config.json (secrets stay in memory, never printed)
    files: list[str]                # the root's entries

    @property
    def free_bytes(self) -> int:
        return self.free_blocks * self.block_size

    @property
    def mcu(self) -> str | None:
        m = self.machine.upper().replace("-", "")
        for chip in ("ESP32S3", "ESP32S2", "ESP32C3", "ESP32C6", "ESP32"):
            if chip in m:
                return chip.lower()
        return None


PROBE = """
import os, sys, json, machine
try:
    _u = os.uname()
    _m, _r = _u.machine, _u.release
except AttributeError:
    _m, _r = sys.implementation._machine, '.'.join(str(v) for v in sys.implementation.version[:3])
def _j(p):
    try:
        with open(p) as f:
            return json.load(f)
    except Exception:
        return None
_s = os.statvfs('/')
print(repr({'machine': _m, 'release': _r, 'mpy': sys.implementation._mpy, 'block_size': _s[0],
            'blocks': _s[2], 'free_blocks': _s[3], 'unique_id': machine.unique_id().hex(),
            'app': _j('/app.json'), 'config': _j('/config.json'), 'files': os.listdir('/')}))
"""


class BoardLink:
    def __init__(self, port: str, transport: SerialTransport) -> None:
        self.port = port
        self.t = transport

    @classmethod
    def open(cls, port: str, timeout_s: float = 5) -> "BoardLink":
        """Connect and enter the raw REPL with a soft reset: the node's loop stops and its heap is
        freed (on the board only boot.py runs in raw REPL mode, not main.py)."""
        check_port(port)
        try:
            t = SerialTransport(port, baudrate=BAUD, timeout=1)  # a silent port must not block a read for ever
        except TransportError as e:
            raise BoardError(f"{port}: {e}") from None
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):  # mpremote prints what it got when it fails
                t.enter_raw_repl(soft_reset=True, timeout_overall=timeout_s)
        except (TransportError, serial.SerialException, OSError) as e:
            heard = said.getvalue()
            rom = any(b.decode() in heard for b in ROM_BANNER) or cls._rom_answers(t)
            with contextlib.suppress(Exception):
                t.close()
            if rom:
                raise BoardError(_flash_first(port)) from None
            if isinstance(e, (serial.SerialException, OSError)):
                raise BoardError(f"{port}: the connection broke: {e}") from None
            if heard.strip() in ("", "b''"):
                raise BoardError(f"the board at {port} does not answer: check the USB cable (a charge-only "
                                 "cable carries no data), press the board's EN/RST button and try again") from None
            raise BoardError(f"the board at {port} does not answer as MicroPython does (it said {heard.strip()[:80]}): "
                             "press EN/RST and try again; if it persists, flash MicroPython "
                             "(meetkit flash-micropython)") from None
        return cls(port, t)

    @staticmethod
    def _rom_answers(t: SerialTransport) -> bool:
        try:
            t.serial.timeout = 0.1   # mpremote's port blocks on read
            t.serial.reset_input_buffer()
            t.serial.write(ROM_SYNC)
            end = time.monotonic() + 0.6
            got = b""
            while time.monotonic() < end:
                got += t.serial.read(t.serial.in_waiting or 1)
                if b"\xc0\x01\x08" in got:
                    return True
        except (serial.SerialException, OSError):
            pass
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.t.in_raw_repl:
                self.t.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.t.close()

    # -- commands --------------------------------------------------------------------------------
    def exec(self, code: str, what: str) -> str:
        try:
            return self.t.exec(code).decode(errors="replace")
        except TransportExecError as e:
            raise BoardError(f"{what}: the board said: {e.error_output.strip().splitlines()[-1]}") from None
        except (TransportError, serial.SerialException, OSError) as e:
            raise BoardError(f"{what}: the connection to {self.port} broke: {e}") from None

    def probe(self) -> BoardInfo:
        out = self.exec(PROBE, "reading the board")
        try:
            d = ast.literal_eval(out.strip().splitlines()[-1])
        except (ValueError, SyntaxError, IndexError):
            raise BoardError(f"reading the board: unexpected answer {out[:80]!r}") from None
        return BoardInfo(**d)

    def remove_tree(self, path: str) -> None:
        self.exec(RMTREE + f"_rm({path!r})", f"removing {path}")

    def mkdir(self, path: str) -> None:
        self.exec(f"import os\ntry:\n os.mkdir({path!r})\nexcept OSError:\n pass", f"making {path}")

    def put(self, local: Path, dest: str) -> None:
        try:
            self.t.fs_writefile(dest, local.read_bytes(), chunk_size=1024)
        except OSError as e:  # mpremote turns the board's OSError into ours
            if e.errno == errno.ENOSPC:
                raise FlashFull(f"writing {dest} failed") from None
            raise BoardError(f"writing {dest}: {os.strerror(e.errno) if e.errno else e}") from None
        except TransportExecError as e:
            raise BoardError(f"writing {dest}: {e.error_output.strip()[-120:]}") from None
        except (TransportError, serial.SerialException) as e:
            raise BoardError(f"writing {dest}: the connection to {self.port} broke: {e}") from None

    def sha256(self, path: str) -> str:
        try:
            return self.t.fs_hashfile(path, "sha256", chunk_size=512).hex()
        except OSError as e:
            raise BoardError(f"checking {path}: {os.strerror(e.errno) if e.errno else e}") from None
        except (TransportError, serial.SerialException) as e:
            raise BoardError(f"checking {path}: the connection to {self.port} broke: {e}") from None

    def reset(self) -> None:
        """A hard reset, as the EN button: the node starts from boot.py."""
        try:
            self.t.exec_raw_no_follow("import machine\nmachine.reset()")
        except (TransportError, serial.SerialException, OSError) as e:
            raise BoardError(f"resetting the board: {e}") from None
        self.t.in_raw_repl = False

    def console(self, deadline: float) -> Iterator[str]:
        """The board's console lines until `deadline` (time.monotonic()). A port that goes away on
        reset (the ESP32-S3's own USB) is opened again when it comes back."""
        s: Any = self.t.serial
        buf = b""
        while time.monotonic() < deadline:
            try:
                if s is None:
                    s = serial.serial_for_url(self.port, BAUD, timeout=0.2, exclusive=True)
                    self.t.serial = s
                chunk = s.read(s.in_waiting or 1)
            except (serial.SerialException, OSError):
                with contextlib.suppress(Exception):
                    s.close()
                s = None
                time.sleep(0.3)
                continue
            if not chunk:
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.rstrip(b"\r").decode(errors="replace")


class FlashFull(BoardError):
    """The flash has no room for the new app beside the old one."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the flash is full: {what}")


RMTREE = """
import os
def _rm(p):
    try:
        st = os.stat(p)
    except OSError:
        return
    if st[0] & 0x4000:
        for e in os.listdir(p):
            _rm(p + '/' + e)
        os.rmdir(p)
    else:
        os.remove(p)
"""
