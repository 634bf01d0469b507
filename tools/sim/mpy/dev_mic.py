# An I2S MEMS microphone (ICS-43434 / INMP441): 24-bit samples, MSB-aligned in 32-bit slots (the
# low byte is zero), little-endian as the ESP32 hands them over, clipped at full scale.
# `mic_unplugged` -> zeros.
#
# The sound is PINK noise (equal energy per octave) whose A-WEIGHTED level is the scenario's
# `noise_dbspl` (dB re 20 uPa) through the sensitivity `sens_dbfs` (dBFS at 94 dB SPL; 0 dBFS = the
# RMS of a full-scale sine); its flat (Z) level is Z_MINUS_A_DB higher. The level is set per block.
#
# The generator, per sample, in 64-bit fixed point (the host's viper int: simulator code only):
#   white: x = the sum of two 16-bit uniforms (the top 32 bits of a 64-bit LCG step) minus their
#          mean: triangular, variance 2 * (2**32 - 1) / 12 (the filter's output is close to
#          Gaussian: kurtosis 2.93)
#   pink:  Paul Kellet's "refined" pink filter (six parallel one-pole sections b0..b5 plus a direct
#          and a one-sample-delayed term), poles Q24, gains Q12, state in units of 2**-12 of x:
#          within +-0.04 dB of an exact -3 dB/octave slope from 10 Hz to 24 kHz at 48 kHz
#   DC:    a first-order DC blocker y = p - p[-1] + y[-1] * (1 - 2**-11) (3.7 Hz), so that the flat
#          level does not depend on a meter's own low-frequency limit (the node's DC blocker at
#          0.9 Hz takes 0.02 dB of it). The octave bands from 31.5 Hz to 16 kHz are within 0.07 dB
#          of their mean power; the 16 Hz band is 0.24 dB below it.
#   level: out = ((y >> 15) * g) >> 24 (rounded) in 24-bit units, g set per block from the truth.
# The firmware reads 48 kHz only (board.mic.rate), and the design is for 48 kHz. Generation runs in
# viper straight into the reader's buffer: nothing is allocated per block. The filter state carries
# over from block to block; it is run in for 0.26 s when the device is made.
#
# The truth is exact in expectation: with H the generator's transfer function from x (the quantized
# coefficients below) and A the analytic IEC 61672-1 A curve (poles 20.598997, 107.65265,
# 737.86223 and 12194.217 Hz, 0 dB at 1 kHz), _PZ = mean |H|^2 and _PA = mean |H|^2 |A|^2 over
# 0 .. 24 kHz, computed with numpy. Z is the flat level of the whole band (0 to 24 kHz: the samples'
# RMS; 8.9 % of it lies below 10 Hz, 2.2 % above 20 kHz). tests/sim/test_mic.py restates the
# generator bit-exactly, recomputes these constants and measures both levels and the octave bands on
# captured audio. Loud sound clips as on the board: at LA 110 dB with -26 dBFS, 0.30 % of the
# samples, which takes 0.019 dB off the A-weighted level and 0.022 dB off the flat one.
import array
import math
import micropython
import simcore as _c
from simbus import _zero

# The filter's coefficients are literals in _noise (names would cost the firmware heap: every new
# name is a qstr, and the qstr pool grows in 7 KB steps). Kellet's refined filter, quantized,
# b_i = b_i * a_i + x * c_i, pink = sum b_i + x * d0 + x[-1] * d1:
#   a_i (Q24): 16758090 (0.99886), 16665144 (0.99332), 16257122 (0.96900), 14537458 (0.86650),
#              9227469 (0.55000), -12777528 (-0.7616)
#   c_i (Q12): 227 (0.0555179), 308 (0.0750759), 630 (0.1538520), 1272 (0.3104856),
#              2183 (0.5329522), -69 (-0.0168980)
#   d0, d1 (Q12): 2196 (0.5362), 475 (0.115926)
# x has the variance of two uniform 16-bit integers, 2 * (65536**2 - 1) / 12. The generator's
# power gains (x-domain, see above): _PZ = 8.46938612, _PA = 3.5905939115.
Z_MINUS_A_DB = 3.7269     # 10 * log10(_PZ / _PA): the flat level minus the A-weighted one
# g for an A-weighted level of 0 dBFS: out = x * H * g * 2**-27 in 24-bit units, whose A-weighted
# RMS must be that of a full-scale sine, 2**23 / sqrt(2): g = 2**50 / sqrt(2 * var(x) * _PA).
# g is capped at 2**41 (+43 dB: everything clips long before): |y >> 15| < 2**19.3 (the l1 norm of
# H, 76.2, times max |x| in state units), so the products stay below 2**60.3.
_G0 = 2.0 ** 50 / math.sqrt(2 * 2 * (65536 * 65536 - 1) / 12 * 3.5905939115)


@micropython.viper
def _noise(buf: ptr32, n: int, stride: int, st: ptr32, g: int, bits: int):
    # state: 10 64-bit words as (low, high) 32-bit pairs (ptr32 loads: masked, sign-extended):
    # s the LCG; a..f Kellet's sections b0..b5; w = x[-1] * d1; q the last pink value; z the last
    # DC-blocked one
    s = (uint(st[0]) & uint(0xFFFFFFFF)) | (uint(st[1]) << 32)
    a = (((st[3] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[2] & 0xFFFFFFFF)
    b = (((st[5] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[4] & 0xFFFFFFFF)
    c = (((st[7] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[6] & 0xFFFFFFFF)
    d = (((st[9] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[8] & 0xFFFFFFFF)
    e = (((st[11] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[10] & 0xFFFFFFFF)
    f = (((st[13] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[12] & 0xFFFFFFFF)
    w = (((st[15] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[14] & 0xFFFFFFFF)
    q = (((st[17] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[16] & 0xFFFFFFFF)
    z = (((st[19] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) << 32 | (st[18] & 0xFFFFFFFF)
    i = 0
    end = n * stride
    hi = 8388607
    lo = -8388608
    b16 = ptr16(buf)
    while i < end:
        # white: an LCG step, two 16-bit uniforms from its top half
        s = s * uint(2862933555777941757) + uint(3037000493)
        u = s >> 32
        x = int((u >> 16) + (u & 0xFFFF)) - 65535
        # pink (state in units of 2**-12 of x; the products stay below 2**58)
        a = ((a * 16758090 + 8388608) >> 24) + x * 227
        b = ((b * 16665144 + 8388608) >> 24) + x * 308
        c = ((c * 16257122 + 8388608) >> 24) + x * 630
        d = ((d * 14537458 + 8388608) >> 24) + x * 1272
        e = ((e * 9227469 + 8388608) >> 24) + x * 2183
        f = ((f * -12777528 + 8388608) >> 24) - x * 69
        p = a + b + c + d + e + f + x * 2196 + w
        w = x * 475
        # DC blocker, pole 1 - 2**-11
        y = p - q + z - ((z + 1024) >> 11)
        q = p
        z = y
        # level
        v = (((y + 16384) >> 15) * g + 8388608) >> 24
        if v > hi:
            v = hi
        elif v < lo:
            v = lo
        if bits == 32:
            buf[i] = v << 8
        else:
            b16[i] = v >> 8
        i += stride
    st[0] = int(s & uint(0xFFFFFFFF))
    st[1] = int(s >> 32)
    st[2] = a & 0xFFFFFFFF
    st[3] = a >> 32
    st[4] = b & 0xFFFFFFFF
    st[5] = b >> 32
    st[6] = c & 0xFFFFFFFF
    st[7] = c >> 32
    st[8] = d & 0xFFFFFFFF
    st[9] = d >> 32
    st[10] = e & 0xFFFFFFFF
    st[11] = e >> 32
    st[12] = f & 0xFFFFFFFF
    st[13] = f >> 32
    st[14] = w & 0xFFFFFFFF
    st[15] = w >> 32
    st[16] = q & 0xFFFFFFFF
    st[17] = q >> 32
    st[18] = z & 0xFFFFFFFF
    st[19] = z >> 32


class Device:
    @micropython.native
    def __init__(self, cfg, kind):
        self.sens = float(cfg.get("sens_dbfs", -26.0))
        st = array.array("I", [0] * 20)
        st[0] = _c.seed * 2654435761 & 0xFFFFFFFF
        st[1] = 0x9E3779B9
        self._st = st
        # run the filters in (0.26 s, 6 time constants of the DC blocker) so that the first block
        # already has the stationary spectrum
        b = bytearray(1024)
        for _ in range(48):
            _noise(b, 256, 1, st, 0, 32)

    @micropython.native
    def fill(self, buf, n, ch, bits, t):
        """n frames of `ch` channels (`bits` 16 or 32) for the block starting at virtual time t."""
        ts = t / 1000000
        s = _c.scen
        off = s.fault("mic_unplugged", ts)
        if ch == 2 or off:
            _zero(buf, len(buf))
        if off:
            return
        db = s.value("noise_dbspl", ts, 45.0) - 94.0 + self.sens
        g = int(_G0 * 10 ** (db / 20) + 0.5)
        if g > 1 << 41:
            g = 1 << 41
        _noise(buf, n, ch, self._st, g, bits)
