# Runs first on every start. Modules live in /lib (on the path by default on the ESP32).
# Nothing here may fail: the node must always reach main.py.
# First: finish installing an app left complete in new/ (by `meetkit provision` or the node's
# update), or remove an unfinished copy, so main.py never runs half of an update (appswap.py); a
# new/ with ota.json and no .ready is an update being downloaded and stays. Else, while a new app is
# on trial (app.trial), count its start, or put the previous app back (lib/trial.py, trialboot.py).
# A configuration on trial (config.json.old): its start counted, or the previous one put back
# (lib/cfgtrial.py), before main.py reads config.json.
# After an install or a rollback the board resets: what compiling them interned (names, short
# strings) is never freed, and the node starts a few names short of MicroPython's next string pool
# (docs/developer.md, "Heap"). For the same reason this file and main.py stay small.


def _swap():
    import os
    w = []
    for p in ("app.swap", "new/.ready", "new/ota.json", "new", "app.trial"):
        try:
            os.stat(p)
            w.append(p)
        except OSError:
            pass
    try:
        if "app.swap" in w or "new/.ready" in w or "new" in w and "new/ota.json" not in w:
            import appswap
            appswap.finish()
        elif "app.trial" not in w:
            return
        else:
            import trial
            if trial.start():   # counted: the node starts on trial
                return
    except Exception as e:   # cut short: the node runs what is there, the next start goes on
        print("boot: %r" % (e,))
        return
    import machine
    machine.reset()


def _cfg():
    import os
    try:
        os.stat("config.json.old")
    except OSError:
        return
    try:
        import cfgtrial
        cfgtrial.boot()
    except Exception as e:   # cut short: the next start goes on
        print("boot: %r" % (e,))
    import sys
    sys.modules.pop("cfgtrial", None)


_swap()   # returns only when the node starts (else the board resets)
del _swap
_cfg()
del _cfg
import gc  # noqa: E402
gc.collect()
del gc
