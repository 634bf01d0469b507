"""The firmware's noise kernel (`_run` of firmware/lib/soundlevel.py) three ways, each giving the
meter's state words and histogram:

- under the real micropython, as the firmware runs it (`firmware_init`, `firmware_state`);
- in C: `noise_c/noise.c`, `_run` translated line by line with int32_t arithmetic, built with gcc
  (`build_c`, `write_init`, `run_c`);
- as the board's own machine code: `_run` compiled by mpy-cross -march=xtensawin, taken out of the
  .mpy (`board_code`) and run on the Xtensa model (`emulate_run`).

tests/firmware/test_noise_c.py holds the C translation and the Xtensa model bit-exact with the
firmware; bench/noise.py times the first two against each other and counts the third's cycles.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

from meetkit_tools.dev import mpyfile
from meetkit_tools.dev.micropython import FIRMWARE_LIB, run_mpy
from meetkit_tools.dev.xtensa import M32, Xtensa, XtensaUnsupported, sext
from meetkit_tools.paths import BUILD, ROOT

RATE = 48000
TICK = 48             # samples per tick (1 ms)
NB = 1280             # histogram bins (soundlevel.NB)
BLOCK = 960           # samples per process() call, as the node reads them (20 ms)
HEAPSIZE = "8M"       # room for a 10 s input (1.9 MB) in micropython's heap
SOURCE = FIRMWARE_LIB / "soundlevel.py"

C_DIR = Path(__file__).resolve().parent / "noise_c"
C_SOURCES = ("noise.c", "noise_main.c")
CC = "gcc"
CFLAGS = ("-O2", "-std=c11")
OUT = BUILD / "bench"


# -- under micropython ----------------------------------------------------------------------------

INIT_RUN = r"""
import json
from soundlevel import NoiseMeter, _LOG2_TAB
m = NoiseMeter(-26.0)
print(json.dumps([list(m.st), list(_LOG2_TAB)]))
"""


def firmware_init() -> tuple[list[int], list[int]]:
    """A new NoiseMeter's state words and the log2 table, as the firmware makes them."""
    res = run_mpy(INIT_RUN)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode())
    st, tab = json.loads(res.stdout)
    return st, tab


STATE_RUN = r"""
import sys, json, array
from soundlevel import NoiseMeter
m = NoiseMeter(-26.0)
init = json.loads(sys.stdin.read())
for i in range(len(init)):
    m.st[i] = init[i]
blk = int(sys.argv[2])
with open(sys.argv[1], "rb") as f:
    data = f.read()
n = len(data) // 4
mv = memoryview(data)
done = 0
while done < n:
    k = min(blk, n - done)
    m.process(mv[4 * done:4 * (done + k)], k)
    done += k
print(json.dumps([list(m.st), list(array.array("I", m.hist))]))
"""


def firmware_state(audio: Path, st0: list[int], block: int = BLOCK) -> tuple[list[int], list[int]]:
    """State words and histogram after the firmware's NoiseMeter, its state words set to st0,
    has processed the slots in `audio` in blocks of `block` samples."""
    res = run_mpy(STATE_RUN, args=[str(audio), str(block)], stdin=json.dumps(st0), heapsize=HEAPSIZE,
                  timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode())
    st, hist = json.loads(res.stdout)
    return st, hist


# -- C --------------------------------------------------------------------------------------------

def build_c(out_dir: Path = OUT) -> tuple[Path | None, dict[str, Any]]:
    """Build noise_c/ with gcc -O2 into `out_dir`: (the executable or None, what was done)."""
    cc = shutil.which(CC)
    info: dict[str, Any] = {"compiler": CC, "cflags": " ".join(CFLAGS),
                            "sources": [f"{C_DIR.relative_to(ROOT)}/{s}" for s in C_SOURCES]}
    if cc is None:
        info["error"] = f"{CC} not found: no C reference"
        return None, info
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True)
    info["compiler_version"] = ver.stdout.splitlines()[0] if ver.stdout else "?"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / "noise_c"
    cmd = [cc, *CFLAGS, "-Wall", "-Wextra", "-o", str(exe), *(str(C_DIR / s) for s in C_SOURCES)]
    info["command"] = " ".join([CC, *cmd[1:]]).replace(str(ROOT) + "/", "")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        info["error"] = f"build failed: {res.stderr[-2000:]}"
        return None, info
    if res.stderr.strip():
        info["warnings"] = res.stderr[-2000:]
    return exe, info


def write_init(path: Path, st0: list[int], tab: list[int]) -> Path:
    """The C harness's INIT file: the state words (40 x int32), then the log2 table (257 x uint16)."""
    path.write_bytes(struct.pack("<40i", *st0) + struct.pack("<257H", *tab))
    return path


def run_c(exe: Path, audio: Path, init: Path, runs: int, block: int = BLOCK) -> dict[str, Any]:
    """`runs` timed runs of the C kernel over `audio` from INIT: {"ns": [...], "st": [...], "hist": [...]}."""
    res = subprocess.run([str(exe), str(audio), str(init), str(runs), str(block)], capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout)


# -- the board's code on the Xtensa model -----------------------------------------------------------

def board_code(tmp: Path, mpy_path: Path | None = None) -> tuple[bytes, int, dict[str, Any]]:
    """`_run` as the ESP32 runs it: (its xtensawin machine code, the index of the constant object
    that stands for MicroPython's function table, what was compiled: the .mpy's bytes, size and
    mpy-cross's version). The .mpy is written to `mpy_path` (default: in `tmp`)."""
    out = mpy_path or tmp / "soundlevel.xtensawin.mpy"
    data, version = mpyfile.compile_mpy(SOURCE, out, "xtensawin")
    mpy = mpyfile.parse_mpy(data)
    if mpy["arch"] != mpyfile.ARCH_XTENSAWIN:
        raise mpyfile.MpyError(f"arch {mpy['arch']} is not xtensawin ({mpyfile.ARCH_XTENSAWIN})")
    code = mpyfile.viper_code(mpy, SOURCE.read_text(), "_run")
    return code, mpy["obj_types"].index(0), {"path": out, "bytes": len(data), "mpy_cross": version}


def emulate_run(code: bytes, funtab_obj_index: int, audio: bytes, st0: list[int], tab: list[int],
                block: int = BLOCK) -> tuple[Xtensa, list[int], list[int]]:
    """Call the xtensawin `_run` once per block over `audio` (slots) from the state words st0, as
    NoiseMeter.process does. The viper prologue finds MicroPython's function table through the
    function object: fun->context (+4), context->constants.obj_table (+12), then the .mpy's
    constant object that stands for the table; it converts each argument with the table's
    convert_obj_to_native (index 3)."""
    fun, ctx, objtab, funtab, args = 0x100, 0x200, 0x300, 0x400, 0x800
    st_at, hist_at, tab_at, buf_at, stack_top = 0x1000, 0x1100, 0x2600, 0x4000, 0x3F00
    magic = 0x70000000
    if not 0 <= funtab_obj_index < 64 or len(st0) > 64:
        raise XtensaUnsupported("unexpected constant table or state size")
    objs: dict[int, int] = {}

    def convert(m: Xtensa) -> None:  # mp_convert_obj_to_native(obj, type)
        m.a[10] = objs[m.a[10]] & M32

    def arg_error(m: Xtensa) -> None:
        raise XtensaUnsupported("the prologue rejected the arguments")

    m = Xtensa(code, buf_at + len(audio) + 64, magic, {3: convert, 44: arg_error})
    m.w32(fun + 4, ctx)
    m.w32(ctx + 8, 0)  # qstr table: unused by _run
    m.w32(ctx + 12, objtab)
    m.w32(objtab + 4 * funtab_obj_index, funtab)
    for i in range(96):
        m.w32(funtab + 4 * i, magic + 4 * i)
    for i, v in enumerate(st0):
        m.w32(st_at + 4 * i, v)
    for i, v in enumerate(tab):
        m.m16[(tab_at >> 1) + i] = v
    m.mem[buf_at:buf_at + len(audio)] = audio
    n = len(audio) // 4
    for done in range(0, n, block):
        k = min(block, n - done)
        call = (buf_at + 4 * done, 0, 0, k, st_at, hist_at, tab_at)  # _run(buf, i, stop, n, st, hist, tab)
        for i, v in enumerate(call):
            objs[0xA00 + 8 * i] = v
            m.w32(args + 4 * i, 0xA00 + 8 * i)
        m.call(0, {1: stack_top, 2: fun, 3: len(call), 4: 0, 5: args})
    st = [sext(m.r32(st_at + 4 * i), 32) for i in range(len(st0))]
    hist = [m.r32(hist_at + 4 * i) for i in range(NB)]
    return m, st, hist
