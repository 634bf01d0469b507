"""The I2S microphone model: level through the sensitivity, sample format, DMA timing and losses."""

from __future__ import annotations

import math
from array import array
from pathlib import Path

import pytest

from tests.sim.harness import DEVICES, run_sim, scenario

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


def capture(tmp: Path, sc: dict, blocks: int, bits: int = 32, fmt: str = "MONO", devices: dict | None = None):
    r = run_sim(tmp, CAPTURE % {"blocks": blocks, "bits": bits, "fmt": fmt}, scenario=sc,
                devices=devices, until_ms=None)
    assert r.code == 2, r.out + r.err
    a = array("i" if bits == 32 else "h")
    a.frombytes((r.flash / "cap.bin").read_bytes())
    return a, int(r.lines[0].split()[1]), r


def rms_db(x: array, shift: int) -> float:
    ms = sum((v >> shift) ** 2 for v in x) / len(x)
    return 10 * math.log10(ms)


@pytest.mark.parametrize("spl", [40.0, 62.5, 94.0, 110.0])
def test_the_level_is_the_truth_through_the_sensitivity(tmp_path: Path, spl: float) -> None:
    a, us, r = capture(tmp_path, scenario(noise_dbspl=spl), blocks=470)   # 10 s of audio
    n = len(a)
    assert n == 470 * 1024
    assert abs(us - n / 48000 * 1e6) < 100                  # readinto blocks for the audio's duration
    assert all(v & 0xFF == 0 for v in a)                     # 24 data bits, MSB-aligned
    full_scale_sine = 20 * math.log10(2**23 / math.sqrt(2))  # 0 dBFS in 24-bit units
    want = spl - 94.0 + (-26.0) + full_scale_sine
    assert rms_db(a, 8) == pytest.approx(want, abs=0.05)
    # approximately Gaussian: the sum of four uniforms has a kurtosis of 2.7
    m2 = sum(float(v >> 8) ** 2 for v in a[:100000]) / 100000
    m4 = sum(float(v >> 8) ** 4 for v in a[:100000]) / 100000
    assert 2.6 < m4 / m2**2 < 2.8
    assert r.state["stats"]["i2s_samples_read"] == n and r.state["stats"]["i2s_samples_lost"] == 0


def test_loud_sound_clips_at_full_scale(tmp_path: Path) -> None:
    a, _, _ = capture(tmp_path, scenario(noise_dbspl=130.0), blocks=20)
    assert max(a) == 0x7FFFFF00 and min(a) == -0x80000000


def test_the_level_follows_the_scenario_block_by_block(tmp_path: Path) -> None:
    sc = scenario(noise_dbspl={"points": [[0, 50.0], [2, 50.0], [2, 80.0]]})
    a, _, _ = capture(tmp_path, sc, blocks=141)               # ~3 s
    per_block = [rms_db(a[i * 1024:(i + 1) * 1024], 8) for i in range(141)]
    base = 20 * math.log10(2**23 / math.sqrt(2)) - 120
    assert all(abs(l - (base + 50)) < 1.0 for l in per_block[:94])   # blocks starting before 2 s
    assert all(abs(l - (base + 80)) < 1.0 for l in per_block[94:])


def test_16_bit_and_stereo_formats(tmp_path: Path) -> None:
    a16, _, _ = capture(tmp_path / "a", scenario(noise_dbspl=94.0), blocks=50, bits=16)
    assert len(a16) == 50 * 2048
    assert rms_db(a16, 0) == pytest.approx(20 * math.log10(2**15 / math.sqrt(2)) - 26, abs=0.1)
    st, _, _ = capture(tmp_path / "b", scenario(noise_dbspl=94.0), blocks=50, fmt="STEREO")
    left, right = st[0::2], st[1::2]
    assert not any(right) and rms_db(left, 8) == pytest.approx(20 * math.log10(2**23 / math.sqrt(2)) - 26,
                                                                abs=0.1)


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
