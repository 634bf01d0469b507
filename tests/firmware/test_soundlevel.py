"""The flat sound level's viper kernel, run under micropython, against a float reference and a
plain-Python twin that checks every intermediate fits the ESP32's 32-bit viper int."""

from __future__ import annotations

import json
import random

from tests.mpy import run_mpy

INT32 = (-(2**31), 2**31 - 1)


def twin_sum_squares(samples: list[int]) -> tuple[int, int]:
    """The kernel step by step, asserting the 32-bit range at every intermediate."""
    lo = hi = 0
    for s in samples:
        v = (s >> 16) & 0xFFFF
        v = (v ^ 0x8000) - 0x8000 + ((s & 0xFFFF) >> 15)
        sq = v * v
        assert INT32[0] <= sq <= INT32[1]
        lo += sq
        assert INT32[0] <= lo <= INT32[1], lo
        if lo > 0x1FFFFFFF:
            hi += lo >> 29
            lo &= 0x1FFFFFFF
        assert 0 <= hi <= INT32[1]
    return lo, hi


KERNEL_RUN = r"""
import sys, json, array
from soundlevel import _sum_squares
cases = json.loads(sys.stdin.read())
out = []
for samples in cases:
    buf = bytearray(4 * len(samples))
    mv = memoryview(buf)
    import struct
    for i, s in enumerate(samples):
        struct.pack_into('<i', buf, 4 * i, s)
    acc = array.array('i', (0, 0))
    _sum_squares(buf, len(samples), acc)
    out.append([acc[0], acc[1]])
print(json.dumps(out))
"""


def test_kernel_matches_exact_sum_and_stays_32_bit() -> None:
    rng = random.Random(7)
    full = 2**31 - 256
    cases = [
        [full] * 48000,                                  # a second at positive full scale
        [-(2**31)] * 48000,                              # and at negative full scale: the worst case
        [((rng.randrange(-(2**23), 2**23)) << 8) for _ in range(48000)],
        [((rng.randrange(-300, 300)) << 8) for _ in range(4096)],  # quiet: below the 16-bit LSB
        [0] * 1024,
    ]
    res = run_mpy(KERNEL_RUN, stdin=json.dumps(cases), heapsize="64M")
    assert res.returncode == 0, res.stderr.decode() + res.stdout.decode()
    got = json.loads(res.stdout)
    for samples, (lo, hi) in zip(cases, got):
        exact = sum(round(s / 65536) ** 2 if (s & 0xFFFF) != 0x8000 else ((s >> 16) + 1) ** 2 for s in samples)
        assert hi * 2**29 + lo == exact
        assert (lo, hi) == twin_sum_squares(samples)


LEVEL_RUN = r"""
import sys, json, math
from soundlevel import _sum_squares, _FS_MS
import array
amps = json.loads(sys.stdin.read())
out = []
for a in amps:
    n = 48000
    buf = bytearray(4 * n)
    import struct
    for i in range(n):
        struct.pack_into('<i', buf, 4 * i, int(a * math.sin(2 * math.pi * 1000 * i / 48000)) << 8)
    acc = array.array('i', (0, 0))
    _sum_squares(buf, n, acc)
    ms = (acc[1] * 536870912.0 + acc[0]) / n
    out.append(10 * math.log10(ms / _FS_MS))
print(json.dumps(out))
"""


def test_full_scale_sine_is_0_dbfs_and_levels_are_linear() -> None:
    # 24-bit amplitudes for 0, -20, -40 and -60 dBFS sines
    amps = [(2**23 - 1) * 10 ** (-d / 20) for d in (0, 20, 40, 60)]
    res = run_mpy(LEVEL_RUN, stdin=json.dumps(amps))
    assert res.returncode == 0, res.stderr.decode()
    got = json.loads(res.stdout)
    for want, have in zip((0, -20, -40, -60), got):
        assert abs(have - want) < 0.05, (want, have)
