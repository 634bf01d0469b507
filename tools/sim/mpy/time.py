# `time` as on the ESP32, over the simulator's virtual clock: ticks wrap at 2**30 (and start close
# to the wrap), time() is an int with the 2000-01-01 epoch from the RTC, gmtime/localtime give the
# board's 8-tuples. Sleeping advances the virtual clock.
import micropython
import simcore as _c

_M = 0x3FFFFFFF
_H = 0x20000000
_T0_MS = 0x40000000 - 30000      # ticks_ms wraps 30 s after boot
_T0_US = 0x40000000 - 20000000   # ticks_us wraps 20 s after boot


@micropython.native
def ticks_ms():
    _c.tick()
    return ((_c.now - _c.boot) // 1000 + _T0_MS) & _M


@micropython.native
def ticks_us():
    _c.tick()
    return (_c.now - _c.boot + _T0_US) & _M


@micropython.native
def ticks_cpu():
    _c.tick()
    return ((_c.now - _c.boot) * 160) & _M


@micropython.native
def ticks_add(t, delta):
    return (t + delta) & _M


@micropython.native
def ticks_diff(a, b):
    return ((a - b + _H) & _M) - _H


@micropython.native
def sleep_ms(ms):
    if ms > 0:
        _c.advance(int(ms) * 1000)
    else:
        _c.tick()


@micropython.native
def sleep_us(us):
    if us > 0:
        _c.advance(int(us))
    else:
        _c.tick()


@micropython.native
def sleep(s):
    if s > 0:
        _c.advance(int(s * 1000000))
    else:
        _c.tick()


@micropython.native
def time():
    _c.tick()
    return (_c.now + _c.rtc_off) // 1000000


@micropython.native
def time_ns():
    _c.tick()
    return (_c.now + _c.rtc_off) * 1000


@micropython.native
def _days(y, m, d):
    # days since 2000-01-01 of a proleptic Gregorian date (month may be out of 1..12)
    y += (m - 1) // 12
    m = (m - 1) % 12 + 1
    if m <= 2:
        y -= 1
        m += 12
    return 365 * y + y // 4 - y // 100 + y // 400 + (153 * (m - 3) + 2) // 5 + d - 730426


@micropython.native
def gmtime(secs=None):
    if secs is None:
        secs = time()
    secs = int(secs)
    days, s = divmod(secs, 86400)
    wd = (days + 5) % 7  # 2000-01-01 was a Saturday; Monday is 0
    # civil from days (H. Hinnant), shifted to the 2000 epoch
    z = days + 730425
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    yd = days - _days(y, 1, 1) + 1
    return (y, m, d, s // 3600, s // 60 % 60, s % 60, wd, yd)


localtime = gmtime


@micropython.native
def mktime(t):
    if len(t) not in (8, 9):
        raise TypeError("mktime needs a tuple of length 8 or 9")
    return _days(t[0], t[1], t[2]) * 86400 + t[3] * 3600 + t[4] * 60 + t[5]
