"""The noise pipeline (firmware/lib/soundlevel.py, issue 4): speed against C and numpy, heap, accuracy
and the ESP32's CPU load.

All speed figures run on the SAME input in one run: 10 s of seeded traffic-like noise
(tools/dev/noise_ref.py: pink noise at 60 dB SPL swelling by up to 30 dB as vehicles pass),
as the I2S hands it over (24-bit samples MSB-aligned in little-endian 32-bit slots), fed in blocks
of 960 samples (20 ms, as the node reads them).

noise_viper_msamples_per_s   the firmware's NoiseMeter.process under micropython, timed inside
                             micropython with time.ticks_us (the file is read before), median run
noise_c_msamples_per_s       tools/dev/noise_c/noise.c: `_run` translated line by line into C
                             (int32_t), built with gcc -O2 into build/bench/; bit-exact with the
                             firmware (tests/firmware/test_noise_c.py, and checked again here on
                             this input)
noise_viper_vs_c_ratio       median viper / median C from the same run (goal >= 0.4)
noise_numpy_msamples_per_s   the same design in float64: scipy.signal.lfilter over the sections
                             of tools/aweight_design.py, squares, Fast weighting (lfilter, per
                             sample), levels every millisecond, percentiles
noise_alloc_bytes_per_block  gc.mem_alloc() growth over 500 process() calls with the GC disabled
aweight_max_dev_db           sines at the one-third-octave frequencies 31.5 Hz - 8 kHz through the
                             firmware's NoiseMeter: LAeq - the sine's level - the exact A value
noise_esp32_cpu_load_pct     the ESP32's CPU share for the pipeline at 48 kHz, from the code the
                             board runs, on the Xtensa model (bench/noise_esp32.py)

The kernel run three ways (micropython, C, the Xtensa model) is tools/dev/noise_kernel.py.
`python -m bench.noise` runs this benchmark alone.
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import noise_esp32
from bench.results import median, record
from meetkit_tools.dev import mpyfile
from meetkit_tools.dev import noise_ref as ref
from meetkit_tools.dev.micropython import run_mpy
from meetkit_tools.dev.noise_kernel import BLOCK, HEAPSIZE, OUT, RATE, TICK, build_c, firmware_init, run_c, write_init
from meetkit_tools.dev.xtensa import XtensaUnsupported
from meetkit_tools.sim.runner import micropython_bin

SECONDS = 10
SEED = 4
BASE_DB = 60.0
ROUNDS = 3            # viper and C alternate, RUNS_PER_ROUND timed runs each per round
RUNS_PER_ROUND = 5
NUMPY_RUNS = 7
ALLOC_BLOCKS = 500


# -- input -------------------------------------------------------------------------------------------

def bench_input() -> np.ndarray:
    """The benchmark's input: 24-bit samples."""
    rng = np.random.default_rng(SEED)
    return ref.to_int24(ref.traffic(SECONDS * RATE, rng, base_db=BASE_DB))


INPUT_DESC = {"kind": f"traffic-like noise (tools/dev/noise_ref.traffic, seed {SEED}, base {BASE_DB:g} dB SPL,"
                      " swells up to +30 dB), 24-bit samples in little-endian 32-bit slots",
              "seconds": SECONDS, "samples": SECONDS * RATE, "block_samples": BLOCK}


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": median(xs), "max": max(xs)}


# -- the firmware under micropython, timed -----------------------------------------------------------

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
            est = noise_esp32.estimate(tmp, x, st0, tab, v_med, INPUT_DESC["kind"])
        except (mpyfile.MpyError, XtensaUnsupported, RuntimeError, OSError) as e:
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
