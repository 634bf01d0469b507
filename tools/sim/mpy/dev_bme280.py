# Bosch BME280 on I2C, at the register level. A forced (or normal-mode) conversion fills the data
# registers with the raw ADC values that Bosch's integer compensation, with this sensor's
# calibration, turns back into the scenario's true temperature, pressure and humidity at the
# conversion's virtual time (found by bisection over the raw range). Oversampling sets the raw
# resolution (16 + osrs - 1 bits), conversions take the datasheet's typical time (status bit 3),
# writes are (register, value) pairs, reads auto-increment. `i2c_unplugged` -> no ACK; when it ends
# the sensor has been power-cycled.
import micropython
import simcore as _c

_NAMES = ("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9",
          "H1", "H2", "H3", "H4", "H5", "H6")
# the calibration of a real sensor
_DEFAULT = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
            75, 362, 0, 313, 50, 30)
_OS = (0, 1, 2, 4, 8, 16, 16, 16)
_TSB_US = (500, 62500, 125000, 250000, 500000, 1000000, 10000, 20000)


@micropython.native
def _tdiv(a, b):
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class Device:
    @micropython.native
    def __init__(self, cfg, kind):
        cal = cfg.get("calib", "default")
        c = self.c = [int(cal["dig_" + n]) for n in _NAMES] if isinstance(cal, dict) else _DEFAULT
        r = self.r = bytearray(256)
        for i in range(12):
            v = c[i] & 0xFFFF
            r[0x88 + 2 * i] = v & 0xFF
            r[0x89 + 2 * i] = v >> 8
        r[0xA1] = c[12] & 0xFF
        r[0xE1] = c[13] & 0xFF
        r[0xE2] = (c[13] >> 8) & 0xFF
        r[0xE3] = c[14] & 0xFF
        r[0xE4] = (c[15] >> 4) & 0xFF
        r[0xE5] = (c[15] & 0x0F) | ((c[16] & 0x0F) << 4)
        r[0xE6] = (c[16] >> 4) & 0xFF
        r[0xE7] = c[17] & 0xFF
        r[0xD0] = 0x60
        self._ptr = 0
        self._pon = _c.now
        self._reset(_c.now)

    @micropython.native
    def _reset(self, t):
        r = self.r
        for a in (0xF2, 0xF3, 0xF4, 0xF5):
            r[a] = 0
        r[0xF7:0xFF] = b"\x80\x00\x00\x80\x00\x00\x80\x00"
        self._osh = 0
        self._end = None      # end of a forced conversion under way
        self._next = None     # end of the next normal-mode conversion
        self._im = t + 2000   # NVM copy (status bit 0): the calibration reads 0 until done

    # -- the bus ---------------------------------------------------------------------------------
    @micropython.native
    def present(self):
        if _c.scen.fault("i2c_unplugged", _c.t_s()):
            return False
        p = _c.power_on_time("i2c_unplugged", self._pon)
        if p is not None:
            self._pon = p
            self._reset(p)
        return True

    @micropython.native
    def write(self, data):
        self._update()
        n = len(data)
        i = 0
        while i + 1 < n:
            self._wr(data[i], data[i + 1])
            i += 2
        if i < n:
            self._ptr = data[i]

    @micropython.native
    def read(self, buf):
        self._update()
        r = self.r
        p = self._ptr
        nvm = _c.now < self._im
        for i in range(len(buf)):
            a = (p + i) & 0xFF
            buf[i] = 0 if nvm and (0x88 <= a < 0xA2 or 0xE1 <= a < 0xE8) else r[a]

    @micropython.native
    def _wr(self, reg, v):
        r = self.r
        if reg == 0xE0:
            if v == 0xB6:
                self._reset(_c.now)
        elif reg == 0xF2:
            r[0xF2] = v & 7
        elif reg == 0xF5:
            r[0xF5] = v & 0xFD
        elif reg == 0xF4:
            r[0xF4] = v
            self._osh = r[0xF2] & 7   # ctrl_hum takes effect with a write to ctrl_meas
            m = v & 3
            tm = self._tmeas()
            self._end = _c.now + tm if m in (1, 2) else None
            self._next = _c.now + tm if m == 3 else None

    @micropython.native
    def _tmeas(self):
        ct = self.r[0xF4]
        ot = _OS[ct >> 5]
        op = _OS[(ct >> 2) & 7]
        oh = _OS[self._osh]
        return 1000 + 2000 * ot + (2000 * op + 500 if op else 0) + (2000 * oh + 500 if oh else 0)

    @micropython.native
    def _update(self):
        now = _c.now
        r = self.r
        st = 0
        if self._end is not None:
            if now >= self._end:
                self._convert(self._end)
                self._end = None
                r[0xF4] &= 0xFC
            else:
                st = 8
        if self._next is not None:
            period = self._tmeas() + _TSB_US[r[0xF5] >> 5]
            if now >= self._next:
                last = self._next + (now - self._next) // period * period
                self._convert(last)
                self._next = last + period
            if now >= self._next - self._tmeas():
                st = 8
        if now < self._im:
            st |= 1
        r[0xF3] = st

    # -- the physics, through Bosch's integer compensation -------------------------------------
    @micropython.native
    def _convert(self, t):
        s = _c.scen
        ts = t / 1000000
        r = self.r
        ct = r[0xF4]
        ot = ct >> 5
        op = (ct >> 2) & 7
        filt = r[0xF5] & 0x1C
        tf = self._tf
        a_t = self._inv(tf, s.value("temp", ts, 20.0) * 5120, 20, True)
        t_fine = tf(a_t)  # the die's true temperature, whatever the driver reads
        if ot:
            a = self._inv(tf, s.value("temp", ts, 20.0) * 5120, 20 if filt else 15 + min(ot, 5), True)
            r[0xFA] = a >> 12
            r[0xFB] = (a >> 4) & 0xFF
            r[0xFC] = (a & 0xF) << 4
        if op:
            a = self._inv(lambda x: self._p(x, t_fine), s.value("press", ts, 1013.25) * 25600,
                          20 if filt else 15 + min(op, 5), False)
            r[0xF7] = a >> 12
            r[0xF8] = (a >> 4) & 0xFF
            r[0xF9] = (a & 0xF) << 4
        if self._osh:
            a = self._inv(lambda x: self._h(x, t_fine), s.value("rh", ts, 50.0) * 1024, 16, True) >> 4
            r[0xFD] = a >> 8
            r[0xFE] = a & 0xFF
        _c.count("bme280_conversions")

    @staticmethod
    @micropython.native
    def _inv(f, target, bits, up):
        # the raw value (20-bit scale, `bits` significant) whose compensated value is nearest
        sh = 20 - bits
        lo = 0
        hi = (1 << bits) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if (f(mid << sh) < target) == up:
                lo = mid + 1
            else:
                hi = mid
        if lo > 0 and abs(f((lo - 1) << sh) - target) < abs(f(lo << sh) - target):
            lo -= 1
        return lo << sh

    @micropython.native
    def _tf(self, a):
        c = self.c
        v1 = (((a >> 3) - (c[0] << 1)) * c[1]) >> 11
        d = (a >> 4) - c[0]
        return v1 + ((((d * d) >> 12) * c[2]) >> 14)

    @micropython.native
    def _p(self, a, t_fine):
        c = self.c
        v1 = t_fine - 128000
        v2 = v1 * v1 * c[8] + ((v1 * c[7]) << 17) + (c[6] << 35)
        v1 = ((v1 * v1 * c[5]) >> 8) + ((v1 * c[4]) << 12)
        v1 = (((1 << 47) + v1) * c[3]) >> 33
        if v1 == 0:
            return 0
        p = _tdiv(((1048576 - a) * 2147483648 - v2) * 3125, v1)
        v1 = (c[11] * (p >> 13) * (p >> 13)) >> 25
        v2 = (c[10] * p) >> 19
        return ((p + v1 + v2) >> 8) + (c[9] << 4)

    @micropython.native
    def _h(self, a, t_fine):
        c = self.c
        a >>= 4  # 16-bit ADC on the 20-bit scale of _inv
        v = t_fine - 76800
        v = (((((a << 14) - (c[15] << 20) - (c[16] * v)) + 16384) >> 15) *
             (((((((v * c[17]) >> 10) * (((v * c[14]) >> 11) + 32768)) >> 10) + 2097152) *
               c[13] + 8192) >> 14))
        v -= ((((v >> 15) * (v >> 15)) >> 7) * c[12]) >> 4
        v = 0 if v < 0 else 419430400 if v > 419430400 else v
        return v >> 12
