"""The flash: a littlefs image that persists across resets and power cuts, torn writes at a power
cut, the RTC lost at a power cut but not at a reset, wear counters, reading it from the host."""

from __future__ import annotations

import json
import random
import re
import textwrap
from pathlib import Path

import pytest

from meetkit_tools.dev.micropython import SIM_MPY, run_mpy
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.sim.runner import SIM_HEAP_RESERVE, NodeSpec, SimNode
from tests.sim.harness import SCENARIO, run_sim

EPOCH_2000 = 946684800

# Versioned files: "<name> <version> <length>\n" and a body that follows from the three, so any
# mix of two versions, a torn block or a short file is caught. An empty file is version 0: littlefs
# commits a new file at open() and its content at close(). Shared by the programs below.
VERSIONED = """
def body(name, v, n):
    unit = b"%s.%d;" % (name, v)
    return (unit * (n // len(unit) + 1))[:n]


def check(data, name):
    if not data:
        return 0
    head, _, b = data.partition(b"\\n")
    try:
        n, v, ln = head.split()
        v, ln = int(v), int(ln)
    except ValueError:
        return -1
    return v if n == name.encode() and b == body(n.decode(), v, ln) else -1


def versioned(name, v, n):
    return b"%s %d %d\\n" % (name, v, n) + body(name, v, n)
"""


def write_program(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(text))
    return p


def fw(tmp: Path, main: str) -> Path:
    """A firmware folder holding only `main.py` (and the versioned-file helpers as lib/vf.py)."""
    d = tmp / "fw"
    (d / "lib").mkdir(parents=True, exist_ok=True)
    (d / "main.py").write_text(textwrap.dedent(main))
    (d / "lib" / "vf.py").write_text(VERSIONED)
    return d


def lines(text: str, tag: str) -> list[str]:
    return [l[len(tag) + 1:] for l in text.splitlines() if l.startswith(tag + " ")]


class Ledger:
    """What the host expects on the flash: the versions whose close()/rename() returned, and the
    one write that the cut interrupted (it may have landed wholly, or not at all)."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}
        self.torn: tuple[str, int] | None = None

    def check_boot(self, found: dict[str, int]) -> None:
        assert all(v >= 0 for v in found.values()), f"a file is neither old nor new: {found}"
        for name in set(found) | set(self.done):
            allowed = {self.done.get(name)}
            if self.torn and self.torn[0] == name:
                allowed.add(self.torn[1])
                if name not in self.done:   # created by the interrupted write: empty
                    allowed.add(0)
            assert found.get(name) in allowed, f"{name}: found {found.get(name)}, expected {allowed}"
        self.done = dict(found)
        self.torn = None

    def replay(self, out: str) -> None:
        """Follow one boot's "@try name v" / "@ok name v" lines."""
        for l in out.splitlines():
            if l.startswith("@try "):
                name, v = l.split()[1:]
                self.torn = (name, int(v))
            elif l.startswith("@ok "):
                name, v = l.split()[1:]
                self.done[name] = int(v)
                self.torn = None


# -- the block device alone: 100 power cuts, each boot a new process ----------------------------
TORTURE = VERSIONED + """
import sys, os, json, simflash
img, cut, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
BLOCKS = 64          # 256 KiB: small, so littlefs compacts and wears blocks often
try:
    os.stat(img)
    new = False
except OSError:
    simflash.create(img, BLOCKS)
    new = True
dev = simflash.Flash(img, BLOCKS)
if new:
    os.VfsLfs2.mkfs(dev)
fs = os.VfsLfs2(dev)      # raises if littlefs does not mount
found = {}
for e in fs.ilistdir("/"):
    if not e[0].endswith(".tmp"):
        with fs.open(e[0], "rb") as f:
            found[e[0]] = check(f.read(), e[0])
print("@found", json.dumps(found))
dev.cut_at = dev.writes + cut
r = seed
while True:
    r = (r * 1103515245 + 12345) & 0x7FFFFFFF
    name = "f%d" % (r % 5)
    v = found.get(name, 0) + 1
    n = (r >> 8) % (3 if r & 1 else 9000)       # inline files and files of several blocks
    data = versioned(name, v, n)
    print("@try", name, v)
    try:
        if r & 2:      # replace by rename: the usual atomic update
            with fs.open(name + ".tmp", "wb") as f:
                f.write(data)
            fs.rename(name + ".tmp", name)
        else:          # overwrite in place, in pieces: littlefs keeps the old until close()
            with fs.open(name, "wb") as f:
                for i in range(0, len(data), 1000):
                    f.write(data[i:i + 1000])
    except OSError as e:
        print("@cut", e.errno, dev.writes)
        break
    found[name] = v
    print("@ok", name, v)
"""


def test_a_hundred_power_cuts_leave_every_file_wholly_old_or_wholly_new(tmp_path: Path) -> None:
    prog = write_program(tmp_path, "torture.py", TORTURE)
    img = tmp_path / "flash.img"
    rnd = random.Random(3)
    ledger = Ledger()
    errnos = set()
    for round_ in range(101):
        cut = rnd.randint(1, 120)
        p = run_mpy(script=prog, args=[str(img), str(cut), str(rnd.randrange(1 << 30))],
                    path=[SIM_MPY], heapsize="256K")
        out = p.stdout.decode()
        assert p.returncode == 0, f"round {round_}: {out[-2000:]}{p.stderr.decode()}"
        ledger.check_boot(json.loads(lines(out, "@found")[0]))
        ledger.replay(out)
        errnos.add(int(lines(out, "@cut")[0].split()[0]))
    assert len(ledger.done) == 5
    assert errnos <= {5, 28}   # EIO from the torn write (littlefs may say ENOSPC)


# -- through the runner: a node's life with a reset and a power cut ------------------------------
LIFE = """
import os, time, machine, json
try:
    with open("n") as f:
        n = int(f.read())
except OSError:
    n = 0
n += 1
with open("n", "w") as f:
    f.write(str(n))
rtc = machine.RTC()
print("@boot", json.dumps([n, machine.reset_cause(), time.time(), rtc.memory().decode(),
                           os.getcwd(), sorted(os.listdir())]))
if n == 1:
    rtc.datetime((2026, 11, 24, 1, 7, 0, 0, 0))   # as NTP would
    rtc.memory(b"kept")
    time.sleep(5)
    machine.reset()
if n == 2:
    i = 0
    while True:     # until the power cut
        with open("log", "a") as f:
            f.write("line %d\\n" % i)
        i += 1
        time.sleep_ms(100)
machine.deepsleep()  # boot 3: sleeps to the end of the run
"""


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> SimNode:
    tmp = tmp_path_factory.mktemp("life")
    spec = NodeSpec(node_id="life", scenario=SCENARIO, workdir=tmp / "node", until_s=120,
                    heapsize="112K", power_cuts=[40], firmware=fw(tmp, LIFE))
    node = SimNode(spec)
    node.prepare()
    node.start()
    assert node.wait(60) == 0, node.console_text()[-3000:]
    return node


def test_the_image_persists_across_a_reset_and_a_power_cut(life: SimNode) -> None:
    boots = [json.loads(l) for l in lines(life.console_text(), "@boot")]
    assert [b[0] for b in boots] == [1, 2, 3]
    assert life.boots == 3 and life.power_cuts_done == 1
    assert life.read_flash("n") == b"3"
    assert boots[0][4] == "/" and {"main.py", "board.json", "config.json", "lib"} <= set(boots[0][5])
    assert "n" in boots[1][5] and "log" in boots[2][5]
    assert life.read_flash("main.py") == textwrap.dedent(LIFE).encode()
    assert set(life.list_flash()) >= {"main.py", "lib/vf.py", "n", "log", "board.json", "config.json"}
    assert life.list_flash("lib") == ["lib/vf.py"]
    assert life.read_flash("missing") is None
    # appends are committed at close(): the log holds whole lines, in order, up to the cut
    log = life.read_flash("log").decode().splitlines()
    assert log == [f"line {i}" for i in range(len(log))] and len(log) > 5


def test_the_rtc_survives_a_reset_but_not_a_power_cut(life: SimNode) -> None:
    boots = [json.loads(l) for l in lines(life.console_text(), "@boot")]
    assert boots[0][1] == 1 and boots[0][2] < 5             # power-on: 2000-01-01
    assert boots[1][1] == 5                                  # machine.reset(): SOFT_RESET
    set_at = 1795503600 - EPOCH_2000                         # 2026-11-24 07:00 UTC
    assert set_at + 5 <= boots[1][2] < set_at + 10 and boots[1][3] == "kept"
    assert boots[2][1] == 1                                  # the power cut: power-on
    assert boots[2][2] < 5 and boots[2][3] == ""             # RTC and RTC memory lost
    assert "--- power cut at t=" in life.console_text()
    assert life.last_state["cause"] == "until" and life.last_state["t_ms"] == 120_000


def test_flash_programs_and_erases_are_counted_over_the_nodes_life(life: SimNode) -> None:
    m = re.search(r"--- power cut at t=(\d+) ms, flash write (\d+) ---", life.console_text())
    assert m and int(m.group(2)) == 40     # the cut came at the 40th program, counted from boot 1
    st = life.flash_stats
    assert st["flash_writes"] > 40 and st["flash_erases"] > 0 and st["flash_bytes"] > 40 * 16
    assert st == {k: life.last_state["stats"][k] for k in st}


# -- through the runner: random power cuts -------------------------------------------------------
CUTS = """
import os, time, machine, json
from vf import check, versioned
found = {}
for name in os.listdir():
    if name[0] == "f" and not name.endswith(".tmp"):
        with open(name, "rb") as f:
            found[name] = check(f.read(), name)
print("@found", json.dumps(found))
r = machine.reset_cause() + time.ticks_us()
for i in range(100):
    r = (r * 1103515245 + 12345) & 0x7FFFFFFF
    name = "f%d" % (r % 4)
    v = found.get(name, 0) + 1
    data = versioned(name, v, (r >> 8) % 6000)
    print("@try", name, v)
    if r & 2:
        with open(name + ".tmp", "wb") as f:
            f.write(data)
        os.rename(name + ".tmp", name)
    else:
        with open(name, "wb") as f:
            f.write(data)
    found[name] = v
    print("@ok", name, v)
    time.sleep_ms(50)
machine.deepsleep()
"""


def test_random_power_cuts_on_a_node_never_break_its_files(tmp_path: Path) -> None:
    rnd = random.Random(7)
    cuts, w = [], 0
    for _ in range(12):
        w += rnd.randint(1, 250)   # fewer than a boot's 100 writes of a few programs each
        cuts.append(w)
    spec = NodeSpec(node_id="cuts", scenario=SCENARIO, workdir=tmp_path / "node", until_s=3600,
                    heapsize="112K", power_cuts=cuts, firmware=fw(tmp_path, CUTS))
    node = SimNode(spec)
    node.prepare()
    node.start()
    assert node.wait(120) == 0, node.console_text()[-3000:]
    assert node.power_cuts_done == len(cuts) and node.boots == len(cuts) + 1
    ledger = Ledger()
    for boot in re.split(r"--- power cut at [^\n]*\n", node.console_text()):
        ledger.check_boot(json.loads(lines(boot, "@found")[0]))
        ledger.replay(boot)
    files = node.flash_files()
    for name, v in ledger.done.items():
        assert files[name].startswith(b"%s %d " % (name.encode(), v))
    assert node.flash_stats["flash_writes"] > cuts[-1]


# -- the real firmware on the image ----------------------------------------------------------------
def test_the_firmware_boots_from_the_image_and_after_a_power_cut(tmp_path: Path) -> None:
    spec = NodeSpec(node_id="fw-1", scenario=SCENARIO, workdir=tmp_path / "node", until_s=150,
                    broker_port=1, heapsize="112K", power_cuts=[4])
    node = SimNode(spec)
    node.prepare()
    node.start()
    assert node.wait(120) == 0, node.console_text()[-3000:]
    assert node.power_cuts_done == 1 and node.boots >= 2
    assert "MemoryError" not in node.console_text()
    files = node.list_flash()
    assert {"boot.py", "main.py", "board.json", "config.json", "lib/node.py"} <= set(files)
    assert node.read_flash("main.py") == (FIRMWARE / "main.py").read_bytes()
    assert "boot.count" in files


def test_the_image_leaves_the_firmware_its_heap_budget(tmp_path: Path) -> None:
    # No new name in this program: the first one the firmware interns may open a new block of
    # MicroPython's interned strings (7 KB for 640 names on this 64-bit build), which is the
    # firmware's cost as on the board, and whether it does depends on how full the simulator left
    # the last block, not on the ballast this test is about.
    r = run_sim(tmp_path, """
        import gc
        gc.collect()
        print(gc.mem_free())
        """, image=True, heapsize=f"{112 + SIM_HEAP_RESERVE // 1024}K", until_ms=None,
                extra={"heap_budget": 112 * 1024})
    assert r.code == 2, r.out + r.err
    free = int(r.lines[0])
    assert 112 * 1024 - 2048 < free <= 112 * 1024 + 64
    st = r.state["stats"]
    # littlefs and its block device included, and the 640-name pool of interned strings that
    # simboot's own names open (7 KB); not the room made for the firmware's names (_qstr_room)
    assert st["sim_heap"] - st["sim_qstr_room"] < 72 * 1024


def test_flash_timing_stalls_the_clock_only_when_asked(tmp_path: Path) -> None:
    prog = """
        import time
        t0 = time.ticks_us()
        for i in range(20):
            with open("f", "wb") as f:
                f.write(b"x" * 5000)
        print("@us", time.ticks_diff(time.ticks_us(), t0))
        """
    us = {}
    for timed in (False, True):
        r = run_sim(tmp_path / str(timed), prog, image=True, until_ms=None,
                    extra={"flash_timing": timed})
        assert r.code == 2, r.out + r.err
        us[timed] = int(r.lines[0].split()[1])
        st = r.state["stats"]
    assert us[False] < 1000
    # every byte programmed at 2 us, each erase 45 ms (littlefs erases before it programs a block)
    want = st["flash_bytes"] * 2 + st["flash_writes"] * 20 + st["flash_erases"] * 45_000
    assert st["flash_erases"] >= 20 and want <= us[True] < want + 1000
