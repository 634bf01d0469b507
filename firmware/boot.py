# Runs first on every start. Modules live in /lib (on the path by default on the ESP32).
# Nothing here may fail: the node must always reach main.py.
# First: finish installing an app that `meetkit provision` left complete in new/, or remove an
# unfinished copy (appswap.py), so main.py never runs half of an update. appswap.py is loaded
# only when there is something to do (new/ or its marker): compiling it costs heap.


def _swap():
    import os
    try:
        try:
            os.stat("new")
        except OSError:
            os.stat("app.swap")
    except OSError:
        return
    try:
        import appswap
        appswap.finish()
    except Exception as e:
        print("boot: appswap: %r" % (e,))
    try:
        import sys
        del sys.modules["appswap"]   # its code is heap the node needs
    except Exception:
        pass


_swap()
del _swap
import gc  # noqa: E402
gc.collect()
del gc
