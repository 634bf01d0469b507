# Plantower PMS5003 / PMS7003 on a UART (9600 8N1), at the byte level. Active mode: a 32-byte frame
# per second (42 4D, length 28, CF=1 PM1/2.5/10, atmospheric PM1/2.5/10 = the scenario's truth,
# six particle counts per 0.1 L, a reserved word, a 16-bit sum). Commands (42 4D CMD DH DL LRCH LRCL):
# E2 read (passive mode), E1 mode (0 passive, 1 active), E4 sleep (0) / wake (1); the optional SET
# pin (device config "set": GPIO) sleeps it while low. For 30 s after power-on or wake the values
# read high (the fan and laser settle). Faults: pm_unplugged (silence, power-cycled after),
# pm_garbage (`fraction` of the bytes replaced by random ones).
import micropython
import simcore as _c

WARMUP_US = 30000000
FIRST_US = 2500000      # first frame after power-on / wake


class Device(_c.UartDev):
    @micropython.native
    def __init__(self, cfg, kind):
        _c.UartDev.__init__(self)
        self._ib = b""
        pin = self._pin = cfg.get("set")
        if pin is not None:
            _c.watch(pin, self._set_pin)
        # A soft reset of the ESP32 leaves the sensor running: warm. A power-on starts it now.
        self._power_on(_c.now if _c.reset_cause == "power_on" else _c.now - 60000000)

    @micropython.native
    def _power_on(self, t):
        self._pon = t
        self.drop()
        self._active = True
        self._awake = True
        self._pinlow = self._pin is not None and _c.pins.get(self._pin) == 0
        self._wake(t)

    @micropython.native
    def _wake(self, t):
        self._warm = t
        self._t = t + FIRST_US

    @micropython.native
    def _set_pin(self, v):
        self.pump(self._u, _c.now)   # what was sent before the change
        if not v:
            self._pinlow = True
        elif self._pinlow:
            self._pinlow = False
            if self._awake:
                self._wake(_c.now)

    @micropython.native
    def _running(self):
        return self._awake and not self._pinlow

    @micropython.native
    def _pt(self):
        t = self._t
        if t is None or not (self._active and self._running()):
            return None
        return t

    @micropython.native
    def _pframe(self, t):
        self._t = t + 1000000
        return self._frame(t)

    @micropython.native
    def _frame(self, t):
        s = _c.scen
        ts = t / 1000000
        pm = [s.value("pm1", ts, 5.0), s.value("pm25", ts, 8.0), s.value("pm10", ts, 12.0)]
        if t - self._warm < WARMUP_US:
            pm = [v * 1.6 + 6 for v in pm]
        a = [min(1000, max(0, int(v + 0.5))) for v in pm]
        cf = [v if v < 30 else 30 + (v - 30) * 3 // 2 for v in a]
        n03 = 60 * a[0] + 20 * (a[1] - a[0]) + 30
        n05 = n03 * 3 // 10
        n10 = n05 // 5 + 2 * (a[1] - a[0])
        n25 = (a[2] - a[1]) // 2 + a[1] // 10
        n50 = n25 // 4
        n100 = n50 // 3
        words = cf + a + [n03, n05, n10, n25, n50, n100, 0x9700]
        f = bytearray(32)
        f[0] = 0x42
        f[1] = 0x4D
        f[3] = 28
        for i in range(13):
            w = words[i] & 0xFFFF
            f[4 + 2 * i] = w >> 8
            f[5 + 2 * i] = w & 0xFF
        cs = sum(f[:30])
        f[30] = cs >> 8
        f[31] = cs & 0xFF
        _c.count("pm_frames")
        g = s.fault("pm_garbage", ts)
        if g:
            lim = int(g.get("fraction", 0.1) * 65536)
            for i in range(32):
                r = _c.rand()
                if r & 0xFFFF < lim:
                    f[i] = r >> 24
        return f

    # commands from the ESP32
    @micropython.native
    def rx(self, data, t):
        if _c.scen.fault(self.fault, t / 1000000):
            return
        ib = self._ib + data
        i = 0
        while len(ib) - i >= 7:
            if ib[i] != 0x42 or ib[i + 1] != 0x4D:
                i += 1
                continue
            if sum(ib[i:i + 5]) == (ib[i + 5] << 8 | ib[i + 6]):
                self._cmd(ib[i + 2], ib[i + 4], t)
            i += 7
        self._ib = ib[i:]

    @micropython.native
    def _cmd(self, cmd, v, t):
        if cmd == 0xE2:
            if self._running() and not self._active:
                self._rq.append([t + 20000, self._frame(t)])
        elif cmd == 0xE1:
            self._active = v != 0
            if self._running():
                self._rq.append([t + 20000, _answer(0xE1, 1 if self._active else 0)])
                if self._active:
                    self._t = max(self._t or 0, t + 1000000)
        elif cmd == 0xE4:
            if v:
                if not self._awake:
                    self._awake = True
                    if not self._pinlow:
                        self._wake(t)
            elif self._awake:
                if not self._pinlow:
                    self._rq.append([t + 20000, _answer(0xE4, 0)])
                self._awake = False


@micropython.native
def _answer(cmd, v):
    f = bytearray(b"\x42\x4d\x00\x04\x00\x00\x00\x00")
    f[4] = cmd
    f[5] = v
    cs = sum(f[:6])
    f[6] = cs >> 8
    f[7] = cs & 0xFF
    return f
