# One sampler per sensor role, each in its own module (sample_pm, sample_climate, sample_noise:
# only a board's own are loaded): it owns the driver, keeps the interval's statistics and writes
# its quantities, quality flags and error counts into the record. A sensor that fails is retried
# and reported as missing; it never stops the others. Each reports its self-test item
# (console.check) when its first result is known and when it changes, from the events it sees:
# no work per loop.
import time
import console
from machine import I2C, Pin
from stats import Stat


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
        self._t = Stat()            # 0.01 degC, the record's step (recline.DEC)
        self._h = Stat(100, 1024)   # 1/1024 %RH -> 0.01 %RH
        self._p = Stat()            # Pa = 0.01 hPa

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
                console.check("climate", False, self._why(e))
            return
        d = self.dev
        self._t.add(d.temperature_centi)
        self._h.add(d.humidity_q10)
        self._p.add(d.pressure_pa)
        if self._ok is not True:
            self._ok = True
            console.check("climate", True, "bme280 at 0x%02x: %.1f C, %d %%RH, %.1f hPa" % (
                self.addr, d.temperature_centi / 100, (d.humidity_q10 + 512) // 1024, d.pressure_pa / 100))

    def _why(self, e):
        try:
            found = self.i2c.scan()
        except OSError:
            found = []
        if self.addr in found:   # something answers there: the driver's reason (a wrong chip id)
            return "%s on %s" % (e.args[0] if e.args and isinstance(e.args[0], str) else repr(e), self.where)
        if found:
            return "no bme280 at 0x%02x on %s; the bus answers at %s: is climate.addr in board.json right?" % (
                self.addr, self.where, ", ".join("0x%02x" % a for a in found))
        return "no bme280 at 0x%02x on %s, and no device answers: check its wiring and 3.3 V supply" % (
            self.addr, self.where)

    def rh_max(self):
        return self._h.hi / 1024 if self._h.n else None

    def fill(self, parts, flags, errs, ctx):
        expected = ctx["dur"] * 1000 // self.every_ms
        for k, st in (("temp", self._t), ("rh", self._h), ("press", self._p)):
            parts.append((k, st.result()))
            if not st.n:
                flags[k] = ["missing"]
            elif st.n < expected // 2:
                flags[k] = ["partial"]
            st.reset()
        if self.errors:
            errs[self.role] = self.errors
            self.errors = 0
