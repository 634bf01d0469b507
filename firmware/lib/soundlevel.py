# Environmental noise indicators from an I2S MEMS microphone (ICS-43434 / INMP441: 48 kHz, 32-bit
# slots, 24 data bits), computed continuously in fixed point. No audio sample leaves this module:
# only the interval's indicators do (docs/noise.md, "Privacy").
#
# Per sample (_run, viper, 32-bit ints only, nothing allocated):
#   24-bit sample -> DC blocker (pole 1 - 2**-13, 0.9 Hz) -> 20 bits -> Z energy
#                 -> A weighting: six first-order sections -> A energy
#   The A filter is the analog curve's four zeros at DC and poles at 20.6 Hz (twice), 107.7 Hz and
#   737.9 Hz, plus two sections fitted to its top end (the 12.2 kHz double pole), with integer
#   coefficients chosen by tools/aweight_design.py: within 0.011 dB of the exact curve from 31.5 Hz
#   to 8 kHz. Each section feeds its rounding error back into the next sample (first-order error
#   feedback), so the 20.6 Hz poles do not turn rounding into a drifting offset or a limit cycle.
#   Worst-case magnitudes (l1 norms) keep every product below 2**31; tests/firmware prove it.
# Per millisecond (48 samples, a "tick"):
#   the tick's energy goes to the interval's sums (three 30-bit words: an hour at full scale fits);
#   Fast time weighting (IEC 61672-1, tau = 125 ms) updates G += alpha * (E - G) in a small
#   floating-point format (21-bit mantissa, exponent); its level (log2 from a table) gives LAFmax,
#   LAFmin and a histogram of 1/32-octave (0.094 dB) bins for LA10, LA50 and LA90.
import array
import math
import micropython
from micropython import const

# The A filter's coefficients (tools/aweight_design.py): k of the four low sections, Q19, Q19, Q16,
# Q14; c and p of the two top sections, Q11.
_K1 = const(1406)
_K2 = const(919)
_K3 = const(1508)
_C5 = const(242)
_P5 = const(553)
_C6 = const(580)
_P6 = const(31)

RATE = 48000
TICK = 48                  # samples per millisecond
NB = 1280                  # histogram bins, 1/32 octave of tick energy each: 120 dB
HBASE = 160                # bin 0 starts at tick energy 2**5 (about -113 dBFS)
WARM_TICKS = 1250          # 10 time constants (0.0002 dB) after a start before Fast levels count
# A filter at 1 kHz with the coefficients below (tools/aweight_design.py); the level is corrected
# by it so that A is 0 dB at 1 kHz.
A_GAIN_DB = 4.504185
# 0 dBFS: a full-scale sine, in the 20-bit units of the filters: (2**19)**2 / 2
FS_MS = 2.0 ** 37
_LOG2_DB = 10.0 * math.log10(2.0)

# log2(1 + i/256) * 2**15, i = 0..256: the fraction of the level's octave
_LOG2_TAB = array.array("H", (int(math.log(1 + i / 256) / math.log(2) * 32768 + 0.5) for i in range(257)))

# State words of _run (int32, sign-extended on load: the host's ptr32 loads zero-extend)
_S_WORDS = 40
_S_N = 27        # samples processed in the interval
# (28, 29: the Fast-weighted tick energy, mantissa and exponent; only _run uses them)
_S_MAX = 30      # highest and lowest Fast level in the interval (log2 of tick energy, Q15)
_S_MIN = 31
_S_TICKS = 32    # ticks in the histogram
_S_OVER = 33     # samples at the microphone's full scale
_S_WARM = 34     # ticks still to wait before Fast levels count
# (35: the DC blocker has seen its first sample; only _run uses it)


@micropython.viper
def _run(buf: ptr16, i: int, stop: int, n: int, st: ptr32, hist: ptr32, tab: ptr16):
    # (i and stop are arguments only to be the first locals: viper keeps those in registers; the
    # caller passes 0, 0)
    sh = 31
    sb = 1 << sh  # at run time: a literal 2**31 would be an object on the ESP32
    m30 = (1 << 30) - 1
    # the filters' state
    x1 = (st[0] ^ sb) - sb       # last 24-bit sample
    d1 = (st[1] ^ sb) - sb       # DC blocker: last output, carried error
    dr = (st[2] ^ sb) - sb
    z1 = (st[3] ^ sb) - sb       # last 20-bit sample
    a1 = (st[4] ^ sb) - sb       # A sections: last output, carried error
    ar = (st[5] ^ sb) - sb
    b1 = (st[6] ^ sb) - sb
    br = (st[7] ^ sb) - sb
    c1 = (st[8] ^ sb) - sb
    cr = (st[9] ^ sb) - sb
    e1 = (st[10] ^ sb) - sb
    er = (st[11] ^ sb) - sb
    f1 = (st[12] ^ sb) - sb
    fr = (st[13] ^ sb) - sb
    g1 = (st[14] ^ sb) - sb
    gr = (st[15] ^ sb) - sb
    tpos = (st[16] ^ sb) - sb    # samples into the current tick
    ah = (st[17] ^ sb) - sb      # tick energies, A and Z: units of 2**30, remainder
    al = (st[18] ^ sb) - sb
    zh = (st[19] ^ sb) - sb
    zl = (st[20] ^ sb) - sb
    over = (st[33] ^ sb) - sb
    if st[35] == 0 and n > 0:    # start the DC blocker on the first sample, not on a step from 0
        x1 = (((buf[1] ^ 0x8000) - 0x8000) << 8) | (buf[0] >> 8)
        st[35] = 1
    end = 2 * n
    while i < end:
        stop = i + 2 * (48 - tpos)  # the samples up to the next tick, or to the end of the block
        if stop > end:
            stop = end
        tpos += (stop - i) >> 1
        while i < stop:
            # little-endian 32-bit slot, 24 data bits on top: halfword 2k+1 is the high half
            x = (((buf[i + 1] ^ 0x8000) - 0x8000) << 8) | (buf[i] >> 8)
            i += 2
            if uint(x + 8388544) > uint(16777087):  # within 64 LSB of full scale (one compare)
                over += 1
            # DC blocker: y = x - x1 + y1 * (1 - 2**-13)
            t = d1 + dr
            q = t >> 13
            dr = t & 8191
            d1 = x - x1 + d1 - q
            x1 = x
            z = (d1 + 8) >> 4
            # Z energy. |z| < 2**12: the exact square; 48 of them stay below 2**30, so the common
            # case needs no carry. Above: rounded to 64 (under 2**-6 of the value), and carried.
            if uint(z + 4096) < uint(8192):
                zl += z * z
            else:
                v = z if z >= 0 else -z
                v = (v + 32) >> 6
                v = v * v
                if zl > m30:
                    zl -= m30 + 1
                    zh += 1
                zh += v >> 18
                zl += (v & 262143) << 12
                if zl > m30:
                    zl -= m30 + 1
                    zh += 1
            # A: (1 - z^-1) / (1 - (1 - k) z^-1) four times: y = x - x1 + y1 - k * y1
            t = _K1 * a1 + ar
            q = t >> 19
            ar = t & 524287
            y = z - z1 + a1 - q
            z1 = z
            t = _K1 * b1 + br
            q = t >> 19
            br = t & 524287
            w = y - a1 + b1 - q
            a1 = y
            t = _K2 * c1 + cr
            q = t >> 16
            cr = t & 65535
            y = w - b1 + c1 - q
            b1 = w
            t = _K3 * e1 + er
            q = t >> 14
            er = t & 16383
            w = y - c1 + e1 - q
            c1 = y
            # the top end: (1 + c z^-1) / (1 - p z^-1) twice, Q11
            t = _C5 * e1 + _P5 * f1 + fr
            q = t >> 11
            fr = t & 2047
            y = w + q
            e1 = w
            t = _C6 * f1 + _P6 * g1 + gr
            q = t >> 11
            gr = t & 2047
            w = y + q
            f1 = y
            g1 = w
            # A energy, as the Z energy
            if uint(w + 4096) < uint(8192):
                al += w * w
            else:
                v = w if w >= 0 else -w
                v = (v + 32) >> 6
                v = v * v
                if al > m30:
                    al -= m30 + 1
                    ah += 1
                ah += v >> 18
                al += (v & 262143) << 12
                if al > m30:
                    al -= m30 + 1
                    ah += 1
        if tpos < 48:
            break  # the block ended inside a tick
        tpos = 0
        # -- a tick: 1 ms of audio ------------------------------------------------------------
        if al > m30:  # below 2**31 (see above): one carry brings it below 2**30
            al -= m30 + 1
            ah += 1
        if zl > m30:
            zl -= m30 + 1
            zh += 1
        # the interval's sums, three 30-bit words each
        u = ((st[21] ^ sb) - sb) + al
        k = ((st[22] ^ sb) - sb) + ah
        if u > m30:
            u -= m30 + 1
            k += 1
        if k > m30:
            k -= m30 + 1
            st[23] = st[23] + 1
        st[21] = u
        st[22] = k
        u = ((st[24] ^ sb) - sb) + zl
        k = ((st[25] ^ sb) - sb) + zh
        if u > m30:
            u -= m30 + 1
            k += 1
        if k > m30:
            k -= m30 + 1
            st[26] = st[26] + 1
        st[24] = u
        st[25] = k
        # the tick's A energy as mantissa m in [2**20, 2**21) and exponent: E = m * 2**e
        m = ah
        lo = al
        e = 30
        if m == 0:
            m = lo
            lo = 0
            e = 0
        zh = 0
        zl = 0
        ah = 0
        al = 0
        if m > 0:
            while m < 4096:
                m = (m << 8) | (lo >> 22)
                lo = (lo << 8) & m30
                e -= 8
            while m < 1048576:
                m = (m << 1) | (lo >> 29)
                lo = (lo << 1) & m30
                e -= 1
            while m > 33554431:
                m >>= 4
                e += 4
            while m > 2097151:
                m >>= 1
                e += 1
            # alpha * E, alpha = 1 - exp(-1/125) = 522 / 2**16 (tau 125.05 ms)
            m = (m * 522) >> 8
            e -= 8
            while m > 2097151:
                m >>= 1
                e += 1
        # G * (1 - alpha)
        gm = (st[28] ^ sb) - sb
        ge = (st[29] ^ sb) - sb
        if gm > 0:
            gm -= (gm * 522) >> 16
            if gm < 1048576:
                gm <<= 1
                ge -= 1
            if m > 0:  # add the two: align to the larger exponent
                if ge >= e:
                    if ge - e < 24:
                        gm += m >> (ge - e)
                elif e - ge < 24:
                    gm = m + (gm >> (e - ge))
                    ge = e
                else:
                    gm = m
                    ge = e
                if gm > 2097151:
                    gm >>= 1
                    ge += 1
            if ge < -64:  # decayed to nothing (the microphone went silent)
                gm = 0
        elif m > 0:
            gm = m
            ge = e
        st[28] = gm
        st[29] = ge
        warm = (st[34] ^ sb) - sb
        if warm > 0:
            st[34] = warm - 1
            continue
        # the Fast level: log2(G) in Q15
        if gm > 0:
            j = (gm >> 12) & 255
            lv = ((ge + 20) << 15) + tab[j] + (((tab[j + 1] - tab[j]) * (gm & 4095)) >> 12)
        else:
            lv = -(1 << 24)
        if st[32] == 0:
            st[30] = lv
            st[31] = lv
        else:
            if lv > (st[30] ^ sb) - sb:
                st[30] = lv
            if lv < (st[31] ^ sb) - sb:
                st[31] = lv
        j = (lv >> 10) - 160
        if j < 0:
            j = 0
        elif j > 1279:
            j = 1279
        hist[j] = hist[j] + 1
        st[32] = st[32] + 1
    st[0] = x1
    st[1] = d1
    st[2] = dr
    st[3] = z1
    st[4] = a1
    st[5] = ar
    st[6] = b1
    st[7] = br
    st[8] = c1
    st[9] = cr
    st[10] = e1
    st[11] = er
    st[12] = f1
    st[13] = fr
    st[14] = g1
    st[15] = gr
    st[16] = tpos
    st[17] = ah
    st[18] = al
    st[19] = zh
    st[20] = zl
    st[27] = st[27] + n
    st[33] = over


@micropython.viper
def _exceeded(hist: ptr32, nb: int, count: int) -> int:
    """The bin that the top `count` ticks reach down to: the level exceeded by that many."""
    j = nb - 1
    c = 0
    while j > 0:
        c += hist[j]
        if c >= count:
            return j
        j -= 1
    return 0


@micropython.viper
def _clear(hist: ptr32, nb: int):
    j = 0
    while j < nb:
        hist[j] = 0
        j += 1


class NoiseMeter:
    """The indicators of the audio handed to process(), per interval. No I/O, no board: the node
    feeds it from the microphone, the tests from a file."""

    def __init__(self, sens_dbfs, offset_db=0.0, hist=None):
        self.st = array.array("i", bytes(4 * _S_WORDS))
        # NB uint32 counters; the node hands in a buffer it allocated at start, while the heap
        # still has 5 KB in one piece
        self.hist = bytearray(4 * NB) if hist is None else hist
        self.st[_S_WARM] = WARM_TICKS
        # dB SPL = dBFS - sensitivity (dBFS at 94 dB SPL) + 94 + the node's calibration offset
        self._spl = 94.0 - sens_dbfs + offset_db - 10.0 * math.log10(FS_MS)

    def process(self, buf, n):
        """n samples (32-bit little-endian slots, 24 data bits on top) from buf."""
        _run(buf, 0, 0, n, self.st, self.hist, _LOG2_TAB)

    def samples(self):
        return self.st[_S_N]

    def over_so_far(self):
        return self.st[_S_OVER]

    def _leq(self, i, g):
        st = self.st
        n = st[_S_N]
        e = (st[i + 2] * 1073741824.0 + st[i + 1]) * 1073741824.0 + st[i]
        return 10.0 * math.log10(e / n) + self._spl - g if n and e > 0 else None

    def level_so_far(self):
        """The interval's LAeq so far in dB SPL (None: no audio, or only zeros); nothing is reset."""
        return self._leq(21, A_GAIN_DB)

    def take(self):
        """The interval so far, then start the next one. A dict of dB SPL values (None where
        there was nothing to measure), 'n' samples processed and 'over' samples at full scale."""
        st = self.st
        n = st[_S_N]
        spl = self._spl
        r = {"n": n, "over": st[_S_OVER], "LAeq": None, "LZeq": None, "LAFmax": None,
             "LAFmin": None, "LA10": None, "LA50": None, "LA90": None}
        r["LAeq"] = self._leq(21, A_GAIN_DB)
        r["LZeq"] = self._leq(24, 0.0)
        ticks = st[_S_TICKS]
        if ticks:
            # a Fast level in Q15 log2 of a tick's energy (48 samples) -> dB SPL
            base = spl - A_GAIN_DB - 10.0 * math.log10(TICK)
            for key, i in (("LAFmax", _S_MAX), ("LAFmin", _S_MIN)):
                if st[i] > -(1 << 23):
                    r[key] = st[i] / 32768.0 * _LOG2_DB + base
            for key, frac in (("LA10", 10), ("LA50", 50), ("LA90", 90)):
                j = _exceeded(self.hist, NB, (ticks * frac + 99) // 100)
                if j > 0:  # bin 0 holds everything below the range: no level to give
                    r[key] = (j + HBASE + 0.5) / 32.0 * _LOG2_DB + base
            _clear(self.hist, NB)
        for i in (21, 22, 23, 24, 25, 26, _S_N, _S_TICKS, _S_OVER):
            st[i] = 0
        return r


class SoundLevel:
    """The microphone on I2S, read in 20 ms blocks (960 samples) into one buffer, and its meter."""

    def __init__(self, i2s_id, sck, ws, sd, sens_dbfs, offset_db=0.0, ibuf=40960, hist=None, buf=None):
        from machine import I2S, Pin  # here, so the meter runs without a board

        self.block = RATE // 50
        self._buf = bytearray(self.block * 4) if buf is None else buf
        # The DMA buffer bridges the main loop's longest step (a flash erase, a connect): 40960
        # bytes hold 106 ms, as the ESP32 keeps 8 bytes per frame whatever the slot format.
        self._i2s = I2S(i2s_id, sck=Pin(sck), ws=Pin(ws), sd=Pin(sd), mode=I2S.RX, bits=32,
                        format=I2S.MONO, rate=RATE, ibuf=ibuf)
        self.meter = NoiseMeter(sens_dbfs, offset_db, hist)

    def read(self):
        """Read one block (blocks until the I2S DMA has it) and process it."""
        self._i2s.readinto(self._buf)
        self.meter.process(self._buf, self.block)
