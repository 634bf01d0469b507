# Nova SDS011 on a UART (9600 8N1), at the byte level. A 10-byte frame per second
# (AA C0 PM2.5 lo hi, PM10 lo hi in 0.1 ug/m3, ID lo hi, checksum = sum of the 6 data bytes, AB).
# Commands are 19 bytes (AA B4 CMD D2..D13 ID ID CS AB, CS = sum of bytes 2..16); replies are
# AA C5 CMD ... AB: 2 reporting mode (active / query), 4 query data, 5 set id, 6 sleep / work,
# 7 firmware version, 8 working period (minutes; 0 = continuous). Warm-up (30 s after power-on or
# wake: values read high) and faults as for the Plantower model.
import micropython
import simcore as _c

WARMUP_US = 30000000
FIRST_US = 2500000


class Device(_c.UartDev):
    @micropython.native
    def __init__(self, cfg, kind):
        _c.UartDev.__init__(self)
        self._ib = b""
        self._id = cfg.get("id", (_c.chip_id[-2] << 8 | _c.chip_id[-1]) ^ 0x5A5A)
        self._power_on(_c.now if _c.reset_cause == "power_on" else _c.now - 60000000)

    @micropython.native
    def _power_on(self, t):
        self._pon = t
        self.drop()
        self._query = False
        self._awake = True
        self._period = 0
        self._wake(t)

    @micropython.native
    def _wake(self, t):
        self._warm = t
        self._t = t + FIRST_US

    @micropython.native
    def _pt(self):
        if self._t is None or self._query or not self._awake:
            return None
        return self._t

    @micropython.native
    def _pframe(self, t):
        self._t = t + (self._period * 60000000 or 1000000)
        return self._frame(t)

    @micropython.native
    def _frame(self, t):
        s = _c.scen
        ts = t / 1000000
        a = s.value("pm25", ts, 8.0)
        b = s.value("pm10", ts, 12.0)
        if t - self._warm < WARMUP_US and not self._period:
            a = a * 1.6 + 6
            b = b * 1.6 + 6
        a = min(9999, max(0, int(a * 10 + 0.5)))
        b = min(9999, max(0, int(b * 10 + 0.5)))
        f = _reply(0xC0, (a & 0xFF, a >> 8, b & 0xFF, b >> 8), self._id)
        _c.count("pm_frames")
        g = s.fault("pm_garbage", ts)
        if g:
            lim = int(g.get("fraction", 0.1) * 65536)
            for i in range(10):
                r = _c.rand()
                if r & 0xFFFF < lim:
                    f[i] = r >> 24
        return f

    @micropython.native
    def rx(self, data, t):
        if _c.scen.fault(self.fault, t / 1000000):
            return
        ib = self._ib + data
        i = 0
        while len(ib) - i >= 19:
            if ib[i] != 0xAA or ib[i + 1] != 0xB4:
                i += 1
                continue
            c = ib[i:i + 19]
            if c[18] == 0xAB and sum(c[2:17]) & 0xFF == c[17]:
                if c[15] == c[16] == 0xFF or c[15] | c[16] << 8 == self._id:
                    self._cmd(c[2], c[3], c[4], c, t)
            i += 19
        self._ib = ib[i:]

    @micropython.native
    def _cmd(self, cmd, d2, d3, ib, t):
        r = None
        if cmd == 2:
            if d2:
                self._query = d3 != 0
                if not self._query:
                    self._t = max(self._t or 0, t + 1000000)
            r = (d2, 1 if self._query else 0, 0)
        elif cmd == 4:
            if self._awake:
                self._rq.append([t + 20000, self._frame(t)])
        elif cmd == 5:
            self._id = ib[13] | ib[14] << 8
            r = (0, 0, 0)
        elif cmd == 6:
            if d2:
                if d3 and not self._awake:
                    self._awake = True
                    self._wake(t)
                elif not d3:
                    self._awake = False
            r = (d2, 1 if self._awake else 0, 0)
        elif cmd == 7:
            r = (18, 11, 16)
        elif cmd == 8:
            if d2:
                self._period = d3
            r = (d2, self._period, 0)
        if r is not None:
            self._rq.append([t + 20000, _reply(0xC5, (cmd,) + r, self._id)])


@micropython.native
def _reply(kind, data, dev_id):
    f = bytearray(10)
    f[0] = 0xAA
    f[1] = kind
    for i in range(len(data)):
        f[2 + i] = data[i]
    f[6] = dev_id & 0xFF
    f[7] = dev_id >> 8
    f[8] = sum(f[2:8]) & 0xFF
    f[9] = 0xAB
    return f
