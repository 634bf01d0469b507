# One sampler per sensor role, each in its own module (sample_pm, sample_climate, sample_noise:
# only a board's own are loaded): it owns the driver, keeps the interval's statistics and writes
# its quantities, quality flags and error counts into the record. A sensor that fails is retried
# and reported as missing; it never stops the others. Each reports its self-test item
# (console.check) when its first result is known and when it changes, from the events it sees:
# no work per loop.
import console
from soundlevel import SoundLevel, RATE

MIC_CHECK_BLOCKS = 50  # the microphone's first check after a second of audio (20 ms blocks)


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
                console.check("mic", False, "%s: %d of %d samples at full scale: broken, or a wrong sens_dbfs" % (
                    self.kind, over, n) if leq is not None else "only zeros from the %s on %s: check its wiring "
                    "(SD, SCK, WS), its L/R pin (to GND) and 3.3 V supply" % (self.kind, self.where))
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
            parts.append(("LAeq", None))
            flags["LAeq"] = ["missing"]
        else:
            lo, hi = r["LAFmin"], r["LAFmax"]   # None only without a whole fast block: the level is all
            parts.append(("LAeq", (_cdb(leq), _cdb(leq if lo is None else lo), _cdb(leq if hi is None else hi),
                                   n // RATE)))
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
            parts.append((k, _cdb(v)))
            if k != "LZeq" and v is not None and v < self.floor + 3.0:
                flags[k] = ["floor"]
        parts.append(("cov", round(cov * 1000)))


def _cdb(v):
    # dB -> 0.01 dB, the record's step (recline.DEC): a float op per indicator and interval
    return None if v is None else round(v * 100)
