"""`meetkit ports`: which serial ports may be an ESP32 board, and which board files fit each.

A board shows up as the USB serial chip on it (a CP210x, CH340 or CH9102 bridge, or the
ESP32-S3's own USB-Serial/JTAG), so the USB VID:PID pyserial reports says what the chip is and,
through the "usb" lists of boards/*.json, which boards carry it. Simulated boards (contract 4:
build/sim-boards/<pid>.json, written by each running `meetkit sim board`) are listed too, those
whose process is gone are skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from serial.tools.list_ports_common import ListPortInfo

from meetkit_tools.paths import BOARDS, BUILD

ESPRESSIF_VID = 0x303A


@dataclass(frozen=True)
class UsbChip:
    name: str
    note: str = ""
    mcu: str | None = None  # the chip itself, when the USB device is the ESP32's own


# USB serial chips found on ESP32 boards (VID, PID).
USB_CHIPS: dict[tuple[int, int], UsbChip] = {
    (0x10C4, 0xEA60): UsbChip("CP210x USB-UART (Silicon Labs CP2102/CP2104/CP2102N)"),
    (0x10C4, 0xEA70): UsbChip("CP2105 dual USB-UART (Silicon Labs)"),
    (0x1A86, 0x7523): UsbChip("CH340 USB-UART (WCH)"),
    (0x1A86, 0x55D4): UsbChip("CH9102 USB-UART (WCH)"),
    (0x1A86, 0x55D3): UsbChip("CH343 USB-UART (WCH)"),
    (0x0403, 0x6001): UsbChip("FT232R USB-UART (FTDI)"),
    (0x0403, 0x6010): UsbChip("FT2232 USB-UART/JTAG (FTDI)", "ESP-Prog, ESP-WROVER-KIT"),
    (0x0403, 0x6015): UsbChip("FT231X USB-UART (FTDI)"),
    (ESPRESSIF_VID, 0x1001): UsbChip("ESP32 built-in USB-Serial/JTAG",
                                     "ESP32-S3 (or C3/C6) 'USB' port: esptool resets it, no BOOT button needed",
                                     mcu="esp32s3"),
    # MicroPython's own USB serial (TinyUSB, Espressif's default VID:PID) once it runs on the S3's USB
    # port; from MicroPython's sources, not seen on a board here.
    (ESPRESSIF_VID, 0x4001): UsbChip("MicroPython's USB serial on an ESP32-S3 (TinyUSB)",
                                     "the S3's 'USB' port with MicroPython running", mcu="esp32s3"),
    (ESPRESSIF_VID, 0x0009): UsbChip("ESP32-S3 USB-OTG in download mode", "flash it as it is", mcu="esp32s3"),
    (ESPRESSIF_VID, 0x0002): UsbChip("ESP32-S2 USB-OTG in download mode", "meetkit has no ESP32-S2 board",
                                     mcu="esp32s2"),
}


@dataclass
class Port:
    port: str
    usb_id: str | None  # "10c4:ea60"
    usb_chip: str | None
    candidate: bool  # may be an ESP32 board
    boards: list[str] = field(default_factory=list)  # board files whose "usb" names this chip
    serial_number: str | None = None
    description: str | None = None
    manufacturer: str | None = None
    location: str | None = None
    note: str = ""
    access: bool = True  # this user may open it
    simulated: bool = False
    sim: dict | None = None  # the registry entry of a simulated board


def usb_id(vid: int, pid: int) -> str:
    return f"{vid:04x}:{pid:04x}"


def board_usb_index(boards_dir: Path = BOARDS) -> dict[str, list[str]]:
    """"vid:pid" -> board names, from every board file's "usb" list (contract 1)."""
    index: dict[str, list[str]] = {}
    for path in sorted(boards_dir.glob("*.json")):
        if path.name.endswith(".schema.json"):
            continue
        try:
            board = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a broken board file is `meetkit provision`'s to report, not ours
        usb = board.get("usb") if isinstance(board, dict) else None
        for vidpid in usb if isinstance(usb, list) else []:
            if isinstance(vidpid, str):
                index.setdefault(vidpid.lower(), []).append(board.get("board") or path.stem)
    return index


def classify(info: ListPortInfo, usb_index: dict[str, list[str]]) -> Port:
    """What one port pyserial lists may be."""
    access = not info.device.startswith("/dev/") or os.access(info.device, os.R_OK | os.W_OK)
    if info.vid is None or info.pid is None:
        return Port(info.device, None, None, False, description=_text(info.description),
                    note="a built-in serial port, not USB", access=access)
    vidpid = usb_id(info.vid, info.pid)
    chip = USB_CHIPS.get((info.vid, info.pid))
    boards = usb_index.get(vidpid, [])
    if chip is None and info.vid == ESPRESSIF_VID:
        chip = UsbChip("Espressif native USB", "an ESP32-S2/S3 app's own USB port (MicroPython's REPL on some boards)")
    if chip is None and boards:
        chip = UsbChip("USB serial chip named by a board file")
    if chip is None:
        return Port(info.device, vidpid, None, False, serial_number=info.serial_number,
                    description=_text(info.description), manufacturer=info.manufacturer,
                    location=info.location, note="not a USB serial chip of a known ESP32 board", access=access)
    return Port(info.device, vidpid, chip.name, True, boards, info.serial_number, _text(info.description),
                info.manufacturer, info.location, chip.note, access)


def _text(s: str | None) -> str | None:
    return None if s in (None, "n/a") else s


def sim_board_dir() -> Path:
    return Path(os.environ.get("MEETKIT_SIM_BOARDS") or BUILD / "sim-boards")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def simulated_boards(directory: Path | None = None) -> tuple[list[Port], int]:
    """The running simulated boards, and how many registry files were stale (process gone)."""
    directory = directory or sim_board_dir()
    found, stale = [], 0
    for path in sorted(directory.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            pid, port = int(entry["pid"]), str(entry["port"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not one of ours
        if not _alive(pid) or not os.path.exists(port):
            stale += 1
            continue
        blank = bool(entry.get("blank"))
        what = "ROM bootloader, no MicroPython: flash-micropython --no-reset" if blank else "MicroPython"
        found.append(Port(port, None, "simulated board", True, [entry["board"]] if entry.get("board") else [],
                          description=f"meetkit sim board, pid {pid}", note=what, simulated=True, sim=entry))
    return found, stale


def list_ports(infos: Iterable[ListPortInfo] | None = None, boards_dir: Path = BOARDS,
               sim_dir: Path | None = None) -> tuple[list[Port], int]:
    """Every port: ESP32 candidates first (USB, then simulated), the others after."""
    if infos is None:
        from serial.tools.list_ports import comports

        infos = comports()
    index = board_usb_index(boards_dir)
    ports = sorted((classify(i, index) for i in infos), key=lambda p: (not p.candidate, p.port))
    sims, stale = simulated_boards(sim_dir)
    real = [p for p in ports if p.candidate]
    return real + sims + [p for p in ports if not p.candidate], stale


def as_json(ports: list[Port], stale: int) -> str:
    return json.dumps({"ports": [asdict(p) for p in ports], "stale_sim_entries": stale}, indent=2)


def as_table(ports: list[Port], stale: int) -> str:
    candidates = [p for p in ports if p.candidate]
    others = [p for p in ports if not p.candidate]
    lines = []
    if candidates:
        rows = [("PORT", "USB ID", "CHIP", "BOARDS", "SERIAL")]
        for p in candidates:
            rows.append((p.port, p.usb_id or "-", p.usb_chip or "-", ", ".join(p.boards) or "(no board file names it)",
                         p.serial_number or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for p in candidates:
            notes = [p.note] if p.note else []
            if not p.access:
                notes.append("no permission to open it: add yourself to the 'dialout' group "
                             "(sudo usermod -aG dialout $USER), then log in again")
            for n in notes:
                lines.append(f"  {p.port}: {n}")
    else:
        lines.append("No ESP32 board found. Plug it in with a data cable (some USB cables only charge); "
                     "`dmesg | tail` shows whether Linux saw a USB serial device.")
    if others:
        lines.append("Not ESP32 boards: " + "; ".join(f"{p.port} ({p.usb_id + ', ' if p.usb_id else ''}{p.note})"
                                                     for p in others))
    if stale:
        lines.append(f"({stale} simulated board{'s' if stale != 1 else ''} in {sim_board_dir()} no longer "
                     "running, skipped)")
    return "\n".join(lines)
