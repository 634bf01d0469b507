"""Crash reports (issue 15): what an unhandled exception leaves on the flash for the next start to
report, and the count of crashes in a row that selects safe mode. Loaded only when needed (heap).

Files at the flash's root, each written whole (a temporary file, then one rename):
  crash.txt     the last unhandled exception: the line "boot <n> up <s> s" (n: boot.count as it
                stood, which a crash at import has not counted yet; s: seconds since the start;
                " loop" after it: an error of a node that had measured, not counted), then the
                traceback as sys.print_exception writes it (its last 1500 characters).
  crash.count   crashes in a row (a decimal number).

main.py, at a start with crash.count, calls safe_mode(): when crash.count >= 3 and no app is on
trial (a trial's crash rolls back instead), it imports safemode and runs safemode.main() instead of
node (which should never return: a reset when a fix arrives; if it does, the board resets). An app
without safemode.py starts normally and says so. main.py hands what escapes node (its import
included, not KeyboardInterrupt; node.py hands it on only before the first record) to died():
record(), trial.fail() when an app is on trial; then it waits 5 s and resets. node.py calls
died(exc, 0) for an error in the loop after the first record, or a MemoryError anywhere in the
loop: crash.txt only (reported, count 0; a MemoryError not even that), as the node measures again
after its reset; it is not a crash in a row (no safe mode) and fails no trial.

The API:
  record(exc, n=1) -> "ValueError: the message" (the traceback's last line). Prints the traceback,
                  writes crash.txt, adds n (1 or 0) to crash.count. Never raises.
  count()      -> crashes in a row (0 without crash.count).
  clear()      -> removes crash.count: the run of crashes is over (the node after 10 minutes of
                  running with a batch acknowledged; safe mode when a fix arrives).
  report()     -> the pending report as the crash event's fields, {"boot": n, "at_up": s,
                  "count": crashes in a row (0: not counted), "trace": "Traceback ..."}, or None.
                  Publish it, then:
  reported()   -> removes crash.txt (the report went out; crash.count stays).
"""
import os

TXT = "crash.txt"
COUNT = "crash.count"
TRACE_MAX = 1500


def _int(path):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def _write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def count():
    return _int(COUNT)


def record(exc, n=1):
    import sys
    import time
    import io
    why = "%s: %s" % (type(exc).__name__, exc)
    try:
        sys.print_exception(exc)
        s = io.StringIO()
        sys.print_exception(exc, s)
        trace = s.getvalue()
        del s
        lines = trace.rstrip().split("\n")
        why = lines[-1]
        if "console" in sys.modules:   # uptime from the console's start (main.py's, about)
            up = time.ticks_diff(time.ticks_ms(), sys.modules["console"]._T0)
        else:   # the board's ticks count from its start
            up = time.ticks_ms()
        _write(TXT, "boot %d up %d s%s\n%s" % (_int("boot.count"), up // 1000, "" if n else " loop",
                                               trace[-TRACE_MAX:]))
    except Exception as e:   # a full or failing flash: the reset must still happen
        print("crash: crash.txt: %r" % (e,))
    try:
        if n:
            _write(COUNT, str(count() + 1))
    except Exception as e:
        print("crash: crash.count: %r" % (e,))
    return why


def safe_mode():
    """main.py, at a start with crash.count: True when safe mode ran instead of node."""
    import sys
    sys.modules.pop("crash", None)   # main.py keeps no reference: its code goes after this call
    if count() < 3:
        return False
    try:
        os.stat("app.trial")
        return False   # a new app on trial: a crash rolls it back instead (app.failed)
    except OSError:
        pass
    try:
        import safemode
    except ImportError as e:
        if "safemode" not in str(e):
            raise
        print("crash: %d crashes in a row, and this app has no safe mode: a normal start" % count())
        return False
    safemode.main()
    import machine
    machine.reset()
    return True


def died(exc, n=1):
    """main.py, with what escaped node: the report, app.failed on trial (main.py then resets).
    node.py, n=0: a node that had measured: the report only, then 10 s (node.py then resets)."""
    import sys
    import gc
    sys.modules.pop("node", None)   # its buffers: heap for the report
    sys.modules.pop("nodestart", None)   # the start's code, which holds node too
    gc.collect()
    if n or not isinstance(exc, MemoryError):
        why = record(exc, n)
    else:   # the loop at a tight heap (a backlog, a download): no report, whose heap at the next start
        sys.print_exception(exc)   # could be the next MemoryError (ota.py bounds such restarts)
    if not n:   # as node.py did: said, then 10 s before its reset (flash written at most every 10 s)
        import console
        import time
        console.error("unexpected error; resetting in 10 s")
        time.sleep(10)
        return
    try:
        import trial
        if trial.fail("crash: " + why):
            print("crash: the app on trial failed: the previous one is put back at the next start")
    except Exception as e:
        print("crash: app.failed: %r" % (e,))


def clear():
    _remove(COUNT)


def report():
    try:
        with open(TXT) as f:
            text = f.read()
    except OSError:
        return None
    head, _, trace = text.partition("\n")
    p = head.split()
    try:
        boot, up = int(p[1]), int(p[3])
    except (IndexError, ValueError):
        boot = up = None
    return {"boot": boot, "at_up": up, "count": 0 if len(p) > 5 else count(), "trace": trace[-TRACE_MAX:]}


def reported():
    _remove(TXT)
