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

    def result(self):
        """[avg, min, max, n] in the published unit, or None without samples."""
        if not self.n:
            return None
        s, d = self.scale, self.digits
        return [round(self.total / self.n / s, d), round(self.lo / s, d), round(self.hi / s, d), self.n]
