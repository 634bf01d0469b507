# Sound level from an I2S MEMS microphone (ICS-43434 / INMP441: 32-bit slots, 24 data bits).
# First version: a flat (Z-weighted) level per second and their energy mean per interval. The
# A-weighted fixed-point pipeline replaces the kernel here (issue 4); the interface stays.
import array
import math
import micropython
from stats import num

# Each sample, rounded to its top 16 bits, is squared (<= 2**30) and summed into a low word kept below 2**29 by
# carrying into a high word (units of 2**29), so no intermediate leaves the ESP32's 32-bit viper
# int (and every literal stays a small int). 16 bits keep 96 dB of range above the 16-bit LSB,
# enough for this first, flat level.
# Mean square of a full-scale sine in 16-bit units: 0 dBFS.
_FS_MS = 32768.0 * 32768.0 / 2


@micropython.viper
def _sum_squares(buf: ptr16, n: int, acc: ptr32):
    lo = int(acc[0])
    hi = int(acc[1])
    i = 1  # little-endian: the high half of sample k is halfword 2k+1
    end = 2 * n
    while i < end:
        # ptr16 loads zero-extend: sign-extend by hand, then round with the low half's top bit
        # (truncating would bias quiet levels up); |v| <= 32768, so v * v <= 2**30.
        v = ((buf[i] ^ 0x8000) - 0x8000) + (buf[i - 1] >> 15)
        lo += v * v
        if lo > 0x1FFFFFFF:
            hi += lo >> 29
            lo &= 0x1FFFFFFF
        i += 2
    acc[0] = lo
    acc[1] = hi


class SoundLevel:
    """Reads the microphone in 20 ms blocks; a level per whole second, aligned to the caller's
    intervals by flush() (48 kHz / 50 = 960 samples: a second is exactly 50 blocks)."""

    def __init__(self, i2s_id, sck, ws, sd, sens_dbfs, offset_db=0.0, rate=48000):
        from machine import I2S, Pin  # here, so the level arithmetic runs without a board

        self.rate = rate
        self.block = rate // 50
        self._buf = bytearray(self.block * 4)
        self._acc = array.array("i", (0, 0))
        self._n = 0
        self._i2s = I2S(i2s_id, sck=Pin(sck), ws=Pin(ws), sd=Pin(sd), mode=I2S.RX, bits=32,
                        format=I2S.MONO, rate=rate, ibuf=self.block * 4 * 8)
        # dB SPL = dBFS - sensitivity (dBFS at 94 dB SPL) + 94 + the node's calibration offset.
        self._to_spl = 94.0 - sens_dbfs + offset_db
        self.level = None  # the last complete second, dB SPL (None: the microphone gave silence)

    def read(self):
        """Read one block (blocks until the I2S DMA has it). True when a second is complete."""
        self._i2s.readinto(self._buf)
        _sum_squares(self._buf, self.block, self._acc)
        self._n += self.block
        if self._n < self.rate:
            return False
        self.level = self._take()
        return True

    def flush(self):
        """End the second early (an interval ends): (level of the part, its length in s) or None."""
        if not self._n:
            return None
        n = self._n
        db = self._take()
        return None if db is None else (db, n / self.rate)

    def _take(self):
        ms = (self._acc[1] * 536870912.0 + self._acc[0]) / self._n
        self._acc[0] = 0
        self._acc[1] = 0
        self._n = 0
        # A digital microphone never gives exact zeros: silence means it is absent or dead.
        return 10.0 * math.log10(ms / _FS_MS) + self._to_spl if ms > 0 else None


class LevelStat:
    """Energy mean of an interval's sound (weighted by duration), min and max of its whole seconds."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.n = 0
        self.energy = 0.0
        self.weight = 0.0
        self.lo = 0.0
        self.hi = 0.0

    def add(self, db, seconds=1.0):
        if seconds >= 1.0:
            if self.n == 0 or db < self.lo:
                self.lo = db
            if self.n == 0 or db > self.hi:
                self.hi = db
            self.n += 1
        self.energy += 10.0 ** (db / 10.0) * seconds
        self.weight += seconds

    def result(self):
        """'[Leq,min,max,n]' as JSON text, or 'null' without a complete second."""
        if not self.n:
            return "null"
        leq = 10.0 * math.log10(self.energy / self.weight)
        return "[%s,%s,%s,%d]" % (num(leq, 1), num(self.lo, 1), num(self.hi, 1), self.n)
