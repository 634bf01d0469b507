# The simulator's core: the virtual clock (microseconds since scenario start), the scenario, the
# device registry, the counters, and the ways out (until_ms, resets) that end the process with
# state.json written. Everything the board modules and device models share lives here.
import sys
import json
import utime
from scenario import Scenario

MASK = 0x3FFFFFFF        # ticks wrap at 2**30, as on the board
CALL_US = 10             # virtual cost of a call that reads a clock or polls a peripheral
BYTE_US = 1042           # one UART byte at 9600 8N1

now = 0                  # virtual clock, us since scenario start
boot = 0                 # `now` at this boot
until = None
speed = 0
seed = 1
start_epoch = 0
rtc_off = 0              # RTC (us since 2000-01-01) = now + rtc_off
reset_cause = "power_on"
chip_id = b"\x24\x0a\xc4\x00\x00\x01"
scen = None
stats = {"i2s_samples_read": 0, "i2s_samples_lost": 0, "uart_bytes_dropped": 0, "wdt_feeds": 0}
devices = {"i2c": {}, "uart": {}, "i2s": {}}
nvs = {}
rtc_mem = b""
pins = {}                # GPIO number -> level driven by the firmware
_watch = {}              # GPIO number -> device callbacks
_nxt = 1 << 62           # the clock value at which _event() must look
_wdt = None
_wdt_us = 0
_exit = None
_state = None
_p0 = 0
_r0 = 0
_rnd = 2463534242

_TYPES = {"bme280": "dev_bme280", "pms5003": "dev_plantower", "pms7003": "dev_plantower",
          "pms1003": "dev_plantower", "sds011": "dev_sds011", "ics43434": "dev_mic",
          "inmp441": "dev_mic"}


def init(sim):
    global now, boot, until, speed, seed, start_epoch, rtc_off, reset_cause, chip_id, scen
    global nvs, rtc_mem, _state, _p0, _r0, _rnd
    # Opened now, before the flash is mounted at '/': written once, at exit.
    _state = open(sim["state_file"], "w")
    now = boot = int(sim.get("t_ms") or 0) * 1000
    u = sim.get("until_ms")
    until = None if u is None else int(u) * 1000
    speed = sim.get("speed") or 0
    seed = sim.get("seed") or 1
    _rnd = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1
    start_epoch = sim.get("start_epoch") or 0
    reset_cause = sim.get("reset_cause") or "power_on"
    c = sim.get("chip_id")
    if c:
        import ubinascii
        chip_id = ubinascii.unhexlify(c)
    r = sim.get("rtc")
    rtc_off = (0 if r is None else int(r * 1000 + 0.5) * 1000) - now
    nvs = sim.get("nvs") or {}
    m = sim.get("rtc_memory")
    if m:
        import ubinascii
        rtc_mem = ubinascii.unhexlify(m)
    scen = Scenario(sim.get("scenario") or {})
    _p0 = now
    _r0 = utime.time_ns() // 1000
    devs = sim.get("devices") or {}
    for bus in ("i2c", "uart", "i2s"):
        for bid, cfg in (devs.get(bus) or {}).items():
            if bus == "i2c":
                d = devices["i2c"].setdefault(int(bid), {})
                for addr, c in cfg.items():
                    d[int(addr)] = _make(c)
            else:
                devices[bus][int(bid)] = _make(cfg)
    _sched()


def _make(cfg):
    kind = cfg["type"]
    mod = _TYPES.get(kind)
    if mod is None:
        raise ValueError("sim.json: unknown device type %r" % kind)
    return __import__(mod).Device(cfg, kind)


# -- the clock -----------------------------------------------------------------------------------
def advance(us):
    global now
    now += us
    if now >= _nxt:
        _event()


def tick():
    global now
    now += CALL_US
    if now >= _nxt:
        _event()


def t_s(t=None):
    """Scenario seconds (float) at virtual time t (us), now by default."""
    return (now if t is None else t) / 1000000


def _event():
    global now
    if _exit is not None:
        raise SystemExit(_exit)
    if _wdt is not None and now >= _wdt and (until is None or _wdt < until):
        now = _wdt
        finish("wdt", 3)
    if until is not None and now >= until:
        now = until
        finish("until", 0)
    if speed:
        ahead = int((now - _p0) / speed) - (utime.time_ns() // 1000 - _r0)
        if ahead > 1000:
            utime.sleep_us(ahead)
    _sched()


def _sched():
    global _nxt
    n = 1 << 62
    if until is not None:
        n = until
    if _wdt is not None and _wdt < n:
        n = _wdt
    if speed and now + 2000 < n:
        n = now + 2000
    _nxt = -1 if _exit is not None else n


def wdt_start(ms):
    global _wdt, _wdt_us
    _wdt_us = ms * 1000
    _wdt = now + _wdt_us
    _sched()


def wdt_feed():
    global _wdt
    if _wdt is not None:
        _wdt = now + _wdt_us
        stats["wdt_feeds"] += 1
        _sched()


# -- leaving -------------------------------------------------------------------------------------
def finish(cause, code, t=None):
    """Write state.json and end the process with `code` (SystemExit, re-raised until it gets out)."""
    global _exit
    if _exit is None:
        _exit = code
        write_state(cause, now if t is None else t)
        _sched()
    raise SystemExit(_exit)


def reset(cause, after_ms=0):
    """The board resets: exit code 3; the runner restarts it `after_ms` later (deep sleep)."""
    t = now + after_ms * 1000
    if until is not None and t >= until:
        finish("until", 0, until)
    finish(cause, 3, t)


def write_state(cause, t):
    global _state
    if _state is None:
        return
    try:
        import micropython
        stats["heap_peak"] = micropython.mem_peak()
    except (ImportError, AttributeError):
        pass
    st = {"t_ms": t // 1000, "cause": cause, "rtc": ((t + rtc_off) // 1000) / 1000,
          "reset_cause": reset_cause, "stats": stats, "nvs": nvs}
    if rtc_mem:
        import ubinascii
        st["rtc_memory"] = ubinascii.hexlify(rtc_mem).decode()
    _state.write(json.dumps(st))
    _state.close()
    _state = None


# -- shared helpers ------------------------------------------------------------------------------
def count(key, n=1):
    stats[key] = stats.get(key, 0) + n


def rand():
    """32 pseudo-random bits (xorshift32), reproducible from sim.json's seed."""
    global _rnd
    x = _rnd
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    _rnd = x
    return x


def pin_write(n, v):
    if pins.get(n) != v:
        pins[n] = v
        for f in _watch.get(n, ()):
            f(v)


def watch(n, f):
    _watch.setdefault(n, []).append(f)


def power_on_time(kind, pon):
    """When a device that was unplugged by a fault of `kind` last came back (us), if after `pon`."""
    e = scen.last_end(kind, now / 1000000)
    if e is not None:
        e = int(e * 1000000)
        if e > pon:
            return e
    return None


class UartDev:
    """A device's TX line: frames and replies leave at their times and reach the UART one byte
    time apart (9600 8N1). Subclasses give `_pt()` (time of the next periodic frame or None) and
    `_pframe(t)` (that frame, advancing their schedule); replies go to `_rq` as [t, bytes]."""

    def __init__(self):
        self._out = None
        self._i = 0
        self._t0 = 0
        self._free = 0
        self._rq = []

    def _when(self):
        t = self._pt()
        if self._rq and (t is None or self._rq[0][0] <= t):
            t = self._rq[0][0]
        return t

    def pump(self, u, now):
        """Move the bytes that have arrived by `now` into UART `u` (None: nobody listens)."""
        while True:
            out = self._out
            if out is None:
                t = self._when()
                if t is None or t > now:
                    return
                if self._rq and self._rq[0][0] == t:
                    out = self._rq.pop(0)[1]
                else:
                    out = self._pframe(t)
                if out is None:
                    continue
                self._out = out
                self._t0 = t if t > self._free else self._free
                self._i = 0
            n = len(out)
            k = (now - self._t0) // BYTE_US + 1
            if k <= self._i:
                return
            if k > n:
                k = n
            if u is not None:
                u._put(out, self._i, k)
            self._i = k
            if k < n:
                return
            self._free = self._t0 + n * BYTE_US
            self._out = None

    def next_t(self):
        """When the next byte arrives (us), or None when nothing is scheduled."""
        if self._out is not None:
            return self._t0 + self._i * BYTE_US
        t = self._when()
        return None if t is None else max(t, self._free)

    def drop(self):
        self._out = None
        self._rq = []
