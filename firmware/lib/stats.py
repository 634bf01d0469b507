# Running mean, min and max of one quantity over an interval. Samples are integers in the sensor's
# own unit (0.01 degC, Pa, 1/1024 %RH, ug/m3) so adding them allocates nothing on the ESP32; once per
# interval they become fixed-point integers at the record's resolution (recline.DEC).


class Stat:
    def __init__(self, mul=1, div=1):
        """A sample times mul / div is the value at the record's resolution: ug/m3 -> 0.1 ug/m3 is
        (10, 1), 1/1024 %RH -> 0.01 %RH is (100, 1024)."""
        self.mul = mul
        self.div = div
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
        """(avg, min, max, n) as fixed-point integers, rounded half up; None without samples."""
        n = self.n
        if not n:
            return None
        m, d = self.mul, self.div
        return ((2 * self.total * m + n * d) // (2 * n * d), (2 * self.lo * m + d) // (2 * d),
                (2 * self.hi * m + d) // (2 * d), n)
