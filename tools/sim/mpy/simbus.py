# machine.I2C, SoftI2C, UART and I2S (re-exported by machine): the buses, wired to the device
# models registered in simcore, with bus timing in virtual time.
import micropython
import simcore as _c


@micropython.native
def _nop(*a, **k):
    pass


class I2C:
    @micropython.native
    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        if id not in (0, 1):
            raise ValueError("I2C(%d) doesn't exist" % id)
        self._devs = _c.devices["i2c"].get(id) or {}
        self._f = freq

    @micropython.native
    def init(self, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._f = freq

    deinit = _nop

    @micropython.native
    def _d(self, addr, n):
        # bus time: address and n bytes, 9 clocks each; no ACK -> ENODEV as on the ESP32
        _c.advance((n + 1) * 9000000 // self._f + 20)
        d = self._devs.get(addr)
        if d is None or not d.present():
            raise OSError(19)
        return d

    @micropython.native
    def scan(self):
        return [a for a in sorted(self._devs) if self._devs[a].present()]

    @micropython.native
    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        d = self._d(addr, len(buf) + 2)
        d.write(bytes((memaddr,)))
        d.read(buf)

    @micropython.native
    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        b = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, b)
        return bytes(b)

    @micropython.native
    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._d(addr, len(buf) + 1).write(bytes((memaddr,)) + bytes(buf))

    @micropython.native
    def readfrom_into(self, addr, buf, stop=True):
        self._d(addr, len(buf)).read(buf)

    @micropython.native
    def readfrom(self, addr, nbytes, stop=True):
        b = bytearray(nbytes)
        self._d(addr, nbytes).read(b)
        return bytes(b)

    @micropython.native
    def writeto(self, addr, buf, stop=True):
        self._d(addr, len(buf)).write(bytes(buf))
        return len(buf)

    @micropython.native
    def writevto(self, addr, vector, stop=True):
        return self.writeto(addr, b"".join(bytes(v) for v in vector))


class SoftI2C(I2C):
    # No bus id: wired to the lowest I2C bus that has devices.
    @micropython.native
    def __init__(self, scl, sda, *, freq=400000, timeout=50000):
        I2C.__init__(self, min(_c.devices["i2c"] or [0]), freq=freq)


class UART:
    INV_TX = 1 << 22
    INV_RX = 1 << 19
    INV_RTS = 1 << 23
    INV_CTS = 1 << 20
    RTS = 1
    CTS = 2

    @micropython.native
    def __init__(self, id, baudrate=115200, *a, **k):
        if id not in (1, 2):
            raise ValueError("UART(%d) does not exist" % id if id else "UART(0) is used by the REPL")
        self._dev = _c.devices["uart"].get(id)
        self._buf = None
        self._baud = 115200
        self._tx = 0
        self.init(baudrate, *a, rxbuf=k.pop("rxbuf", 256), **k)

    @micropython.native
    def init(self, baudrate=0, bits=8, parity=None, stop=1, *, rxbuf=-1, timeout=0, **k):
        d = self._dev
        if d:  # what was sent before the UART existed is lost
            d.pump(self if self._buf else None, _c.now)
            d._u = self
        if rxbuf >= 0:  # a new RX ring buffer (the ESP32 reinstalls its driver: flushed)
            self._buf = bytearray(max(rxbuf, 129))
            self._h = self._n = 0
        if baudrate > 0:
            self._baud = baudrate
        self._to = timeout

    @micropython.native
    def deinit(self):
        if self._dev:
            self._dev._u = None
        self._dev = None

    @micropython.native
    def _put(self, src, i, k):
        # bytes arriving; when the RX buffer is full they are dropped (and counted)
        buf = self._buf
        size = len(buf)
        bad = self._baud != 9600   # wrong baud rate: framing garbage
        while i < k:
            if self._n == size:
                _c.stats["uart_bytes_dropped"] += k - i
                return
            buf[(self._h + self._n) % size] = _c.rand() & 0xFF if bad else src[i]
            self._n += 1
            i += 1

    @micropython.native
    def _fill(self, n):
        # pump the device; with a timeout, wait (virtual time) for n bytes or the time-out
        _c.tick()
        d = self._dev
        if d:
            d.pump(self, _c.now)
            if self._n < n and self._to:
                end = _c.now + self._to * 1000
                while self._n < n and _c.now < end:
                    t = d.next_t()
                    _c.advance((end if t is None or t > end else max(t, _c.now)) - _c.now)
                    d.pump(self, _c.now)
        return self._n

    @micropython.native
    def any(self):
        return self._fill(0)

    @micropython.native
    def read(self, nbytes=-1):
        have = self._fill(1 if nbytes is None or nbytes < 0 else nbytes)
        if nbytes is None or nbytes < 0 or nbytes > have:
            nbytes = have
        if not have:
            return None
        buf = self._buf
        h = self._h
        e = h + nbytes - len(buf)
        out = bytes(buf[h:h + nbytes]) if e <= 0 else bytes(buf[h:]) + bytes(buf[:e])
        self._h = (h + nbytes) % len(buf)
        self._n -= nbytes
        return out

    @micropython.native
    def readinto(self, buf, nbytes=-1):
        data = self.read(len(buf) if nbytes is None or nbytes < 0 else nbytes)
        if data is None:
            return None
        buf[:len(data)] = data
        return len(data)

    @micropython.native
    def readline(self):
        n = self._fill(0)
        buf = self._buf
        for i in range(n):
            if buf[(self._h + i) % len(buf)] == 10:
                return self.read(i + 1)
        return self.read(n)

    @micropython.native
    def write(self, buf):
        _c.tick()
        n = len(buf)
        self._tx = max(_c.now, self._tx) + n * 10000000 // self._baud
        d = self._dev
        if d and self._baud == 9600:
            d.pump(self, _c.now)
            d.rx(bytes(buf), self._tx)
        return n

    @micropython.native
    def flush(self):
        if self._tx > _c.now:
            _c.advance(self._tx - _c.now)

    @micropython.native
    def txdone(self):
        return self._tx <= _c.now

    sendbreak = irq = _nop


class I2S:
    RX = 1
    TX = 2
    MONO = 0
    STEREO = 1

    @micropython.native
    def __init__(self, id, **k):
        if id not in (0, 1):
            raise ValueError("invalid id")
        self._id = id
        self.init(**k)

    @micropython.native
    def init(self, *, sck, ws, sd, mode, bits, format, rate, ibuf, mck=None):
        if mode not in (1, 2) or bits not in (16, 32) or format not in (0, 1):
            raise ValueError("invalid mode" if mode not in (1, 2) else "invalid bits" if
                             format in (0, 1) else "invalid format")
        self._mode = mode
        self._bits = bits
        self._ch = format + 1
        self._rate = rate
        # DMA buffers of 256 frames; RX always fills 32-bit stereo frames (8 bytes)
        self._cap = max(ibuf // 2048, 2) * 256
        self._dev = _c.devices["i2s"].get(self._id) if mode == 1 else None
        self._t0 = _c.now
        self._done = 0  # frames handed to the reader since _t0

    @micropython.native
    def deinit(self):
        self._mode = 0

    @micropython.native
    def irq(self, handler):
        raise NotImplementedError("simulator: I2S non-blocking mode")

    @micropython.native
    def readinto(self, buf):
        """Blocks (virtual time) until DMA holds the frames; frames it could not hold are lost."""
        if self._mode != 1:
            raise OSError(1)  # EPERM
        fb = self._bits // 8 * self._ch
        n = len(buf) // fb
        if n * fb != len(buf):
            raise OSError(22)  # EINVAL
        rate = self._rate
        t0 = self._t0
        done = self._done
        have = (_c.now - t0) * rate // 256000000 * 256  # frames in complete DMA buffers
        lost = have - done - self._cap
        if lost > 0:
            done += lost
            _c.stats["i2s_samples_lost"] += lost
        need = (done + n + 255) // 256 * 256
        if have < need:
            _c.advance(t0 + (need * 1000000 + rate - 1) // rate - _c.now)
        if self._dev:
            self._dev.fill(buf, n, self._ch, self._bits, t0 + done * 1000000 // rate)
        else:
            _zero(buf, len(buf))
        self._done = done + n
        _c.stats["i2s_samples_read"] += n
        return len(buf)

    @micropython.native
    def write(self, buf):
        if self._mode != 2:
            raise OSError(1)
        _c.advance(len(buf) * 1000000 // (self._bits // 8 * self._ch * self._rate))
        return len(buf)


@micropython.viper
def _zero(buf: ptr8, n: int):
    i = 0
    while i < n:
        buf[i] = 0
        i += 1
