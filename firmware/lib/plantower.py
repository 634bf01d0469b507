# Plantower PMS5003 / PMS7003 particulate matter sensors on a UART (9600 8N1).
#
# Data frame, 32 bytes: 0x42 0x4D, length 28 (2 bytes), 13 big-endian words, checksum = 16-bit sum
# of the 30 bytes before it. Words: PM1, PM2.5, PM10 at CF=1 ("standard particle"); PM1, PM2.5,
# PM10 under atmospheric environment; particles > 0.3, 0.5, 1, 2.5, 5, 10 um per 0.1 L; reserved.

from array import array
from time import sleep_ms

from micropython import const

_FRAME = const(32)
_LENGTH = const(28)  # 13 data words + the checksum word


class PMS5003:
    """PMS5003 on a machine.UART-like object (any, readinto, write).

    read() is non-blocking: it takes what the UART holds and returns True once per complete valid
    frame, so `while pms.read(): use(pms.pm25)` drains it. Pins, if given, are machine.Pin outputs:
    SET (high: run, low: sleep) and RESET (low: reset).
    """

    def __init__(self, uart, set_pin=None, reset_pin=None):
        self._uart = uart
        self._set = set_pin
        self._reset = reset_pin
        if set_pin is not None:
            set_pin.value(1)
        if reset_pin is not None:
            reset_pin.value(1)
        # One frame's worth: bytes beyond a frame stay in the UART driver's own buffer.
        self._buf = bytearray(_FRAME)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._d = array("H", bytes(24))  # the 12 data words of the last valid frame
        self._ok = False
        self._cmd = bytearray(b"\x42\x4d\x00\x00\x00\x00\x00")
        self.frames = 0
        self.checksum_errors = 0
        self.bytes_skipped = 0

    def read(self):
        """Parse at most one frame; True when a new valid frame was read."""
        b = self._buf
        while True:
            n = self._n
            # Resynchronise: a frame may start at any 0x42 0x4D 0x00 0x1C, also inside bytes
            # just rejected, so drop only up to the next candidate and look again.
            if n and b[0] != 0x42:
                i = 1
                while i < n and b[i] != 0x42:
                    i += 1
                self._drop(i)
                continue
            if n > 1 and b[1] != 0x4D:
                self._drop(1)
                continue
            if n > 3 and (b[2] or b[3] != _LENGTH):  # also the 8-byte replies to commands
                self._drop(1)
                continue
            if n < _FRAME:
                k = self._uart.any()
                if not k:
                    return False
                # Take no more than this frame needs: the rest waits in the UART driver.
                k = self._uart.readinto(self._mv[n:], min(k, _FRAME - n))
                if not k:
                    return False
                self._n = n + k
                continue
            s = 0
            for i in range(30):
                s += b[i]
            if s != (b[30] << 8) | b[31]:
                self.checksum_errors += 1
                self._drop(2)
                continue
            d = self._d
            for i in range(12):
                d[i] = (b[4 + 2 * i] << 8) | b[5 + 2 * i]
            self._n = 0
            self._ok = True
            self.frames += 1
            return True

    def _drop(self, k):
        b = self._buf
        n = self._n
        for i in range(k, n):
            b[i - k] = b[i]
        self._n = n - k
        self.bytes_skipped += k

    def _word(self, i):
        return self._d[i] if self._ok else None

    # ug/m3 under atmospheric environment: what to report for ambient air.
    @property
    def pm1(self):
        return self._word(3)

    @property
    def pm25(self):
        return self._word(4)

    @property
    def pm10(self):
        return self._word(5)

    # ug/m3 at CF=1, Plantower's factory calibration particle.
    @property
    def pm1_cf1(self):
        return self._word(0)

    @property
    def pm25_cf1(self):
        return self._word(1)

    @property
    def pm10_cf1(self):
        return self._word(2)

    @property
    def counts(self):
        """Particles per 0.1 L above 0.3, 0.5, 1, 2.5, 5 and 10 um."""
        if not self._ok:
            return None
        d = self._d
        return (d[6], d[7], d[8], d[9], d[10], d[11])

    def _command(self, cmd, data):
        # 0x42 0x4D CMD DATAH DATAL LRCH LRCL, LRC = 16-bit sum of the first five bytes.
        c = self._cmd
        c[2] = cmd
        c[4] = data
        s = 0x42 + 0x4D + cmd + data
        c[5] = s >> 8
        c[6] = s & 0xFF
        self._uart.write(c)

    def sleep(self):
        """Stop the fan and laser. Through SET when wired, else by command."""
        if self._set is not None:
            self._set.value(0)
        else:
            self._command(0xE4, 0)

    def wake(self):
        """Start again; readings are stable about 30 s later (fan spin-up)."""
        if self._set is not None:
            self._set.value(1)
        else:
            self._command(0xE4, 1)

    def passive(self):
        """Send frames only on request()."""
        self._command(0xE1, 0)

    def active(self):
        """Send frames continuously (the power-on default)."""
        self._command(0xE1, 1)

    def request(self):
        """Ask for one frame in passive mode; read() picks it up."""
        self._command(0xE2, 0)

    def reset(self):
        """Pulse RESET; the partial frame held is dropped (the sensor restarts)."""
        if self._reset is None:
            raise ValueError("PMS5003: no reset pin")
        self._reset.value(0)
        sleep_ms(10)
        self._reset.value(1)
        self._drop(self._n)


class PMS7003(PMS5003):
    """Same protocol and frame as the PMS5003."""
