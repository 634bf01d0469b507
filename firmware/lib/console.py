# Messages on the serial console: what a technician sees with `mpremote` or a terminal.
# One line each, prefixed with the uptime in seconds so a log can be read without a clock.
#
# The self-test (docs/technician.md, "The self-test"): check(item, ok, detail) prints
#     "<uptime> I check: <item>: pass: <detail>" or "<uptime> E check: <item>: fail: <detail>"
# when an item's result is first known and again when it changes (pass <-> fail), at most once a
# minute per item: a change within the minute is printed when the minute is up (flush()), unless
# it changed back meanwhile. `meetkit provision` reads these lines. Never a secret in a detail.
import time

_T0 = time.ticks_ms()
CHECK_GAP_MS = 60000
_checks = {}    # item -> [printed ok, printed at (ticks), latest ok, its detail, the change waits to be printed]
pending = 0     # items whose change waits for its minute
failing = 0     # items whose latest result is a fail (the status LED shows it)


def say(level, msg):
    print("%8d %s %s" % (time.ticks_diff(time.ticks_ms(), _T0) // 1000, level, msg))


def info(msg):
    say("I", msg)


def warn(msg):
    say("W", msg)


def error(msg):
    say("E", msg)


def _print(item, ok, detail):
    say("I" if ok else "E", "check: %s: %s: %s" % (item, "pass" if ok else "fail", detail))


def check(item, ok, detail):
    """Report a self-test result; cheap when nothing changed (call it on events, not per loop)."""
    global pending, failing
    now = time.ticks_ms()
    c = _checks.get(item)
    if c is None:
        _checks[item] = [ok, now, ok, detail, False]
        if not ok:
            failing += 1
        _print(item, ok, detail)
        return
    if ok != c[2]:
        failing += -1 if ok else 1
        c[2] = ok
    c[3] = detail   # the latest, for checks()
    if ok == c[0]:   # as printed: nothing to say (a change that came back within the minute)
        if c[4]:
            c[4] = False
            pending -= 1
        return
    if time.ticks_diff(now, c[1]) >= CHECK_GAP_MS:
        if c[4]:
            pending -= 1
        c[0], c[1], c[4] = ok, now, False
        _print(item, ok, detail)
    elif not c[4]:
        c[4] = True
        pending += 1


def flush():
    """Print the changes whose minute is up (the node calls it while `pending`)."""
    global pending
    now = time.ticks_ms()
    for item in _checks:
        c = _checks[item]
        if c[4] and time.ticks_diff(now, c[1]) >= CHECK_GAP_MS:
            _print(item, c[2], c[3])
            c[0], c[1], c[4] = c[2], now, False
            pending -= 1


def result(item):
    """The item's latest result: True, False, or None while not known."""
    c = _checks.get(item)
    return None if c is None else c[2]


def checks():
    """The checklist as it stands: {item: ["pass" or "fail", detail]} (the `selftest` command); a
    check without a detail has "" (the gateway takes a string, never null: docs/payload.md)."""
    out = {}
    for item in _checks:
        c = _checks[item]
        out[item] = ["pass" if c[2] else "fail", c[3] or ""]
    return out
