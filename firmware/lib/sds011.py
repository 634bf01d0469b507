# Nova Fitness SDS011 particulate matter sensor on a UART (9600 8N1).
#
# Frames are 10 bytes: 0xAA, a command id, 6 data bytes, checksum = sum of the data bytes & 0xFF,
# 0xAB. 0xC0 carries a reading: PM2.5 and PM10 as little-endian words in 0.1 ug/m3, then the
# device id. 0xC5 answers a command (sleep/wake and others): checked and dropped.

from micropython import const

_FRAME = const(10)
_DATA = const(0xC0)
_REPLY = const(0xC5)


class SDS011:
    """SDS011 on a machine.UART-like object (any, readinto, write).

    read() is non-blocking: it takes what the UART holds and returns True once per complete valid
    data frame, so `while sds.read(): use(sds.pm25)` drains it.
    """

    def __init__(self, uart):
        self._uart = uart
        self._buf = bytearray(_FRAME)
        self._mv = memoryview(self._buf)
        self._n = 0
        self._pm25 = -1  # 0.1 ug/m3; -1 before the first frame
        self._pm10 = -1
        # "Set sleep and work" (0xB4 0x06, set); device id 0xFFFF addresses any sensor.
        self._cmd = bytearray(b"\xaa\xb4\x06\x01" + bytes(11) + b"\xff\xff\x00\xab")
        self.frames = 0
        self.replies = 0
        self.checksum_errors = 0
        self.bytes_skipped = 0

    def read(self):
        """Parse at most one data frame; True when a new valid one was read."""
        b = self._buf
        while True:
            n = self._n
            # Resynchronise: a frame may start at any 0xAA, also inside bytes just rejected, so
            # drop only up to the next candidate and look again.
            if n and b[0] != 0xAA:
                i = 1
                while i < n and b[i] != 0xAA:
                    i += 1
                self._drop(i)
                continue
            if n > 1 and b[1] != _DATA and b[1] != _REPLY:
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
            if b[9] != 0xAB:  # no tail: not a frame (or a truncated one)
                self._drop(1)
                continue
            if (b[2] + b[3] + b[4] + b[5] + b[6] + b[7]) & 0xFF != b[8]:
                self.checksum_errors += 1
                self._drop(1)
                continue
            self._n = 0
            if b[1] == _REPLY:
                self.replies += 1
                continue
            self._pm25 = b[2] | (b[3] << 8)
            self._pm10 = b[4] | (b[5] << 8)
            self.frames += 1
            return True

    def _drop(self, k):
        b = self._buf
        n = self._n
        for i in range(k, n):
            b[i - k] = b[i]
        self._n = n - k
        self.bytes_skipped += k

    @property
    def pm25(self):
        """ug/m3 of the last data frame, None before the first."""
        v = self._pm25
        return None if v < 0 else v / 10

    @property
    def pm10(self):
        """ug/m3 of the last data frame, None before the first."""
        v = self._pm10
        return None if v < 0 else v / 10

    def _work(self, on):
        # 0xAA 0xB4 0x06 0x01 MODE 0x00 x10 0xFF 0xFF CS 0xAB; CS = sum of bytes 2..16 & 0xFF.
        c = self._cmd
        c[4] = on
        c[17] = (0x06 + 0x01 + on + 0xFF + 0xFF) & 0xFF
        self._uart.write(c)

    def sleep(self):
        """Stop the fan and laser; the sensor answers with a 0xC5 frame."""
        self._work(0)

    def wake(self):
        """Start again; readings are stable about 30 s later (fan spin-up)."""
        self._work(1)
