"""The I2S microphone model: pink noise whose A-weighted level is the scenario's `noise_dbspl`
through the sensitivity, its flat level Z_MINUS_A_DB higher; sample format, DMA timing and losses.

The truth is proved twice: analytically (the generator restated below reproduces the simulator's
samples bit for bit, and numpy integrates its transfer function under the exact IEC 61672-1 A curve)
and on captured audio (FFT, the same A curve)."""

from __future__ import annotations

import math
import re
from array import array
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import lfilter

from meetkit_tools.dev.micropython import SIM_MPY, run_mpy
from tests.sim.harness import DEVICES, run_sim, scenario

FS = 48000
SENS = -26.0                                         # DEVICES' ics43434, dBFS at 94 dB SPL
FULL_SCALE_SINE = 20 * math.log10(2**23 / math.sqrt(2))  # 0 dBFS in 24-bit units
Z_MINUS_A_DB = float(re.search(r"^Z_MINUS_A_DB = ([-0-9.]+)",  # type: ignore[index]
                               (SIM_MPY / "dev_mic.py").read_text(), re.M)[1])

# The generator of tools/sim/mpy/dev_mic.py, restated (test_the_generator_is_restated_bit_exactly_...
# holds the two together): white x = two 16-bit uniforms from a 64-bit LCG minus their mean; Paul
# Kellet's refined pink filter b_i = b_i * a_i + x * c_i, pink = sum b_i + x * d0 + x[-1] * d1
# (a_i Q24, c_i and d Q12); a DC blocker with pole 1 - 2**-11; out = ((y >> 15) * g) >> 24.
POLES_Q24 = (16758090, 16665144, 16257122, 14537458, 9227469, -12777528)
GAINS_Q12 = (227, 308, 630, 1272, 2183, -69)
D0_Q12, D1_Q12 = 2196, 475
HP_SHIFT = 11
VAR_X = 2 * (65536 * 65536 - 1) / 12
WARM = 48 * 256                                      # samples run in when the device is made
LCG_A, LCG_C, M64 = 2862933555777941757, 3037000493, (1 << 64) - 1

# IEC 61672-1 A weighting: the analytic curve, 0 dB at 1 kHz
A_POLES = (20.598997, 107.65265, 737.86223, 12194.217)


def a_weight_power(f: np.ndarray | float) -> np.ndarray:
    """|A(f)|^2 (power), 1 at 1 kHz."""
    def ra2(f):
        f2 = np.asarray(f, dtype=np.float64) ** 2
        f1, f2p, f3, f4 = (p * p for p in A_POLES)
        return f4 ** 2 * f2 ** 4 / ((f2 + f1) ** 2 * (f2 + f2p) * (f2 + f3) * (f2 + f4) ** 2)
    return ra2(f) / ra2(1000.0)


def response(f: np.ndarray) -> np.ndarray:
    """The generator's transfer function from x to y (in units of x), at frequencies f (Hz)."""
    z1 = np.exp(-2j * np.pi * f / FS)
    h = (D0_Q12 + D1_Q12 * z1).astype(complex)
    for a, c in zip(POLES_Q24, GAINS_Q12):
        h += c / (1 - a / 2**24 * z1)
    return h / 4096 * (1 - z1) / (1 - (1 - 2.0**-HP_SHIFT) * z1)


def power_gains(n: int = 1 << 20) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Frequencies, |H|^2 on a midpoint grid over 0..fs/2, and the flat and A-weighted power gains
    (means of |H|^2 and |H|^2 |A|^2)."""
    f = (np.arange(n) + 0.5) * (FS / 2) / n
    p = np.abs(response(f)) ** 2
    return f, p, float(p.mean()), float((p * a_weight_power(f)).mean())


def twin(seed: int, gains: list[int], block: int) -> list[int]:
    """The simulator's 24-bit samples for blocks of `block` frames at gains g (bit-exact), from a
    device made with `seed`. Python ints do not wrap: the 64-bit headroom is asserted."""
    s = (seed * 2654435761 & 0xFFFFFFFF) | 0x9E3779B9 << 32
    b = [0] * 6
    w = q = z = 0
    out = []
    lim = 1 << 63
    for k, g in enumerate([0] * (WARM // block) + gains):
        for _ in range(block):
            s = (s * LCG_A + LCG_C) & M64
            u = s >> 32
            x = (u >> 16) + (u & 0xFFFF) - 65535
            p = w
            for i in range(6):
                m = b[i] * POLES_Q24[i]
                assert -lim < m < lim
                b[i] = ((m + (1 << 23)) >> 24) + x * GAINS_Q12[i]
                p += b[i]
            p += x * D0_Q12
            w = x * D1_Q12
            y = p - q + z - ((z + (1 << (HP_SHIFT - 1))) >> HP_SHIFT)
            q, z = p, y
            m = ((y + (1 << 14)) >> 15) * g
            assert -lim < m < lim
            v = (m + (1 << 23)) >> 24
            if k >= WARM // block:
                out.append(min(max(v, -(1 << 23)), (1 << 23) - 1))
    return out


def mpy_gains(*spl: float) -> list[int]:
    """The gains the simulator's dev_mic uses for these true levels (its own float arithmetic)."""
    code = ("import dev_mic\nprint(*[int(dev_mic._G0 * 10 ** ((l - 94.0 + %r) / 20) + 0.5) for l in %r])"
            % (SENS, list(spl)))
    p = run_mpy(code, path=[SIM_MPY])
    assert p.returncode == 0, p.stderr
    return [int(v) for v in p.stdout.split()]


CAPTURE = """
import time
from machine import I2S, Pin
i2s = I2S(0, sck=Pin(26), ws=Pin(25), sd=Pin(33), mode=I2S.RX, bits=%(bits)d, format=I2S.%(fmt)s,
          rate=48000, ibuf=32768)
buf = bytearray(4096)
t0 = time.ticks_us()
with open("cap.bin", "wb") as f:
    for i in range(%(blocks)d):
        i2s.readinto(buf)
        f.write(buf)
print("@", time.ticks_diff(time.ticks_us(), t0))
"""


def capture(tmp: Path, sc: dict, blocks: int, bits: int = 32, fmt: str = "MONO", devices: dict | None = None,
            seed: int = 1):
    r = run_sim(tmp, CAPTURE % {"blocks": blocks, "bits": bits, "fmt": fmt}, scenario=sc,
                devices=devices, until_ms=None, seed=seed)
    assert r.code == 2, r.out + r.err
    a = array("i" if bits == 32 else "h")
    a.frombytes((r.flash / "cap.bin").read_bytes())
    return a, int(r.lines[0].split()[1]), r


def spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided power spectrum of x: frequencies and powers that add up to the mean square."""
    n = len(x)
    p = np.abs(np.fft.rfft(x)) ** 2 / n**2
    p[1:(n + 1) // 2] *= 2
    return np.fft.rfftfreq(n, 1 / FS), p


def levels_dbspl(x: np.ndarray) -> tuple[float, float]:
    """The Z and A levels (dB SPL through the sensitivity) of 24-bit samples x."""
    f, p = spectrum(x)
    to_spl = 94.0 - SENS - FULL_SCALE_SINE
    return 10 * math.log10(p.sum()) + to_spl, 10 * math.log10((p * a_weight_power(f)).sum()) + to_spl


def test_the_truth_is_the_generators_exact_a_weighted_level() -> None:
    """Analytic: the constants in dev_mic are those of its transfer function under the A curve."""
    f, p, pz, pa = power_gains()
    # the flat gain two ways: the spectrum's mean and the impulse response's energy
    imp = np.zeros(1 << 17)                                 # the slowest pole: 2048 samples
    imp[0] = 1.0
    h = D0_Q12 * imp + np.concatenate(([0.0], D1_Q12 * imp[:-1]))
    for a, c in zip(POLES_Q24, GAINS_Q12):
        h += lfilter([c], [1, -a / 2**24], imp)
    h = lfilter([1, -1], [1, -(1 - 2.0**-HP_SHIFT)], h) / 4096
    assert float((h**2).sum()) == pytest.approx(pz, rel=1e-9)
    assert Z_MINUS_A_DB == pytest.approx(10 * math.log10(pz / pa), abs=5e-5)
    r = run_mpy("import dev_mic\nprint(repr(dev_mic._G0))", path=[SIM_MPY])
    g0 = float(r.stdout)
    assert g0 == pytest.approx(2.0**50 / math.sqrt(2 * VAR_X * pa), rel=1e-9)
    # pink: the octave bands (base 2, 31.25 Hz .. 16 kHz) carry the same power within 0.1 dB
    bands = []
    for k in range(-6, 5):
        fc = 1000 * 2.0**k
        sel = (f >= fc / math.sqrt(2)) & (f < fc * math.sqrt(2))
        bands.append(10 * math.log10(p[sel].sum()))
    main = np.array(bands[1:])
    print(f"\nZ - A = {10 * math.log10(pz / pa):.5f} dB; octave bands 16 Hz .. 16 kHz re their mean (31.5 Hz "
          f".. 16 kHz): {np.round(np.array(bands) - main.mean(), 3).tolist()}")
    assert np.all(np.abs(main - main.mean()) < 0.1)
    assert abs(bands[0] - main.mean()) < 0.5                 # 16 Hz: the DC blocker (3.7 Hz) begins
    # below 0.9 Hz (the node's DC blocker) lies less than 0.1 % of the power
    assert p[f < 0.9].sum() / p.sum() < 1e-3
    # 64-bit headroom, worst case: each section's state times its pole, and (y >> 15) * 2**41
    xmax = 65535
    for a, c in zip(POLES_Q24, GAINS_Q12):
        assert abs(c) / (1 - abs(a) / 2**24) * xmax * abs(a) < 2**59
    assert np.abs(h).sum() * 4096 * xmax / 2**15 * 2**41 < 2**62


def test_the_generator_is_restated_bit_exactly_and_the_level_follows_the_scenario_block_by_block(
        tmp_path: Path) -> None:
    sc = scenario(noise_dbspl={"points": [[0, 50.0], [2, 50.0], [2, 80.0]]})
    a, _, _ = capture(tmp_path, sc, blocks=141)               # ~3 s
    g50, g80 = mpy_gains(50.0, 80.0)
    want = twin(1, [g50] * 94 + [g80] * 47, 1024)             # blocks starting before 2 s: 50 dB
    assert list(a) == [v << 8 for v in want]
    x = np.asarray(a, dtype=np.float64) / 256
    z50, _ = levels_dbspl(x[:94 * 1024])
    z80, _ = levels_dbspl(x[94 * 1024:])
    assert abs(z50 - 50 - Z_MINUS_A_DB) < 1.0 and abs(z80 - 80 - Z_MINUS_A_DB) < 1.0


# At 110 dB (-6 dBFS flat) 0.3 % of the samples clip, as the microphone would: both levels read
# about 0.02 dB low. Elsewhere the errors are the captures' own spread (0.005 dB LA, 0.017 dB LZ).
@pytest.mark.parametrize("spl,seed", [(40.0, 1), (62.5, 2), (94.0, 3), (110.0, 4)])
def test_the_a_weighted_level_is_the_truth_and_the_flat_level_z_minus_a_above(
        tmp_path: Path, spl: float, seed: int) -> None:
    blocks = 8192                                  # 2**23 samples, 175 s: Z's own spread 0.017 dB
    a, us, r = capture(tmp_path, scenario(noise_dbspl=spl), blocks=blocks, seed=seed)
    n = len(a)
    assert n == blocks * 1024
    assert abs(us - n / FS * 1e6) < 100                      # readinto blocks for the audio's duration
    raw = np.frombuffer(a, dtype=np.int32)
    assert not np.any(raw & 0xFF)                            # 24 data bits, MSB-aligned
    assert r.state["stats"]["i2s_samples_read"] == n and r.state["stats"]["i2s_samples_lost"] == 0
    z, la = levels_dbspl(raw.astype(np.float64) / 256)
    print(f"\n{spl} dB: LA {la:.4f} (error {la - spl:+.4f}), "
          f"LZ {z:.4f} (error {z - spl - Z_MINUS_A_DB:+.4f})")
    assert la == pytest.approx(spl, abs=0.05)
    assert z == pytest.approx(spl + Z_MINUS_A_DB, abs=0.05)


def test_the_sound_is_pink(tmp_path: Path) -> None:
    a, _, _ = capture(tmp_path, scenario(noise_dbspl=94.0), blocks=8192, seed=5)
    x = np.frombuffer(a, dtype=np.int32).astype(np.float64) / 256
    f, p = spectrum(x)
    bands = []
    for k in range(-5, 5):                                    # octaves 31.25 Hz .. 16 kHz (base 2)
        fc = 1000 * 2.0**k
        bands.append(10 * math.log10(p[(f >= fc / math.sqrt(2)) & (f < fc * math.sqrt(2))].sum()))
    rel = np.array(bands) - np.mean(bands)
    print(f"\noctave bands 31.5 Hz .. 16 kHz re their mean: {np.round(rel, 3).tolist()}")
    assert np.all(np.abs(rel) <= 1.0)
    # close to Gaussian: triangular white (kurtosis 2.4) gives 3 + (2.4 - 3) * sum h^4 / (sum h^2)^2
    # = 2.927 through this filter
    m2, m4 = np.mean(x**2), np.mean(x**4)
    assert 2.88 < m4 / m2**2 < 2.98


def test_loud_sound_clips_at_full_scale(tmp_path: Path) -> None:
    a, _, _ = capture(tmp_path, scenario(noise_dbspl=130.0), blocks=20)
    assert max(a) == 0x7FFFFF00 and min(a) == -0x80000000


def test_16_bit_and_stereo_formats(tmp_path: Path) -> None:
    """The same sound (same seed, constant level): 16-bit samples are the 32-bit ones' top halves,
    a stereo frame's left slot holds them and its right slot zero."""
    mono, _, _ = capture(tmp_path / "m", scenario(noise_dbspl=94.0), blocks=470)   # 10 s
    a16, _, _ = capture(tmp_path / "a", scenario(noise_dbspl=94.0), blocks=235, bits=16)
    assert len(a16) == 235 * 2048 == len(mono)
    assert list(a16) == [v >> 16 for v in mono]
    x = np.asarray(a16, dtype=np.float64) * 256
    assert levels_dbspl(x)[1] == pytest.approx(94.0, abs=0.1)
    st, _, _ = capture(tmp_path / "b", scenario(noise_dbspl=94.0), blocks=940, fmt="STEREO")
    left, right = st[0::2], st[1::2]
    assert not any(right) and left == mono


def test_an_unplugged_microphone_gives_zeros(tmp_path: Path) -> None:
    sc = scenario()
    sc["faults"] = [{"kind": "mic_unplugged", "from": 0, "to": 60}]
    a, _, _ = capture(tmp_path, sc, blocks=20)
    assert not any(a)
    a, _, _ = capture(tmp_path / "none", scenario(), blocks=5, devices=dict(DEVICES, i2s={}))
    assert not any(a)


def test_samples_the_reader_is_too_late_for_are_lost_and_counted(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time
        from machine import I2S, Pin
        i2s = I2S(0, sck=Pin(26), ws=Pin(25), sd=Pin(33), mode=I2S.RX, bits=32, format=I2S.MONO,
                  rate=48000, ibuf=32768)
        buf = bytearray(4096)
        i2s.readinto(buf)
        t1 = time.ticks_us()
        time.sleep_ms(1000)
        t2 = time.ticks_us()
        i2s.readinto(buf)          # DMA holds more than a block: no wait
        t3 = time.ticks_us()
        for i in range(4):
            i2s.readinto(buf)      # the 4096 frames the DMA kept, then fresh audio
        print("@", time.ticks_diff(t3, t2), time.ticks_diff(time.ticks_us(), t3))
        """, until_ms=None)
    wait1, wait2 = map(int, r.lines[0].split()[1:])
    assert wait1 <= 20 and 1000 < wait2 < 25000
    # 16 DMA buffers of 256 frames (ibuf // 2048) hold 4096 frames; the rest of the second is gone
    have = (21334 + 10 + 1_000_000) * 48000 // 1_000_000 // 256 * 256
    assert r.state["stats"]["i2s_samples_lost"] == have - 1024 - 4096
    assert r.state["stats"]["i2s_samples_read"] == 6 * 1024
