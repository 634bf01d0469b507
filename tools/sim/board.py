"""A simulated board on a serial port: the simulator behind a pseudo-terminal, for real mpremote.

    with SimBoard(workdir, board="esp32-devkitc") as b:
        subprocess.run(["mpremote", "connect", b.port, "fs", "ls"])

`meetkit sim board` runs one from the command line. The board starts as a fresh MicroPython
board (an empty littlefs flash image) or from an image given; what is copied to it stays in the
image. The bridge here owns the pty and runs the MicroPython unix port (`micropython -i
-m simboot`, on a pty of its own) with the simulated hardware, and adds what the unix port does
not do as an ESP32 does (docs/simulator.md, "A simulated board on a serial port"):
  - a soft reset (Ctrl-D on an empty line) ends the unix process: the bridge prints
    "MPY: soft reboot" and starts it again: boot.py and main.py from the friendly REPL, boot.py
    only from the raw REPL, where it then stays (as mpremote expects);
  - Ctrl-C stops running code only as SIGINT, which kills the process at an idle prompt: the
    bridge sends SIGINT while code runs and passes the byte on at a prompt;
  - a hard reset (machine.reset(), the watchdog) ends the process with state.json: started again
    with boot.py and main.py, the RTC and NVS carried over (runner.SimNode's restart);
  - output nobody reads is dropped, as a UART without a listener drops it.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import signal
import subprocess
import threading
import time
import tty
import zlib
from pathlib import Path
from typing import Any

from meetkit_tools.paths import BUILD
from meetkit_tools.sim.runner import EXIT_RESET, NodeSpec, SimNode, load_scenario

REGISTRY = BUILD / "sim-boards"
LOCK = "board.lock"   # in the board's folder while it runs: "<pid> <port>"
FRIENDLY_PROMPTS = (b">>> ", b"... ")
RAW_PROMPTS = (b"raw REPL; CTRL-B to exit\r\n>", b"\x04>")
STARTUP_S = 0.3   # the unix port installs its SIGINT handler once it runs the script


class BoardInUse(Exception):
    """The board's folder (its flash, console and state) belongs to a board that is running."""


_held: set[Path] = set()   # the folders this process's boards hold


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: alive
        return True
    return True


def in_use(workdir: Path) -> str | None:
    """Who runs a board in `workdir` ("pid 1234, /dev/pts/3"), or None: no running board holds it."""
    folder = Path(workdir).absolute()
    try:
        pid_text, _, port = (folder / LOCK).read_text().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid == os.getpid() and folder not in _held or not _alive(pid):
        return None   # left by a board that ended without stopping (killed): stale
    return f"pid {pid}" + (f", {port.strip()}" if port.strip() else "")


def default_chip_id(workdir: Path) -> str:
    """A chip id (and MAC) of the board's own, from its folder: distinct for boards side by side,
    the same for the same board run again (its flash persists there too)."""
    return "240ac4" + f"{zlib.crc32(str(Path(workdir).absolute()).encode()) & 0xFFFFFF:06x}"


class _Node(SimNode):
    """The simulator's node, staged as a board fresh from MicroPython: nothing on its flash."""

    micropython: str | None = None   # "1.24.1": the MicroPython flashed onto the board (a --blank one)

    def stage_empty(self) -> None:
        self.flash.mkdir(parents=True, exist_ok=True)
        for p in self.flash.iterdir():
            if p.is_file():
                p.unlink()

    def write_sim(self, repl: str, t_ms: int, rtc: Any, cause: str, st: dict[str, Any]) -> None:
        self._write_sim(t_ms=t_ms, rtc=rtc, cause=cause, nvs=st.get("nvs"), rtc_memory=st.get("rtc_memory"),
                        flash=st.get("stats", {}))
        sim = json.loads(self.sim_json.read_text())
        sim["repl"] = repl
        if self.micropython:   # the release flashed (os.uname() says it), not the unix port's own
            sim["micropython"] = self.micropython
        self.sim_json.write_text(json.dumps(sim))


class SimBoard:
    def __init__(self, workdir: Path, board: str = "esp32-devkitc", flash: Path | None = None,
                 flash_kb: int = 2048, speed: float = 1.0, scenario: str = "busy-road",
                 wifi: tuple[str, str] = ("meetkit-lab", "simulated"), heapsize: str | None = "112K",
                 seed: int = 1, chip_id: str = "", blank: bool = False) -> None:
        self.workdir = Path(workdir)
        self.chip_id = chip_id or default_chip_id(self.workdir)
        spec = NodeSpec(node_id=f"board-{board}", scenario=load_scenario(scenario), workdir=self.workdir,
                        board=board, until_s=None, speed=speed, heapsize=heapsize, seed=seed, chip_id=self.chip_id,
                        flash_kb=flash_kb, wifi_ap=wifi)
        self.node = _Node(spec)
        if flash is not None:
            self.node.image = Path(flash).absolute()
        self.board = board
        self.port = ""
        self.console_log = self.workdir / "console.log"
        self.version_file = self.workdir / "micropython.version"   # what was flashed, kept with the flash
        self.resets = 0
        self._master = -1
        self._proc: subprocess.Popen | None = None
        self._inner = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: Path | None = None
        self._soft_pending = False
        # A blank board (no MicroPython): its pty speaks the ROM bootloader's protocol until a
        # MicroPython image is flashed and the flasher lets go of the port (tools/sim/rom.py).
        self.blank = blank
        self._rom: Any = None
        self._rom_open = False

    # -- life --------------------------------------------------------------------------------------
    def start(self) -> "SimBoard":
        """Raises BoardInUse, touching nothing, when a running board holds the folder or the flash image."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            return self._start()
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        """The folder is this board's while it runs: a second board there (a `--blank` one would
        wipe the flash) is refused while the first one's process lives."""
        folder = self.workdir.absolute()
        for attempt in range(2):
            try:
                fd = os.open(folder / LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                who = in_use(folder)
                if who is not None or attempt:
                    raise BoardInUse(f"{folder} is in use by a running simulated board ({who or 'starting'}): "
                                     "stop that board first (Ctrl-C), or give this one another --name "
                                     "(or --workdir)") from None
                (folder / LOCK).unlink(missing_ok=True)   # stale: its board was killed
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} ")
            _held.add(folder)
            self._locked = True
            break
        image = str(self.node.image.absolute())
        for entry in REGISTRY.glob("*.json"):
            try:
                other = json.loads(entry.read_text())
            except (OSError, ValueError):
                continue
            if other.get("flash") == image and _alive(int(other.get("pid", 0))) and \
                    (other.get("pid") != os.getpid() or other.get("port") != self.port):
                raise BoardInUse(f"the flash image {image} is in use by the simulated board on {other.get('port')} "
                                 f"(pid {other.get('pid')}): stop that board first (Ctrl-C), or give this one "
                                 "another --flash")

    def _unlock(self) -> None:
        if getattr(self, "_locked", False):
            self._locked = False
            _held.discard(self.workdir.absolute())
            (self.workdir / LOCK).unlink(missing_ok=True)

    def _start(self) -> "SimBoard":
        self.node.stage_empty()
        self.node.state_file.unlink(missing_ok=True)
        self._master, slave = pty.openpty()
        tty.setraw(slave)   # no \n -> \r\n on the way out: mpremote counts bytes
        os.set_blocking(self._master, False)
        self.port = os.ttyname(slave)
        # Not held open here: a USB port is not held by the board, and `meetkit provision` names
        # the processes that hold a port as the ones keeping it busy. Without a client the
        # master reads EIO, and output is dropped as a UART drops it.
        os.close(slave)
        self._quiet_until = 0.0
        self._log = self.console_log.open("ab")
        self._t_ms = 0
        if self.blank:
            from meetkit_tools.paths import BOARDS
            from meetkit_tools.sim.rom import RomBootloader

            chip = json.loads((BOARDS / f"{self.board}.json").read_text()).get("mcu", "esp32")
            self._rom = RomBootloader(chip, self.workdir / "rom-flash.bin", mac=self.chip_id)
        else:
            try:
                self.node.micropython = self.version_file.read_text().strip() or None
            except OSError:
                self.node.micropython = None
            self._spawn("board", 0, None, "power_on", {})
        self._thread = threading.Thread(target=self._pump, name=f"simboard-{self.port}", daemon=True)
        self._thread.start()
        REGISTRY.mkdir(parents=True, exist_ok=True)
        self._registry = REGISTRY / f"{os.getpid()}-{Path(self.port).name}.json"
        self._register()
        (self.workdir / LOCK).write_text(f"{os.getpid()} {self.port}")
        return self

    def _register(self) -> None:
        if self._registry:
            self._registry.write_text(json.dumps({"port": self.port, "pid": os.getpid(), "board": self.board,
                                                  "blank": self._rom is not None, "flash": str(self.node.image)}))

    def stop(self) -> None:
        """Power off: the process ends at once (the image is as a power cut leaves it)."""
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        self._kill()
        if self._master >= 0:
            os.close(self._master)
        self._master = -1
        if self._registry:
            self._registry.unlink(missing_ok=True)
        if getattr(self, "_log", None):
            self._log.close()
        self._unlock()

    def __enter__(self) -> "SimBoard":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    # -- the interpreter ---------------------------------------------------------------------------
    def _spawn(self, repl: str, t_ms: int, rtc: Any, cause: str, st: dict[str, Any]) -> None:
        self.node.write_sim(repl, t_ms, rtc, cause, st)
        self._t_ms, self._t0 = t_ms, time.monotonic()
        inner, inner_slave = pty.openpty()
        tty.setraw(inner_slave)
        # -i: after simboot (boot.py, main.py) the REPL
        self._proc = self.node.spawn("-i", stdin=inner_slave, stdout=inner_slave, stderr=inner_slave,
                                     start_new_session=True)
        os.close(inner_slave)
        os.set_blocking(inner, False)
        self._inner = inner
        self._want_raw = repl == "raw"
        self._running = True     # boot.py and main.py run until a prompt shows
        self._mode = "friendly"
        self._line = b""
        self._tail = b""
        self._queue = b""        # input that arrived while the board restarts
        self._started = time.monotonic()
        self._intr_at = 0.0      # a Ctrl-C to deliver as SIGINT at this time

    def _kill(self) -> None:
        p = self._proc
        if p and p.poll() is None:
            p.kill()
            p.wait(5)
        if self._inner >= 0:
            os.close(self._inner)
            self._inner = -1

    def _restart(self, code: int) -> None:
        """The process ended: a soft reset, a hard reset, or a crash; the board starts again."""
        soft = self._soft_pending
        self._soft_pending = False
        self._kill()
        st = self.node._read_state() if code == EXIT_RESET else {}
        self.node.state_file.unlink(missing_ok=True)
        if code == EXIT_RESET and "t_ms" in st:
            self.resets += 1
            self._out(b"\r\nets Jul 29 2019 12:21:46\r\n\r\nrst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n")
            self._spawn("board", st["t_ms"], st.get("rtc"), st.get("cause", "soft"), st)
            return
        t_ms = self._t_ms + int((time.monotonic() - self._t0) * 1000 * (self.node.spec.speed or 1))
        if soft:
            self._out(b"MPY: soft reboot\r\n")
            self._spawn("raw" if self._mode == "raw" else "board", t_ms, None, "soft", {})
        elif code == -signal.SIGINT:   # Ctrl-C at the very start: as if it stopped main.py
            self._spawn("raw", t_ms, None, "soft", {})
            self._want_raw = False
        else:
            self._out(f"\r\n[simulator: the board's process ended ({code}); power on again]\r\n".encode())
            self._spawn("board", t_ms, None, "power_on", {})

    # -- the bytes ---------------------------------------------------------------------------------
    def _out(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()
        try:
            os.write(self._master, data)
        except OSError as e:  # nobody reads the port: a UART drops it
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise

    def _from_board(self, data: bytes) -> None:
        self._out(data)
        self._tail = (self._tail + data)[-64:]
        if self._tail.endswith(FRIENDLY_PROMPTS):
            self._running, self._mode, self._line = False, "friendly", b""
            if self._want_raw:   # a soft reset in raw mode comes back in raw mode
                self._want_raw = False
                os.write(self._inner, b"\x01")
                self._running = True
        elif self._tail.endswith(RAW_PROMPTS):
            self._running, self._mode, self._line = False, "raw", b""
            if self._queue:
                q, self._queue = self._queue, b""
                self._from_client(q)

    def _from_client(self, data: bytes) -> None:
        out = bytearray()
        for b in data:
            c = bytes([b])
            if self._soft_pending or self._inner < 0:
                self._queue += c
                continue
            if c == b"\x03":
                if self._running:
                    # The interpreter takes SIGINT as KeyboardInterrupt only once it runs code; in
                    # its first moments the signal would kill it: sent from the pump when due.
                    self._intr_at = max(time.monotonic(), self._started + STARTUP_S)
                    continue
                self._line = b""
            elif self._running:
                pass   # input to running code (input(), raw-paste data)
            elif c == b"\x04":
                if not self._line:
                    self._soft_pending = True   # the unix port exits: a soft reset
                elif self._mode == "raw":
                    self._running = True
                self._line = b""
            elif c in (b"\r", b"\n"):
                if self._mode == "friendly" and self._line:
                    self._running = True
                self._line = b"" if self._mode == "friendly" else self._line + c
            elif c == b"\x01" and self._mode == "friendly":
                self._line = b""
            elif c == b"\x02" and self._mode == "raw":
                self._line = b""
            elif c == b"\x05" and self._mode == "raw":
                self._line += c   # raw-paste: the code follows, ended by Ctrl-D
            else:
                self._line += c
            out += c
        if out:
            self._write_inner(bytes(out))

    def _write_inner(self, data: bytes) -> None:
        while data:
            try:
                n = os.write(self._inner, data)
                data = data[n:]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                return

    def _pump_rom(self) -> None:
        try:
            ready, _, _ = select.select([self._master], [], [], 0.05)
        except (OSError, ValueError):
            return
        if not ready:
            return
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:   # EIO: nobody has the port open
            if self._rom_open:
                self._rom_open = False
                self._rom.save()
                if self._rom.micropython():
                    self._boot_flashed()
            self._stop.wait(0.02)
            return
        if data:
            self._rom_open = True
            out = memoryview(self._rom.feed(data))
            while out and not self._stop.is_set():   # SLIP replies (read_flash is large): all of them
                try:
                    out = out[os.write(self._master, out):]
                except BlockingIOError:
                    self._stop.wait(0.001)
                except OSError:
                    break

    def _boot_flashed(self) -> None:
        """MicroPython was flashed and the flasher let go: the board boots it (as after EN), with
        the empty filesystem a fresh MicroPython makes."""
        version = self._rom.micropython()
        self._rom = None
        self.node.image.unlink(missing_ok=True)
        self.node.micropython = version[0].lstrip("v")
        self.version_file.write_text(self.node.micropython + "\n")
        self._register()
        self._log.write(f"[simulator: MicroPython {version[0]} flashed; the board boots it]\n".encode())
        self._spawn("board", 0, None, "power_on", {})

    def _pump(self) -> None:
        while not self._stop.is_set():
            if self._rom is not None:
                self._pump_rom()
                continue
            listen = time.monotonic() >= self._quiet_until   # no client: look again in a moment
            fds = ([self._master] if listen else []) + ([self._inner] if self._inner >= 0 else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.1)
            except (OSError, ValueError):
                return
            if self._inner in ready:
                try:
                    data = os.read(self._inner, 65536)
                except OSError:
                    data = b""
                if data:
                    self._from_board(data)
            if self._master in ready:
                try:
                    data = os.read(self._master, 65536)
                except BlockingIOError:
                    data = b""
                except OSError:   # EIO: nobody has the port open
                    data = b""
                    self._quiet_until = time.monotonic() + 0.02
                if data:
                    self._from_client(data)
            p = self._proc
            if self._intr_at and time.monotonic() >= self._intr_at:
                self._intr_at = 0.0
                if self._running and p is not None and p.poll() is None:
                    p.send_signal(signal.SIGINT)
            if p is not None and p.poll() is not None:
                # what the process wrote before it ended
                while self._inner >= 0:
                    try:
                        data = os.read(self._inner, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    self._from_board(data)
                self._restart(p.returncode)
