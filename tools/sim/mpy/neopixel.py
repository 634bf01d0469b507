# `neopixel` as frozen in the ESP32 firmware (NeoPixel(pin, n, bpp=3, timing=1)): the pixels'
# bytes in GRB(W) order. write() takes the wire's time (30 us a pixel, 50 us latch) and hands the
# bytes to simcore.pin_write(pin, bytes): tests watch the pin (simcore.watch) to see the colours.
import micropython
import simcore as _c


class NeoPixel:
    ORDER = (1, 0, 2, 3)

    @micropython.native
    def __init__(self, pin, n, bpp=3, timing=1):
        self.pin = pin
        self.n = n
        self.bpp = bpp
        self.buf = bytearray(n * bpp)
        self.pin.init(pin.OUT)
        self.timing = timing

    def __len__(self):
        return self.n

    @micropython.native
    def __setitem__(self, i, v):
        o = i * self.bpp
        for k in range(self.bpp):
            self.buf[o + self.ORDER[k]] = v[k]

    @micropython.native
    def __getitem__(self, i):
        o = i * self.bpp
        return tuple(self.buf[o + self.ORDER[k]] for k in range(self.bpp))

    @micropython.native
    def fill(self, v):
        for i in range(self.n):
            self[i] = v

    @micropython.native
    def write(self):
        _c.advance(30 * self.n + 50)
        _c.pin_write(self.pin._id, bytes(self.buf))
