# One sampler per sensor role, each in its own module (sample_pm, sample_climate, sample_noise:
# only a board's own are loaded): it owns the driver, keeps the interval's statistics and writes
# its quantities, quality flags and error counts into the record. A sensor that fails is retried
# and reported as missing; it never stops the others. Each reports its self-test item
# (console.check) when its first result is known and when it changes, from the events it sees:
# no work per loop.
import time
import console
from machine import UART, Pin
from stats import Stat

PM_WARMUP_MS = 30000  # Plantower and Nova: stable readings 30 s after the fan starts
PM_STALE_MS = 60000   # a running sensor sends a frame every second: a minute without one is a fault


class PM:
    role = "pm"

    def __init__(self, sec, now):
        self.kind = sec["type"]
        self.where = "UART%d (rx GPIO %d)" % (sec["uart"], sec["rx"])
        uart = UART(sec["uart"], baudrate=9600, tx=sec["tx"], rx=sec["rx"], rxbuf=512)
        if self.kind == "sds011":
            from sds011 import SDS011
            self.dev = SDS011(uart)
            self.keys = ("pm25", "pm10")
            self.scale = 10  # SDS011 reports 0.1 ug/m3: keep tenths as integers, the record's step
        else:
            from plantower import PMS5003
            set_pin = Pin(sec["set"], Pin.OUT, value=1) if "set" in sec else None
            reset_pin = Pin(sec["reset"], Pin.OUT, value=1) if "reset" in sec else None  # high: running
            self.dev = PMS5003(uart, set_pin=set_pin, reset_pin=reset_pin)
            self.keys = ("pm1", "pm25", "pm10")
            self.scale = 1
        self.units = {k: "ug/m3" for k in self.keys}
        self.stats = [Stat(10 // self.scale) for _ in self.keys]   # 0.1 ug/m3 (recline.DEC)
        self._warm_until = time.ticks_add(now, PM_WARMUP_MS)
        self._warming = True
        self._saw_warmup = True
        self._errs0 = 0
        self._last = now       # the last valid frame (or the start)
        self._bad0 = 0         # checksum errors and skipped bytes then
        self._ok = None        # the self-test's result so far

    def poll(self, now):
        dev = self.dev
        if not dev.read():
            if self._ok is not False and \
                    time.ticks_diff(now, self._last) >= (PM_WARMUP_MS if self._ok is None else PM_STALE_MS):
                self._ok = False
                console.check("pm", False, self._why(now))
            return
        self._last = now
        if self._ok is not True:
            self._ok = True
            v = dev.pm25
            console.check("pm", True, "%s: PM2.5 %s ug/m3%s" % (
                self.kind, v if self.scale == 1 else "%.1f" % v, " (warming up)" if self._warming else ""))
        self._bad0 = dev.checksum_errors + dev.bytes_skipped
        while True:   # this frame and any others waiting
            if self._warming and time.ticks_diff(now, self._warm_until) >= 0:
                self._warming = False
            if not self._warming:
                s = self.scale
                if s == 1:
                    vals = (dev.pm1, dev.pm25, dev.pm10)
                else:
                    vals = (int(dev.pm25 * s + 0.5), int(dev.pm10 * s + 0.5))
                for st, v in zip(self.stats, vals):
                    st.add(v)
            if not dev.read():
                break

    def fill(self, parts, flags, errs, ctx):
        errors = self.dev.checksum_errors - self._errs0
        self._errs0 = self.dev.checksum_errors
        humid = ctx["rh_max"] is not None and ctx["rh_max"] > ctx["rh_high"]
        for k, st in zip(self.keys, self.stats):
            parts.append((k, st.result()))
            f = []
            if not st.n:
                f.append("missing")
            elif st.n < ctx["dur"] // 3:
                f.append("partial")
            if self._saw_warmup:
                f.append("warmup")
            if errors:
                f.append("checksum")
            if st.n and humid:
                f.append("rh_high")
            if f:
                flags[k] = f
            st.reset()
        if errors:
            errs[self.role] = errors
        self._saw_warmup = self._warming

    def _why(self, now):
        dev = self.dev
        t = time.ticks_diff(now, self._last) // 1000
        if dev.checksum_errors + dev.bytes_skipped > self._bad0:
            if dev.checksum_errors:
                return "only damaged frames from the %s on %s for %d s (%d checksum errors): check its wiring" % (
                    self.kind, self.where, t, dev.checksum_errors)
            return "unreadable data on %s for %d s: is a %s connected there?" % (self.where, t, self.kind)
        return "no data from the %s on %s for %d s: check its wiring (its TX to rx) and 5 V supply" % (
            self.kind, self.where, t)
