# Running mean, min and max of one quantity over an interval. Samples are integers in the sensor's
# own unit (0.01 degC, Pa, 1/1024 %RH, ug/m3) so adding them allocates nothing on the ESP32; the
# scale turns them into the published unit once per interval.


class Stat:
    def __init__(self, scale=1, digits=1):
        self.scale = scale
        self.digits = digits
        self.reset()

    def reset(self):
        self.n = 0
        self.total = 0
        self.lo = 0
        self.hi = 0

    def add(self, v):
        if self.n == 0 or v < self.lo:
            self.lo = v
        if self.n == 0 or v > self.hi:
            self.hi = v
        self.total += v
        self.n += 1

    def mean(self):
        return self.total / self.n / self.scale if self.n else None

    def result(self):
        """'[avg,min,max,n]' in the published unit as JSON text, or 'null' without samples."""
        if not self.n:
            return "null"
        s, d = self.scale, self.digits
        return "[%s,%s,%s,%d]" % (num(self.total / self.n / s, d), num(self.lo / s, d), num(self.hi / s, d), self.n)


def num(v, digits):
    """A number as short JSON text: at most `digits` decimals, no trailing zeros.

    Formatting here (not json.dumps of a float) gives the same text on the ESP32's 32-bit floats
    and the host's 64-bit ones, and no 83.09999999999999 on the wire."""
    t = "%.*f" % (digits, v)
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return "0" if t == "-0" else t
