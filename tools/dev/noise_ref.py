"""References for the node's noise pipeline (firmware/lib/soundlevel.py):

- `Twin`: the viper kernel `_run` step by step in plain Python, checking that every intermediate
  fits the ESP32's 32-bit viper int (the host's viper int is 64-bit, so overflow cannot be seen
  by running the kernel here).
- float64 references with numpy/scipy: the exact A curve applied in the frequency domain, and the
  same filter design in float64 with per-sample Fast time weighting.
- `run_meter`: the firmware's own NoiseMeter under the real micropython, fed from a file.

The tests (tests/firmware/test_soundlevel.py, test_noise_c.py) and the noise benchmark
(bench/noise.py) share them. numpy and scipy: the `dev` extra only.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from scipy import signal

from meetkit_tools import aweight_design as design
from meetkit_tools.dev.micropython import FIRMWARE_LIB, run_mpy

FS = 48000
SENS = -26.0  # dBFS at 94 dB SPL, as the tests' microphone
INT32 = (-(2**31), 2**31 - 1)
M30 = 2**30 - 1

_SRC = (FIRMWARE_LIB / "soundlevel.py").read_text()
COEF = {m[1]: int(m[2]) for m in re.finditer(r"^_(K1|K2|K3|C5|P5|C6|P6) = const\((\d+)\)", _SRC, re.M)}
A_GAIN_DB = float(re.search(r"^A_GAIN_DB = ([0-9.]+)", _SRC, re.M)[1])  # type: ignore[index]
WARM_TICKS = int(re.search(r"^WARM_TICKS = (\d+)", _SRC, re.M)[1])  # type: ignore[index]


# -- signals ---------------------------------------------------------------------------------------

def amplitude(spl_db: float) -> float:
    """Peak of a sine at `spl_db` in 24-bit units through the test microphone."""
    return 2**23 * 10 ** ((spl_db - 94.0 + SENS) / 20)


def spl_of(x: np.ndarray) -> float:
    """Flat level of 24-bit samples in dB SPL."""
    ms = np.mean(np.asarray(x, float) ** 2)
    return 10 * math.log10(ms / (2.0**46 / 2)) + 94.0 - SENS


def to_int24(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -(2**23), 2**23 - 1).astype(np.int64)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Periodic pink noise (1/f power, 20 Hz - 20 kHz), unit RMS."""
    spec = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    f = np.fft.rfftfreq(n, 1 / FS)
    band = (f >= 20) & (f <= 20000)
    spec[~band] = 0
    spec[band] /= np.sqrt(f[band])
    x = np.fft.irfft(spec, n)
    return x / np.sqrt(np.mean(x**2))


def traffic(n: int, rng: np.random.Generator, base_db: float = 50.0) -> np.ndarray:
    """Traffic-like sound: pink noise whose level swells by up to 30 dB as vehicles pass (one
    every 2-6 s, each a bump of 1-4 s), in 24-bit units at a base level of `base_db`."""
    t = np.arange(n) / FS
    env_db = np.zeros(n)
    at = 0.5
    while at < t[-1]:
        env_db = np.maximum(env_db, rng.uniform(10, 30) * np.exp(-(((t - at) / rng.uniform(0.5, 2.0)) ** 2)))
        at += rng.uniform(2, 6)
    return pink(n, rng) * amplitude(base_db) / math.sqrt(2) * 10 ** (env_db / 20)


def to_slots(x: np.ndarray) -> bytes:
    """24-bit samples as the ESP32's I2S hands them over: MSB-aligned in little-endian 32-bit slots."""
    return (np.asarray(x, np.int64) << 8).astype("<i4").tobytes()


# -- float64 references ------------------------------------------------------------------------------

def exact_a(x: np.ndarray) -> np.ndarray:
    """x weighted by the exact analytic A curve in the frequency domain (periodic signal)."""
    f = np.fft.rfftfreq(len(x), 1 / FS)
    g = np.zeros_like(f)
    g[1:] = 10 ** (design.a_exact_db(f[1:]) / 20)
    return np.fft.irfft(np.fft.rfft(np.asarray(x, float)) * g, len(x))


def design_filter(x: np.ndarray) -> np.ndarray:
    """The firmware's filter design in float64 (no rounding anywhere), normalised at 1 kHz."""
    y = np.asarray(x, float)
    for b, a in design.sections(COEF):
        y = signal.lfilter(b, a, y)
    return y / 10 ** (A_GAIN_DB / 20)


def fast_levels(y: np.ndarray) -> np.ndarray:
    """Fast time-weighted level (IEC 61672-1: tau 125 ms, per sample) of A-weighted samples, dB SPL,
    taken at the end of every millisecond."""
    alpha = 1 - math.exp(-1 / (0.125 * FS))
    f = signal.lfilter([alpha], [1, -(1 - alpha)], y * y)
    ms = f[47::48]
    return 10 * np.log10(np.maximum(ms, 1e-30) / (2.0**46 / 2)) + 94.0 - SENS


# -- the firmware under micropython ------------------------------------------------------------------

METER_RUN = r"""
import sys, json
from soundlevel import NoiseMeter
path = sys.argv[1]
cuts = json.loads(sys.stdin.read())
m = NoiseMeter(%(sens)r)
blk = 960
buf = bytearray(4 * blk)
out = []
done = 0
with open(path, "rb") as f:
    for cut in cuts:
        while done < cut:
            k = min(blk, cut - done)
            mv = memoryview(buf)[:4 * k]
            f.readinto(mv)
            m.process(mv, k)
            done += k
        out.append(m.take())
print(json.dumps(out))
"""


def run_meter(tmp: Path, x: np.ndarray, cuts: list[int]) -> list[dict]:
    """Feed 24-bit samples x to the firmware's NoiseMeter; take() after each sample count in cuts."""
    path = tmp / "audio.bin"
    path.write_bytes(to_slots(x))
    # the cuts go on stdin: a long argument crashes this micropython build ("uncaught NLR")
    res = run_mpy(METER_RUN % {"sens": SENS}, args=[str(path)], stdin=json.dumps(cuts), heapsize="4M",
                  timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode() + res.stdout.decode())
    return json.loads(res.stdout)


# -- the 32-bit twin ---------------------------------------------------------------------------------

def _chk(*vals: int) -> None:
    for v in vals:
        if not INT32[0] <= v <= INT32[1]:
            raise OverflowError(f"{v} leaves the 32-bit int")


class Twin:
    """The kernel _run in plain Python, every intermediate checked against the 32-bit range
    (OverflowError when one leaves it).
    `st` and `hist` mirror the firmware's arrays; `peaks` records the largest magnitude seen per
    named intermediate, so a test can show the headroom that is left."""

    def __init__(self) -> None:
        self.st = [0] * 40
        self.st[34] = WARM_TICKS
        self.hist = [0] * 1280
        self.tab = [int(math.log(1 + i / 256) / math.log(2) * 32768 + 0.5) for i in range(257)]
        self.peaks: dict[str, int] = {}

    def _peak(self, name: str, v: int) -> None:
        _chk(v)
        if abs(v) > self.peaks.get(name, 0):
            self.peaks[name] = abs(v)

    def run(self, samples: np.ndarray | list[int]) -> None:  # noqa: C901 (it mirrors one function)
        k1, k2, k3 = COEF["K1"], COEF["K2"], COEF["K3"]
        c5, p5, c6, p6 = COEF["C5"], COEF["P5"], COEF["C6"], COEF["P6"]
        st, pk = self.st, self._peak
        x1, d1, dr, z1, a1, ar, b1, br, c1, cr, e1, er, f1, fr, g1, gr, tpos, ah, al, zh, zl = st[:21]
        over = st[33]
        samples = [int(s) for s in samples]
        if st[35] == 0 and samples:
            x1 = samples[0]
            st[35] = 1
        for x in samples:
            if x > 8388543 or x < -8388544:  # the firmware: one unsigned compare
                over += 1
            t = d1 + dr
            pk("dc.t", t)
            q = t >> 13
            dr = t - (q << 13)
            d1 = x - x1 + d1 - q
            pk("dc.y", d1)
            x1 = x
            z = (d1 + 8) >> 4
            zl, zh = self._square(z, zl, zh, "z")
            t = k1 * a1 + ar
            pk("L1a.t", t)
            q = t >> 19
            ar = t - (q << 19)
            y = z - z1 + a1 - q
            pk("L1a.y", y)
            z1 = z
            t = k1 * b1 + br
            pk("L1b.t", t)
            q = t >> 19
            br = t - (q << 19)
            w = y - a1 + b1 - q
            pk("L1b.y", w)
            a1 = y
            t = k2 * c1 + cr
            pk("L2.t", t)
            q = t >> 16
            cr = t - (q << 16)
            y = w - b1 + c1 - q
            pk("L2.y", y)
            b1 = w
            t = k3 * e1 + er
            pk("L3.t", t)
            q = t >> 14
            er = t - (q << 14)
            w = y - c1 + e1 - q
            pk("L3.y", w)
            c1 = y
            t = c5 * e1 + p5 * f1 + fr
            pk("H5.c*x1", c5 * e1)
            pk("H5.p*y1", p5 * f1)
            pk("H5.t", t)
            q = t >> 11
            fr = t - (q << 11)
            y = w + q
            pk("H5.y", y)
            e1 = w
            t = c6 * f1 + p6 * g1 + gr
            pk("H6.c*x1", c6 * f1)
            pk("H6.p*y1", p6 * g1)
            pk("H6.t", t)
            q = t >> 11
            gr = t - (q << 11)
            w = y + q
            pk("H6.y", w)
            f1 = y
            g1 = w
            al, ah = self._square(w, al, ah, "a")
            tpos += 1
            if tpos < 48:
                continue
            tpos = 0
            self._tick(al, ah, zl, zh)
            ah = al = zh = zl = 0
        st[:21] = [x1, d1, dr, z1, a1, ar, b1, br, c1, cr, e1, er, f1, fr, g1, gr, tpos, ah, al, zh, zl]
        st[27] += len(samples)
        st[33] = over

    def _square(self, v: int, lo: int, hi: int, name: str) -> tuple[int, int]:
        if -4096 <= v < 4096:  # exact; 48 of them stay below 2**30: no carry
            self._peak(name + ".sq", v * v)
            lo += v * v
        else:
            v = (abs(v) + 32) >> 6
            self._peak(name + ".sq", v * v)
            v = v * v
            if lo > M30:
                lo -= M30 + 1
                hi += 1
            hi += v >> 18
            lo += (v & 262143) << 12
            self._peak(name + ".lo", lo)
            if lo > M30:
                lo -= M30 + 1
                hi += 1
        self._peak(name + ".lo", lo)
        self._peak(name + ".hi", hi)
        return lo, hi

    def _tick(self, al: int, ah: int, zl: int, zh: int) -> None:
        st = self.st
        if al > M30:
            al -= M30 + 1
            ah += 1
        if zl > M30:
            zl -= M30 + 1
            zh += 1
        if al > M30 or zl > M30:
            raise OverflowError(f"a tick's low energy word {max(al, zl)} is over 2**30 after its carry")
        for base, lo, hi in ((21, al, ah), (24, zl, zh)):
            u = st[base] + lo
            k = st[base + 1] + hi
            _chk(u, k)
            if u > M30:
                u -= M30 + 1
                k += 1
            if k > M30:
                k -= M30 + 1
                st[base + 2] += 1
            st[base], st[base + 1] = u, k
            _chk(st[base + 2])
        m, lo, e = ah, al, 30
        if m == 0:
            m, lo, e = lo, 0, 0
        if m > 0:
            while m < 4096:
                m = (m << 8) | (lo >> 22)
                lo = (lo << 8) & M30
                e -= 8
            while m < 1048576:
                m = (m << 1) | (lo >> 29)
                lo = (lo << 1) & M30
                e -= 1
            while m > 33554431:
                m >>= 4
                e += 4
            while m > 2097151:
                m >>= 1
                e += 1
            self._peak("G.m*alpha", m * 522)
            m = (m * 522) >> 8
            e -= 8
            while m > 2097151:
                m >>= 1
                e += 1
        gm, ge = st[28], st[29]
        if gm > 0:
            self._peak("G.gm*alpha", gm * 522)
            gm -= (gm * 522) >> 16
            if gm < 1048576:
                gm <<= 1
                ge -= 1
            if m > 0:
                if ge >= e:
                    if ge - e < 24:
                        gm += m >> (ge - e)
                elif e - ge < 24:
                    gm = m + (gm >> (e - ge))
                    ge = e
                else:
                    gm, ge = m, e
                if gm > 2097151:
                    gm >>= 1
                    ge += 1
            if ge < -64:
                gm = 0
        elif m > 0:
            gm, ge = m, e
        _chk(gm, ge)
        st[28], st[29] = gm, ge
        if st[34] > 0:
            st[34] -= 1
            return
        if gm > 0:
            j = (gm >> 12) & 255
            tab = self.tab
            lv = ((ge + 20) << 15) + tab[j] + (((tab[j + 1] - tab[j]) * (gm & 4095)) >> 12)
        else:
            lv = -(1 << 24)
        _chk(lv)
        if st[32] == 0:
            st[30] = st[31] = lv
        else:
            st[30] = max(st[30], lv)
            st[31] = min(st[31], lv)
        j = min(max((lv >> 10) - 160, 0), 1279)
        self.hist[j] += 1
        st[32] += 1
