# BME280 temperature / pressure / humidity over I2C, forced mode.
#
# Compensation is Bosch's integer code from the datasheet (BST-BME280-DS001, section 4.2.3 and
# appendix 8.2): BME280_compensate_T_int32, BME280_compensate_P_int32, bme280_compensate_H_int32.
# Python ints are unbounded, the C code runs on int32_t/uint32_t: every value is wrapped to 32 bits
# before the operations that see the difference (>>, /, comparisons, unsigned casts), so results are
# bit-identical to the C code on the ESP32 for any calibration and raw value. +, - and * need no
# wrap in between: wrapping commutes with them.

import struct
from time import sleep_ms

from micropython import const

_REG_CALIB_A = const(0x88)  # 0x88..0xA1: T1..T3, P1..P9, (0xA0 unused), H1
_REG_CHIP_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB_B = const(0xE1)  # 0xE1..0xE7: H2..H6
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_CONFIG = const(0xF5)
_REG_DATA = const(0xF7)  # 0xF7..0xFE: press[3], temp[3], hum[2]

_CHIP_ID = const(0x60)
_STATUS_MEASURING = const(0x08)
_STATUS_IM_UPDATE = const(0x01)
# Datasheet 9.1: t_measure,max = 1.25 + 2.3*1 + (2.3*1 + 0.575) + (2.3*1 + 0.575) = 9.3 ms at x1/x1/x1.
_T_MEASURE_MS = const(10)
_POLL_TRIES = const(20)

_M32 = const(0xFFFFFFFF)


def _s32(x):
    # C int32_t wrap-around. The fast path keeps the ESP32's small ints (31 bits) off the heap.
    if -0x40000000 <= x <= 0x3FFFFFFF:
        return x
    x &= 0xFFFFFFFF
    return x - 0x100000000 if x & 0x80000000 else x


class BME280:
    """Bosch BME280 on a machine.I2C-like bus (readfrom_mem, readfrom_mem_into, writeto_mem).

    Settings are the datasheet's "weather monitoring" case (3.5.1): forced mode, oversampling x1
    for T, P and H, IIR filter off. measure() runs one conversion; the readings stay until the next.
    """

    def __init__(self, i2c, address=0x76):
        self._i2c = i2c
        self._addr = address
        try:
            chip = i2c.readfrom_mem(address, _REG_CHIP_ID, 1)[0]
        except OSError as e:
            raise OSError("BME280: no answer at I2C address 0x%02x (%s)" % (address, e))
        if chip != _CHIP_ID:
            # BMP280s (0x56..0x58) are often sold as BME280s: say so, they have no humidity.
            raise OSError(
                "BME280: chip id 0x%02x at I2C address 0x%02x, expected 0x60%s"
                % (chip, address, " (a BMP280: no humidity sensor)" if 0x56 <= chip <= 0x58 else "")
            )

        i2c.writeto_mem(address, _REG_RESET, b"\xb6")
        sleep_ms(2)  # start-up time after reset, then wait for the NVM copy of the calibration
        self._st = bytearray(1)
        self._wait(_STATUS_IM_UPDATE, "calibration copy after reset")

        c = i2c.readfrom_mem(address, _REG_CALIB_A, 26)
        (self._t1, self._t2, self._t3, self._p1, self._p2, self._p3, self._p4, self._p5,
         self._p6, self._p7, self._p8, self._p9) = struct.unpack_from("<HhhHhhhhhhhh", c)
        self._h1 = c[25]
        h = i2c.readfrom_mem(address, _REG_CALIB_B, 7)
        self._h2 = struct.unpack_from("<h", h)[0]
        self._h3 = h[2]
        # H4 and H5 are 12-bit signed values sharing 0xE5: E4 and E6 are their signed top bytes.
        self._h4 = (((h[3] ^ 0x80) - 0x80) << 4) | (h[4] & 0x0F)
        self._h5 = (((h[5] ^ 0x80) - 0x80) << 4) | (h[4] >> 4)
        self._h6 = (h[6] ^ 0x80) - 0x80

        # ctrl_hum takes effect only with the next ctrl_meas write; config is honoured in sleep mode.
        self._hum = b"\x01"  # osrs_h x1
        self._force = b"\x25"  # osrs_t x1, osrs_p x1, mode forced
        i2c.writeto_mem(address, _REG_CTRL_HUM, self._hum)
        i2c.writeto_mem(address, _REG_CONFIG, b"\x00")  # filter off
        i2c.writeto_mem(address, _REG_CTRL_MEAS, b"\x24")  # same oversampling, sleep mode

        self._buf = bytearray(8)
        self.temperature_centi = None  # 0.01 degC
        self.pressure_pa = None  # Pa
        self.humidity_q10 = None  # 1/1024 %RH

    def _wait(self, bit, what):
        st = self._st
        for _ in range(_POLL_TRIES):
            self._i2c.readfrom_mem_into(self._addr, _REG_STATUS, st)
            if not st[0] & bit:
                return
            sleep_ms(1)
        raise OSError("BME280: timeout waiting for " + what)

    def measure(self):
        """Run one forced conversion and compensate it. Raises OSError on bus errors or timeout."""
        i2c = self._i2c
        a = self._addr
        # ctrl_hum again: a brown-out of the sensor alone would silently stop humidity otherwise.
        i2c.writeto_mem(a, _REG_CTRL_HUM, self._hum)
        i2c.writeto_mem(a, _REG_CTRL_MEAS, self._force)
        sleep_ms(_T_MEASURE_MS)
        self._wait(_STATUS_MEASURING, "conversion")
        # One burst: the sensor's shadowing keeps P, T and H of one conversion together only then.
        d = self._buf
        i2c.readfrom_mem_into(a, _REG_DATA, d)
        self._compensate(
            (d[3] << 12) | (d[4] << 4) | (d[5] >> 4),
            (d[0] << 12) | (d[1] << 4) | (d[2] >> 4),
            (d[6] << 8) | d[7],
        )

    def _compensate(self, adc_t, adc_p, adc_h):
        # BME280_compensate_T_int32: t_fine carries the temperature into P and H.
        t1 = self._t1
        v1 = _s32(((adc_t >> 3) - (t1 << 1)) * self._t2) >> 11
        x = (adc_t >> 4) - t1
        v2 = _s32((_s32(x * x) >> 12) * self._t3) >> 14
        t_fine = _s32(v1 + v2)
        self.temperature_centi = _s32(t_fine * 5 + 128) >> 8

        # BME280_compensate_P_int32, 1 Pa resolution.
        v1 = (t_fine >> 1) - 64000
        q = _s32((v1 >> 2) * (v1 >> 2))
        v2 = _s32((q >> 11) * self._p6 + v1 * self._p5 * 2)
        v2 = _s32((v2 >> 2) + (self._p4 << 16))
        v1 = _s32((_s32(self._p3 * (q >> 13)) >> 3) + (_s32(self._p2 * v1) >> 1)) >> 18
        v1 = _s32((32768 + v1) * self._p1) >> 15
        if v1 == 0:
            p = 0  # the C code's guard against dividing by zero
        else:
            p = ((1048576 - adc_p - (v2 >> 12)) * 3125) & _M32  # uint32_t from here
            if p < 0x80000000:
                p = (p << 1) // (v1 & _M32)
            else:
                p = ((p // (v1 & _M32)) * 2) & _M32
            v1 = _s32(self._p9 * ((((p >> 3) * (p >> 3)) & _M32) >> 13)) >> 12
            v2 = _s32((p >> 2) * self._p8) >> 13
            p = (p + (_s32(v1 + v2 + self._p7) >> 4)) & _M32
        self.pressure_pa = p

        # bme280_compensate_H_int32, Q22.10 %RH.
        v = _s32(t_fine - 76800)
        a = _s32((adc_h << 14) - (self._h4 << 20) - self._h5 * v + 16384) >> 15
        b = _s32((_s32(v * self._h6) >> 10) * ((_s32(v * self._h3) >> 11) + 32768))
        b = _s32(((b >> 10) + 2097152) * self._h2 + 8192) >> 14
        v = _s32(a * b)
        w = v >> 15
        v = _s32(v - (_s32((_s32(w * w) >> 7) * self._h1) >> 4))
        if v < 0:
            v = 0
        elif v > 419430400:  # 100 %RH
            v = 419430400
        self.humidity_q10 = v >> 12

    @property
    def temperature(self):
        """degC of the last measure(), None before the first."""
        t = self.temperature_centi
        return None if t is None else t / 100

    @property
    def pressure(self):
        """hPa of the last measure(), None before the first."""
        p = self.pressure_pa
        return None if p is None else p / 100

    @property
    def humidity(self):
        """%RH of the last measure(), None before the first."""
        h = self.humidity_q10
        return None if h is None else h / 1024
