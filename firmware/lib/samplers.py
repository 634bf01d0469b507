# One sampler per sensor role: it owns the driver, keeps the interval's statistics and writes its
# quantities, quality flags and error counts into the record. A sensor that fails is retried and
# reported as missing; it never stops the others. Each reports its self-test item (console.check)
# when its first result is known and when it changes, from the events it sees: no work per loop.
import time
import console
from machine import I2C, UART, Pin
from stats import Stat
from soundlevel import SoundLevel, RATE
from stats import num


def why(item, *a):
    """The self-test's reason for a fail, from diag.py: loaded when something fails, then dropped."""
    import sys
    import diag
    try:
        return getattr(diag, item)(*a)
    finally:
        del sys.modules["diag"]

PM_WARMUP_MS = 30000  # Plantower and Nova: stable readings 30 s after the fan starts
PM_STALE_MS = 60000   # a running sensor sends a frame every second: a minute without one is a fault
MIC_CHECK_BLOCKS = 50  # the microphone's first check after a second of audio (20 ms blocks)
RETRY_MS = 30000


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
            self.scale = 10  # SDS011 reports 0.1 ug/m3: keep tenths as integers
        else:
            from plantower import PMS5003
            set_pin = Pin(sec["set"], Pin.OUT, value=1) if "set" in sec else None
            reset_pin = Pin(sec["reset"], Pin.OUT, value=1) if "reset" in sec else None  # high: running
            self.dev = PMS5003(uart, set_pin=set_pin, reset_pin=reset_pin)
            self.keys = ("pm1", "pm25", "pm10")
            self.scale = 1
        self.units = {k: "ug/m3" for k in self.keys}
        self.stats = [Stat(self.scale, 1) for _ in self.keys]
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
                console.check("pm", False, why("pm", self, now))
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
            parts.append('"%s":%s' % (k, st.result()))
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


class Climate:
    role = "climate"
    keys = ("temp", "rh", "press")
    units = {"temp": "degC", "rh": "%", "press": "hPa"}

    def __init__(self, i2c_sec, sec, every_s, now):
        self.i2c = I2C(i2c_sec.get("id", 0), scl=Pin(i2c_sec["scl"]), sda=Pin(i2c_sec["sda"]),
                       freq=i2c_sec.get("freq", 100000))
        self.addr = sec.get("addr", 0x76)
        self.where = "I2C%d (scl GPIO %d, sda GPIO %d)" % (i2c_sec.get("id", 0), i2c_sec["scl"], i2c_sec["sda"])
        self._ok = None   # the self-test's result so far
        self.every_ms = every_s * 1000
        from bme280 import BME280  # now, not at the first reading: compiling needs an unfragmented heap
        self._cls = BME280
        self.dev = None
        self.errors = 0
        self._next = now
        self._t = Stat(100, 2)    # 0.01 degC
        self._h = Stat(1024, 1)   # 1/1024 %RH
        self._p = Stat(100, 2)    # Pa -> hPa

    def poll(self, now):
        if time.ticks_diff(now, self._next) < 0:
            return
        self._next = time.ticks_add(self._next, self.every_ms)
        if time.ticks_diff(now, self._next) >= 0:  # fell behind: do not catch up in a burst
            self._next = time.ticks_add(now, self.every_ms)
        try:
            if self.dev is None:
                self.dev = self._cls(self.i2c, address=self.addr)
            self.dev.measure()
        except OSError as e:
            self.errors += 1
            self.dev = None
            if self._ok is not False:
                self._ok = False
                console.check("climate", False, why("climate", self, e))
            return
        d = self.dev
        self._t.add(d.temperature_centi)
        self._h.add(d.humidity_q10)
        self._p.add(d.pressure_pa)
        if self._ok is not True:
            self._ok = True
            console.check("climate", True, "bme280 at 0x%02x: %.1f C, %d %%RH, %.1f hPa" % (
                self.addr, d.temperature_centi / 100, (d.humidity_q10 + 512) // 1024, d.pressure_pa / 100))

    def rh_max(self):
        return self._h.hi / 1024 if self._h.n else None

    def fill(self, parts, flags, errs, ctx):
        expected = ctx["dur"] * 1000 // self.every_ms
        for k, st in (("temp", self._t), ("rh", self._h), ("press", self._p)):
            parts.append('"%s":%s' % (k, st.result()))
            if not st.n:
                flags[k] = ["missing"]
            elif st.n < expected // 2:
                flags[k] = ["partial"]
            st.reset()
        if self.errors:
            errs[self.role] = self.errors
            self.errors = 0


class Noise:
    """A-weighted indicators per interval from the I2S microphone (soundlevel.py). The audio is
    read here in 20 ms blocks; the blocking read paces the node's main loop."""
    role = "mic"
    keys = ("LAeq", "LA10", "LA50", "LA90", "LZeq", "cov")
    units = {"LAeq": "dB", "LA10": "dB", "LA50": "dB", "LA90": "dB", "LZeq": "dB", "cov": "1"}

    def __init__(self, sec, offset_db, hist=None, buf=None):
        self.level = SoundLevel(sec["i2s"], sec["sck"], sec["ws"], sec["sd"], sec["sens_dbfs"],
                                offset_db=offset_db, ibuf=sec.get("ibuf", 40960), hist=hist, buf=buf)
        self.floor = sec["floor_db"]
        self.kind = sec["type"]
        self.where = "I2S%d (sd GPIO %d)" % (sec["i2s"], sec["sd"])
        self._blocks = 0

    def read(self):
        self.level.read()
        if self._blocks < MIC_CHECK_BLOCKS:
            self._blocks += 1
            if self._blocks == MIC_CHECK_BLOCKS:   # a second of audio: the first check
                m = self.level.meter
                self._check(m.level_so_far(), m.over_so_far(), m.samples())

    def _check(self, leq, over, n):
        # only zeros (a digital microphone is never exactly silent), or clipping
        if leq is None or over * 100 > n:
            if console.result("mic") is not False:
                console.check("mic", False, why("mic", self, (over, n)))
        elif console.result("mic") is not True:
            console.check("mic", True, "%s: %.1f dB(A)" % (self.kind, leq))

    def fill(self, parts, flags, errs, ctx):
        r = self.level.meter.take()
        n = r["n"]
        if n:
            self._check(r["LAeq"], r["over"], n)
        want = ctx["dur_ms"] * (RATE // 1000)
        cov = min(1.0, n / want) if want > 0 else 0.0
        leq = r["LAeq"]
        if leq is None:  # no audio, or only zeros: a digital microphone is never exactly silent
            parts.append('"LAeq":null')
            flags["LAeq"] = ["missing"]
        else:
            parts.append('"LAeq":[%s,%s,%s,%d]' % (num(leq, 1), _db(r["LAFmin"]), _db(r["LAFmax"]),
                                                  n // RATE))
            f = []
            if cov < 0.99:
                f.append("partial")
            if r["over"]:
                f.append("overload")
            if leq < self.floor + 3.0:
                f.append("floor")
            if f:
                flags["LAeq"] = f
        for k in ("LA10", "LA50", "LA90", "LZeq"):
            v = r[k] if leq is not None else None
            parts.append('"%s":%s' % (k, _db(v)))
            if k != "LZeq" and v is not None and v < self.floor + 3.0:
                flags[k] = ["floor"]
        parts.append('"cov":' + num(cov, 3))


def _db(v):
    return "null" if v is None else num(v, 1)
