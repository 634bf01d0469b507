# `machine` as on the ESP32 port, wired to the simulator's device models and virtual clock.
# Kept small: every byte of it is heap the firmware does not have on the board. The bus classes
# live in simbus (a second module keeps the compiler's peak down at setup).
import micropython
import simcore as _c
from simbus import I2C, SoftI2C, UART, I2S, _nop  # noqa: F401

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
PIN_WAKE = EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6
_freq = [160000000]


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    PULL_HOLD = 4
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    @micropython.native
    def __init__(self, id, mode=-1, pull=-1, **kw):
        if isinstance(id, Pin):
            id = id._id
        if not 0 <= id <= 48 or (id in (20, 24, 28, 29, 30, 31) or id > 39 if _c.mcu == "esp32"
                                 else 22 <= id <= 25):  # the ESP32's and the S3's GPIOs
            raise ValueError("invalid pin")
        self._id = id
        self._pull = None
        self.init(mode, pull, **kw)

    @micropython.native
    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        if mode in (3, 7) and self._id > 33 and _c.mcu == "esp32":
            raise ValueError("pin can only be input")
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    @micropython.native
    def value(self, v=None):
        if v is None:
            lvl = _c.pins.get(self._id)
            return (1 if (self._pull or 0) & 2 else 0) if lvl is None else lvl
        _c.pin_write(self._id, 1 if v else 0)

    __call__ = value

    @micropython.native
    def on(self):
        self.value(1)

    @micropython.native
    def off(self):
        self.value(0)

    irq = _nop


class Signal:
    @micropython.native
    def __init__(self, pin, *a, invert=False, **k):
        self._p = pin if isinstance(pin, Pin) else Pin(pin, *a, **k)
        self._i = 1 if invert else 0

    @micropython.native
    def value(self, v=None):
        if v is None:
            return self._p.value() ^ self._i
        self._p.value((1 if v else 0) ^ self._i)

    __call__ = value

    @micropython.native
    def on(self):
        self.value(1)

    @micropython.native
    def off(self):
        self.value(0)


class WDT:
    @micropython.native
    def __init__(self, id=0, timeout=5000):
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        _c.wdt_start(timeout)

    @micropython.native
    def feed(self):
        _c.wdt_feed()


class RTC:
    @micropython.native
    def __init__(self, id=0):
        pass

    @micropython.native
    def datetime(self, dt=None):
        import time
        if dt is None:
            us = _c.now + _c.rtc_off
            t = time.gmtime(us // 1000000)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], us % 1000000)
        if len(dt) != 8:
            raise ValueError("requested length 8 but object has length %d" % len(dt))
        s = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        _c.rtc_off = s * 1000000 + dt[7] - _c.now

    init = datetime

    @micropython.native
    def memory(self, data=None):
        if data is None:
            return _c.rtc_mem
        if len(data) > 2048:
            raise ValueError("buffer too long")
        _c.rtc_mem = bytes(data)


@micropython.native
def reset():
    _c.reset("soft")


soft_reset = bootloader = reset


@micropython.native
def deepsleep(time_ms=None):
    if time_ms is None:  # no wake source is modelled: the node sleeps to the end of the run
        _c.finish("until", 0, _c.until if _c.until is not None else _c.now)
    _c.reset("deepsleep", max(time_ms, 0))


@micropython.native
def lightsleep(time_ms=None):
    _c.advance(1000000 if time_ms is None else int(max(time_ms, 0) * 1000))


sleep = lightsleep


@micropython.native
def idle():
    _c.advance(100)


@micropython.native
def reset_cause():
    return {"hard": 2, "wdt": 3, "deepsleep": 4, "soft": 5}.get(_c.reset_cause, 1)


@micropython.native
def wake_reason():
    return 4 if _c.reset_cause == "deepsleep" else 0


@micropython.native
def unique_id():
    return _c.chip_id


@micropython.native
def freq(hz=None):
    if hz is None:
        return _freq[0]
    if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq[0] = hz


@micropython.native
def disable_irq():
    return 1


enable_irq = _nop


@micropython.native
def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    _c.advance(timeout_us)
    return -2
