# `ntptime` as frozen on the ESP32, simulated: the answer is the scenario's true time. Without a
# Wi-Fi link, or during an `ntp_unreachable` fault, it raises OSError(110) after `timeout` seconds.
import micropython
import simcore as _c

host = "pool.ntp.org"
timeout = 1
_DELTA_2000 = 946684800


@micropython.native
def _ask():
    import network
    if not network._up() or _c.scen.fault("ntp_unreachable", _c.t_s()):
        _c.advance(int(timeout * 1000000))
        _c.count("ntp_failures")
        raise OSError(110)
    _c.advance(15000 + _c.rand() % 40000)  # a round trip
    _c.count("ntp_requests")


@micropython.native
def time():
    """Seconds since 2000-01-01 (UTC), as an int."""
    _ask()
    return _c.start_epoch - _DELTA_2000 + _c.now // 1000000


@micropython.native
def settime():
    """Set the RTC to the true time."""
    _ask()
    _c.rtc_off = (_c.start_epoch - _DELTA_2000) * 1000000
