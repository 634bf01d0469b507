"""The noise pipeline (firmware/lib/soundlevel.py), run under micropython as the board runs it,
against the exact A curve, float64 references and a 32-bit twin (tools/dev/noise_ref.py)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from meetkit_tools import aweight_design as design
from meetkit_tools.dev import noise_ref as ref
from meetkit_tools.dev.micropython import run_mpy

S = ref.FS  # samples per second


# -- 32-bit safety -----------------------------------------------------------------------------------

STATE_RUN = r"""
import sys, json
from soundlevel import NoiseMeter
m = NoiseMeter(-26.0)
data = open(sys.argv[1], "rb").read()
blk = 960 * 4
for i in range(0, len(data), blk):
    part = data[i:i + blk]
    m.process(part, len(part) // 4)
import array
print(json.dumps([list(m.st), list(array.array("I", m.hist))]))
"""


def firmware_state(tmp: Path, x: np.ndarray) -> tuple[list[int], list[int]]:
    p = tmp / "x.bin"
    p.write_bytes(ref.to_slots(x))
    res = run_mpy(STATE_RUN, args=[str(p)], heapsize="4M")
    assert res.returncode == 0, res.stderr.decode()
    st, hist = json.loads(res.stdout)
    return st, hist


def test_the_kernel_is_bit_exact_with_its_32_bit_twin(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 3 * S // 2
    x = np.concatenate([
        ref.to_int24(ref.traffic(n, rng, base_db=60)),
        rng.integers(-(2**23), 2**23, n // 2),             # full-scale white noise
        np.where(np.arange(n // 2) % 200 < 100, 2**23 - 1, -(2**23)),  # clipped square wave
        np.zeros(S // 4, np.int64),                        # silence: the Fast level decays
    ])
    twin = ref.Twin()
    twin.run(x)
    st, hist = firmware_state(tmp_path, x)
    assert st == twin.st
    assert hist == twin.hist
    assert twin.st[33] > 0  # the square wave was seen as overload


def l1_bounds() -> dict[str, float]:
    """The largest magnitude each filter output can reach for ANY input within 24-bit full scale:
    the l1 norm of the impulse response from the input to it, times full scale (in the 20-bit
    units after the DC blocker's >> 4), plus the rounding each section can add."""
    imp = np.zeros(400000)  # the DC blocker's tail is 8192 samples long
    imp[0] = 1.0
    out = {}
    y = imp
    names = ["dc.y", "L1a.y", "L1b.y", "L2.y", "L3.y", "H5.y", "H6.y"]
    for name, (b, a) in zip(names, design.sections(ref.COEF)):
        y = signal.lfilter(b, a, y)
        scale = 2**23 if name == "dc.y" else 2**19
        out[name] = float(np.abs(y).sum()) * scale + 64  # + rounding and carried errors
    return out


def test_no_intermediate_can_leave_32_bits_for_any_input() -> None:
    """The proof over the full input range: bound every product by the l1 norms (worst case over
    all inputs), then check the bound, with the coefficients the firmware has."""
    b = l1_bounds()
    c = ref.COEF
    products = {
        "L1a": c["K1"] * b["L1a.y"] + 2**19, "L1b": c["K1"] * b["L1b.y"] + 2**19,
        "L2": c["K2"] * b["L2.y"] + 2**16, "L3": c["K3"] * b["L3.y"] + 2**14,
        "H5": c["C5"] * b["L3.y"] + c["P5"] * b["H5.y"] + 2**11,
        "H6": c["C6"] * b["H5.y"] + c["P6"] * b["H6.y"] + 2**11,
        "square": max((b["H6.y"] + 32) / 64, b["dc.y"] / 16 / 64) ** 2,
        # a tick's low energy word: below 2**30 after a carry, plus 48 exact squares (|v| < 2**12)
        "tick energy": 2**30 + 48 * 4096**2,
    }
    for name, v in products.items():
        assert v < 2**31, f"{name}: worst case {v:.3g} overflows 32 bits"
    # and the largest one still leaves headroom (so a future coefficient change is caught here)
    assert max(products.values()) < 0.9 * 2**31


def test_worst_case_inputs_run_through_the_twin_within_32_bits() -> None:
    """The inputs that drive each filter output to its l1 bound (full scale with the signs of its
    impulse response, reversed), run through the twin: every intermediate checked."""
    imp = np.zeros(60000)
    imp[0] = 1.0
    y = imp
    worst = []
    for i, (b, a) in enumerate(design.sections(ref.COEF)):
        y = signal.lfilter(b, a, y)
        h = y if i == 0 else y[:4000]  # the DC blocker's response is long, the others' short
        worst.append(np.where(h[::-1] >= 0, 2**23 - 1, -(2**23)))
    bounds = l1_bounds()
    names = ["dc.y", "L1a.y", "L1b.y", "L2.y", "L3.y", "H5.y", "H6.y"]
    for name, x in zip(names, worst):
        twin = ref.Twin()
        twin.run(np.concatenate([-x[:1], x]))  # primed at the opposite rail
        assert twin.peaks[name] <= bounds[name]
        assert twin.peaks[name] > 0.9 * bounds[name]  # and the bound is nearly reached


# -- frequency response ------------------------------------------------------------------------------

def test_frequency_response_is_class_1_and_within_0p1_db_from_31p5_hz_to_8_khz(tmp_path: Path) -> None:
    """A sine at every nominal one-third-octave frequency, 10 Hz - 20 kHz, through the firmware:
    LAeq minus the sine's own level is the A response as implemented (rounding included)."""
    freqs = [design.exact_frequency(f) for f, *_ in design.IEC_TABLE3]
    settle, meas = S, 2 * S
    chunks, cuts, levels = [], [], []
    for f in freqs:
        t = np.arange(settle + meas) / S
        x = ref.to_int24(ref.amplitude(100.0) * np.sin(2 * np.pi * f * t))
        chunks.append(x)
        levels.append(ref.spl_of(x[settle:]))
        start = sum(len(c) for c in chunks[:-1])
        cuts += [start + settle, start + settle + meas]
    res = ref.run_meter(tmp_path, np.concatenate(chunks), cuts)
    devs = []
    for (nominal, a_nom, hi, lo), f, lvl, r in zip(design.IEC_TABLE3, freqs, levels, res[1::2]):
        measured = r["LAeq"] - lvl
        dev_nominal = measured - a_nom          # what IEC 61672-1 tests against
        dev_exact = measured - float(design.a_exact_db(f))
        assert dev_nominal <= hi, f"{nominal} Hz: {dev_nominal:+.2f} dB above the class 1 limit"
        if lo is not None:
            assert dev_nominal >= lo, f"{nominal} Hz: {dev_nominal:+.2f} dB below the class 1 limit"
        if 31.5 <= nominal <= 8000:
            devs.append(abs(dev_exact))
            assert abs(dev_exact) <= 0.1, f"{nominal} Hz: {dev_exact:+.3f} dB from the exact curve"
    assert max(devs) < 0.05  # the design's 0.011 dB plus the fixed-point arithmetic's own share


# -- levels against float64 references ------------------------------------------------------------------

def _signal(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / S
    if kind == "pink":
        return ref.pink(n, rng) * ref.amplitude(75.0) / math.sqrt(2)
    if kind.startswith("tone"):
        f = float(kind[4:])
        return ref.amplitude(85.0) * np.sin(2 * np.pi * f * t)
    if kind == "bursts":  # 4 kHz bursts of 200 ms every second over a quiet pink background
        on = (t % 1.0) < 0.2
        return ref.amplitude(90.0) * np.sin(2 * np.pi * 4000 * t) * on + \
            ref.pink(n, rng) * ref.amplitude(45.0) / math.sqrt(2)
    if kind == "traffic":
        return ref.traffic(n, rng)
    raise ValueError(kind)


SIGNALS = ["pink", "tone31.5", "tone100", "tone1000", "tone4000", "tone8000", "bursts", "traffic"]


@pytest.mark.parametrize("kind", SIGNALS)
def test_laeq_is_within_0p05_db_of_the_exact_a_weighted_level(tmp_path: Path, kind: str) -> None:
    """Reference: the exact analytic A curve applied in the frequency domain (float64, periodic
    signal), energy over the same 10 s the node measured after 1 s of settling."""
    rng = np.random.default_rng(zlib.crc32(kind.encode()))  # str hash() differs per process
    n = 11 * S
    x = ref.to_int24(_signal(kind, rng, n))
    want = ref.spl_of(ref.exact_a(x)[S:])
    got = ref.run_meter(tmp_path, x, [S, n])[1]
    assert got["LAeq"] == pytest.approx(want, abs=0.05)
    assert got["LZeq"] == pytest.approx(ref.spl_of(x[S:]), abs=0.05)
    assert got["n"] == n - S


@pytest.mark.parametrize("kind", ["pink", "bursts", "traffic"])
def test_fast_levels_and_percentiles_match_the_float64_definition(tmp_path: Path, kind: str) -> None:
    """LAFmax, LAFmin and LA10/50/90 against per-sample Fast time weighting (IEC 61672-1) of the
    same filter design in float64, sampled every millisecond."""
    rng = np.random.default_rng(7)
    n = 31 * S
    x = ref.to_int24(_signal(kind, rng, n))
    # the node's first interval ends at 1 s; Fast levels count once it has warmed up (1.25 s)
    lf = ref.fast_levels(ref.design_filter(x))[ref.WARM_TICKS:]
    got = ref.run_meter(tmp_path, x, [S, n])[1]
    assert got["LAFmax"] == pytest.approx(lf.max(), abs=0.05)
    assert got["LAFmin"] == pytest.approx(lf.min(), abs=0.05)
    for key, pct in (("LA10", 90), ("LA50", 50), ("LA90", 10)):
        # bins of 1/32 octave (0.094 dB), reported at their centre
        assert got[key] == pytest.approx(np.percentile(lf, pct), abs=0.1), key


def test_level_linearity_from_40_to_120_db(tmp_path: Path) -> None:
    """A 1 kHz sine from 40 to 120 dB SPL in 1 dB steps (0 dBFS at 120 dB for a -26 dBFS
    microphone): LAeq within 0.1 dB of the level set. The simulated microphone adds no noise,
    so this is the digital chain's own dynamic range."""
    spls = np.arange(40.0, 120.5, 1.0)
    settle, meas = S // 2, S
    chunks, cuts = [], []
    for spl in spls:
        t = np.arange(settle + meas) / S
        chunks.append(ref.to_int24(ref.amplitude(spl) * np.sin(2 * np.pi * 1000 * t + 0.3)))
        start = sum(len(c) for c in chunks[:-1])
        cuts += [start + settle, start + settle + meas]
    res = ref.run_meter(tmp_path, np.concatenate(chunks), cuts)[1::2]
    errs = [r["LAeq"] - spl for spl, r in zip(spls, res)]
    assert max(abs(e) for e in errs) <= 0.1, list(zip(spls, errs))
    assert all(r["over"] == 0 for r in res)


def test_clipping_is_counted_as_overload(tmp_path: Path) -> None:
    t = np.arange(S) / S
    loud = ref.to_int24(ref.amplitude(123.0) * np.sin(2 * np.pi * 1000 * t))  # clips at 120 dB
    res = ref.run_meter(tmp_path, np.concatenate([loud, loud // 2]), [S, 2 * S])
    assert res[0]["over"] > 1000
    assert res[1]["over"] == 0


# IEC 61672-1:2013 Table 4, Fast: burst duration (ms), reference LAFmax - LA, class 1 limits
TONEBURST = [(1000, 0.0, -0.5, 0.5), (500, -0.1, -0.5, 0.5), (200, -1.0, -0.5, 0.5),
             (100, -2.6, -1.0, 1.0), (50, -4.8, -1.0, 1.0), (20, -8.3, -1.0, 1.0),
             (10, -11.1, -1.0, 1.0), (5, -14.1, -1.0, 1.0), (2, -18.0, -1.5, 1.0),
             (1, -21.0, -2.0, 1.0), (0.5, -24.0, -2.5, 1.0), (0.25, -27.0, -3.0, 1.0)]


def test_toneburst_response_is_within_the_class_1_limits(tmp_path: Path) -> None:
    """4 kHz bursts (starting and ending at zero crossings) after 2 s of silence: LAFmax of each
    minus the steady level of the same tone, against IEC 61672-1 Table 4."""
    f = 4000.0
    amp = ref.amplitude(100.0)
    steady = ref.to_int24(amp * np.sin(2 * np.pi * f * np.arange(3 * S) / S))
    chunks, cuts = [steady], [S, 3 * S]
    for ms, *_ in TONEBURST:
        n_on = int(round(ms / 1000 * S))
        burst = np.zeros(2 * S + n_on + S)
        burst[2 * S:2 * S + n_on] = amp * np.sin(2 * np.pi * f * np.arange(n_on) / S)
        chunks.append(ref.to_int24(burst))
        cuts.append(sum(len(c) for c in chunks))
    res = ref.run_meter(tmp_path, np.concatenate(chunks), cuts)
    steady_la = res[1]["LAeq"]
    assert res[1]["LAFmax"] == pytest.approx(steady_la, abs=0.05)
    for (ms, want, lo, hi), r in zip(TONEBURST, res[2:]):
        d = r["LAFmax"] - steady_la - want
        assert lo <= d <= hi, f"{ms} ms burst: {d:+.2f} dB from the reference {want}"
        assert abs(d) < 0.2  # well inside: the limits are for a whole instrument


# -- behaviour ---------------------------------------------------------------------------------------

def test_silence_gives_no_level_and_a_restart_warms_up(tmp_path: Path) -> None:
    """A digital microphone is never exactly silent: zeros mean no microphone, so no level."""
    res = ref.run_meter(tmp_path, np.zeros(2 * S, np.int64), [S, 2 * S])
    for r in res:
        assert r["LAeq"] is None and r["LAFmax"] is None and r["LA50"] is None
        assert r["n"] == S


def test_processing_allocates_nothing(tmp_path: Path) -> None:
    code = r"""
import gc, micropython
from soundlevel import NoiseMeter
m = NoiseMeter(-26.0)
buf = bytearray(960 * 4)
for i in range(0, len(buf), 4):
    buf[i + 3] = (i * 7) & 0xFF


def blocks(n):  # locals only: a new global or a range() object would allocate by itself
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    i = 0
    while i < n:
        m.process(buf, 960)
        i += 1
    return gc.mem_alloc() - a


blocks(1)
print(blocks(500))
"""
    res = run_mpy(code, heapsize="64K")
    assert res.returncode == 0, res.stderr.decode()
    assert int(res.stdout) == 0
