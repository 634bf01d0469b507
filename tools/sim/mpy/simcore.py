# The simulator's core: the virtual clock (microseconds since scenario start), the scenario, the
# device registry, the counters, and the ways out (until_ms, resets) that end the process with
# state.json written. Everything the board modules and device models share lives here.
import micropython
import gc
import json
import utime

CALL_US = 10             # virtual cost of a call that reads a clock or polls a peripheral
BYTE_US = 1042           # one UART byte at 9600 8N1

now = 0                  # virtual clock, us since scenario start
boot = 0                 # `now` at this boot
until = None
speed = 0                # N: N times real time; 0: as fast as it can; -1 (sim.json `live`): as fast
                         # as it can until the clock reaches the wall clock, then real time
seed = 1
start_epoch = 0
rtc_off = 0              # RTC (us since 2000-01-01) = now + rtc_off
reset_cause = "power_on"
mcu = "esp32"
mp_release = "1.29.0"   # the release os.uname() reports: the unix port's, or the one flashed (sim.json)
repl = None             # on a serial port (tools/sim/board.py): "board" or "raw", else None
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
flash = None            # the flash's block device (simflash.Flash), None with a host folder
_cut = False            # the power was cut (simflash): the process ends at the next time step
ballast = None          # heap held back from the firmware (sim.json heap_budget)
_held = 0               # its size
_gc_next = 0            # next sample of the live heap (us)
_switch = None          # the power switch: a host file opened before the mount (sim.json power_switch)
_swbuf = bytearray(12)   # "0", or "@" and the virtual ms to cut at (10 digits)


# -- the clock -----------------------------------------------------------------------------------
@micropython.native
def advance(us):
    global now
    now += us
    if now >= _nxt:
        _event()


@micropython.native
def tick():
    global now
    now += CALL_US
    if now >= _nxt:
        _event()


@micropython.native
def t_s(t=None):
    """Scenario seconds (float) at virtual time t (us), now by default."""
    return (now if t is None else t) / 1000000


@micropython.native
def _event():
    global now, _gc_next, speed, _p0, _r0
    if _exit is not None:
        raise SystemExit(_exit)
    if _cut:
        finish("power_cut", 4)
    if _wdt is not None and now >= _wdt and (until is None or _wdt < until):
        now = _wdt
        finish("wdt", 3)
    if until is not None and now >= until:
        now = until
        finish("until", 0)
    if now >= _gc_next:
        # once per simulated second: the live heap (firmware and simulator) after a collection
        _gc_next = now + 1000000
        heap_sample()
        if _switch is not None:   # the test turned the power off (SimNode.cut_power())
            _switch.seek(0)
            if _switch.readinto(_swbuf) and (_swbuf[0] == 48 or _swbuf[0] == 64 and now >= _cut_at()):
                if flash is not None:
                    flash.live = False
                power_cut()
                finish("power_cut", 4)
    if speed < 0 and start_epoch * 1000000 + now >= utime.time_ns() // 1000:
        speed = 1   # the backfill caught up with the wall clock: real time from now on
        _p0 = now
        _r0 = utime.time_ns() // 1000
    if speed > 0:
        ahead = int((now - _p0) / speed) - (utime.time_ns() // 1000 - _r0)
        if ahead > 1000:
            utime.sleep_us(ahead)
    _sched()


@micropython.native
def _cut_at():
    """The virtual time (us) of a cut set ahead ("@" and 10 digits of ms, SimNode.cut_power(at_s))."""
    ms = 0
    for i in range(1, 11):
        ms = ms * 10 + _swbuf[i] - 48
    return ms * 1000


@micropython.native
def heap_sample():
    gc.collect()
    a = gc.mem_alloc() - _held
    if a > stats.get("heap_peak", 0):
        stats["heap_peak"] = a


@micropython.native
def _sched():
    global _nxt
    n = 1 << 62
    if until is not None:
        n = until
    if _wdt is not None and _wdt < n:
        n = _wdt
    if speed and now + 2000 < n:
        n = now + 2000
    if _gc_next < n:
        n = _gc_next
    _nxt = -1 if _exit is not None or _cut else n


@micropython.native
def wdt_start(ms):
    global _wdt, _wdt_us
    _wdt_us = ms * 1000
    _wdt = now + _wdt_us
    _sched()


@micropython.native
def wdt_feed():
    global _wdt
    if _wdt is not None:
        _wdt = now + _wdt_us
        stats["wdt_feeds"] += 1
        _sched()


# -- leaving -------------------------------------------------------------------------------------
@micropython.native
def power_cut():
    """Called by the flash at the torn write, maybe with the heap locked: no allocation here. A
    SystemExit at the next time step ends the process (firmware `except Exception` lets it by)."""
    global _cut, _nxt
    _cut = True
    _nxt = -1


@micropython.native
def stop(cause, code, t=None):
    """The board stops: nothing reaches the flash any more (files the firmware left open are not
    flushed, as at a reset), state.json is written; `code` is the exit code from now on. After a
    power cut no collection is made: finalisers would only fail to flush."""
    global _exit
    if _exit is None:
        if _cut:
            cause, code = "power_cut", 4
        else:   # the last heap sample; files the GC closes now still reach the flash
            heap_sample()
        if flash is not None:
            flash.live = False
        _exit = code
        write_state(cause, now if t is None else t)
        _sched()
    return _exit


@micropython.native
def finish(cause, code, t=None):
    """Write state.json and end the process with `code` (SystemExit, re-raised until it gets out)."""
    raise SystemExit(stop(cause, code, t))


@micropython.native
def reset(cause, after_ms=0):
    """The board resets: exit code 3; the runner restarts it `after_ms` later (deep sleep)."""
    t = now + int(after_ms * 1000)
    if until is not None and t >= until:
        finish("until", 0, until)
    finish(cause, 3, t)


@micropython.native
def write_state(cause, t):
    global _state
    if _state is None:
        return
    if flash is not None:   # life totals: the runner carries them over restarts
        stats["flash_writes"] = flash.writes
        stats["flash_erases"] = flash.erases
        stats["flash_bytes"] = flash.nbytes
    st = {"t_ms": t // 1000, "cause": cause, "rtc": ((t + rtc_off) // 1000) / 1000,
          "reset_cause": reset_cause, "stats": stats, "nvs": nvs}
    if rtc_mem:
        import ubinascii
        st["rtc_memory"] = ubinascii.hexlify(rtc_mem).decode()
    _state.write(json.dumps(st))
    _state.close()
    _state = None


# -- shared helpers ------------------------------------------------------------------------------
@micropython.native
def count(key, n=1):
    stats[key] = stats.get(key, 0) + n


@micropython.native
def rand():
    """32 pseudo-random bits (xorshift32), reproducible from sim.json's seed."""
    global _rnd
    x = _rnd
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    _rnd = x
    return x


@micropython.native
def pin_write(n, v):
    if pins.get(n) != v:
        pins[n] = v
        for f in _watch.get(n, ()):
            f(v)


@micropython.native
def watch(n, f):
    _watch.setdefault(n, []).append(f)


@micropython.native
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
    time apart (9600 8N1). Subclasses give `_pt()` (time of the next periodic frame or None),
    `_pframe(t)` (that frame, advancing their schedule) and `_power_on(t)`; replies go to `_rq` as
    [t, bytes]. While a fault of kind `fault` is active the device is unplugged: silent, and
    power-cycled when it ends."""

    fault = "pm_unplugged"
    _u = None    # the UART listening (set by machine.UART)

    @micropython.native
    def __init__(self):
        self._out = None
        self._i = 0
        self._t0 = 0
        self._free = 0
        self._rq = []

    @micropython.native
    def _when(self):
        t = self._pt()
        if self._rq and (t is None or self._rq[0][0] <= t):
            t = self._rq[0][0]
        return t

    @micropython.native
    def pump(self, u, now):
        """Move the bytes that have arrived by `now` into UART `u` (None: nobody listens)."""
        self._emit(u, now)
        p = power_on_time(self.fault, self._pon)
        if p is not None:  # plugged back in without a periodic frame noticing
            self._power_on(p)
            self._emit(u, now)

    @micropython.native
    def _emit(self, u, now):
        while True:
            out = self._out
            if out is None:
                t = self._when()
                if t is None or t > now:
                    return
                if self._rq and self._rq[0][0] == t:
                    out = self._rq.pop(0)[1]
                else:
                    f = scen.fault(self.fault, t / 1000000)
                    if f:
                        self._power_on(int(f["to"] * 1000000))
                        continue
                    out = self._pframe(t)
                self._out = out
                self._t0 = t if t > self._free else self._free
                self._i = 0
            n = len(out)
            k = (now - self._t0) // BYTE_US   # bytes received whole
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

    @micropython.native
    def next_t(self):
        """When the next byte arrives (us), or None when nothing is scheduled."""
        if self._out is not None:
            return self._t0 + (self._i + 1) * BYTE_US
        t = self._when()
        return None if t is None else max(t, self._free) + BYTE_US

    @micropython.native
    def drop(self):
        self._out = None
        self._rq = []
