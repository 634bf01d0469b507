# An I2S MEMS microphone (ICS-43434 / INMP441): 24-bit samples, MSB-aligned in 32-bit slots (the
# low byte is zero), little-endian as the ESP32 hands them over. The sound is white noise,
# approximately Gaussian (the sum of four 16-bit uniforms from a 64-bit LCG), at the scenario's
# `noise_dbspl` through the sensitivity `sens_dbfs` (dBFS at 94 dB SPL; 0 dBFS = the RMS of a
# full-scale sine), clipped at full scale; the level is set per block. `mic_unplugged` -> zeros.
# Generation runs in viper straight into the reader's buffer: nothing is allocated per block.
import array
import math
import micropython
import simcore as _c
from simbus import _zero

# standard deviation of the sum of four uniform 16-bit integers
_SIGMA = math.sqrt(4 * (65536 * 65536 - 1) / 12)
# Q24 gain for 0 dBFS: RMS = full scale (2**23) / sqrt(2)
_G0 = 8388608 / math.sqrt(2) / _SIGMA * 16777216


@micropython.viper
def _noise(buf: ptr32, n: int, stride: int, st: ptr32, g: int, bits: int):
    s = (uint(st[0]) & uint(0xFFFFFFFF)) | (uint(st[1]) << 32)
    a = uint(2862933555777941757)
    c = uint(3037000493)
    i = 0
    end = n * stride
    hi = 8388607
    lo = -8388608
    b16 = ptr16(buf)
    while i < end:
        s = s * a + c
        u = s >> 32
        x = int((u >> 16) + (u & 0xFFFF))
        s = s * a + c
        u = s >> 32
        x += int((u >> 16) + (u & 0xFFFF)) - 131070
        v = (x * g + 0x800000) >> 24
        if v > hi:
            v = hi
        elif v < lo:
            v = lo
        if bits == 32:
            buf[i] = v << 8
        else:
            b16[i] = v >> 8
        i += stride
    st[0] = int(s & 0xFFFFFFFF)
    st[1] = int(s >> 32)


class Device:
    @micropython.native
    def __init__(self, cfg, kind):
        self.sens = float(cfg.get("sens_dbfs", -26.0))
        self._st = array.array("I", (_c.seed * 2654435761 & 0xFFFFFFFF, 0x9E3779B9))

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
        if g > 1 << 36:
            g = 1 << 36
        _noise(buf, n, ch, self._st, g, bits)
