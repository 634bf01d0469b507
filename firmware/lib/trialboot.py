# The end of a trial, at the start (trial.start() from boot.py, which then resets the board; appswap.py
# when provision installs over a trial). What the files hold: lib/trial.py. Loaded only then (heap).
# settle() rolls back (app.failed: its reason; or the trial's starts used up), or finishes a proof
# that a power cut interrupted (app.proved written first when the cut came before prove() wrote it:
# the gateway is told at the next connection, lib/aftercare.py). Each is committed first in
# app.trial ("proved"; "back": the reason), and every later step is idempotent: a power cut
# anywhere is finished by the next start.
# Rolling back: every kept X.old renamed back to X (appswap.py and boot.py last: until then the new
# app's, which know how to finish), then the new app's added files removed (after: a module always
# has one version on the path), app.rollback written (what the node reports), app.failed and
# app.trial removed.
import json
import os

TRIAL = "app.trial"
FAILED = "app.failed"


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


def _write(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def settle(end):
    """`end`: provision installs over this trial: a rollback under way is finished, else the app in
    place stays (its X.old go). "rolled back", "proved" or None (app.trial unreadable)."""
    try:
        with open(TRIAL) as f:
            t = json.load(f)
        t.get
    except Exception as e:   # cannot happen (written whole): the app in place stays
        print("trial: app.trial unreadable (%r): the app in place stays" % (e,))
        _remove(FAILED)
        os.remove(TRIAL)
        return None
    rel = t.get("release")
    why = t.get("back")
    if t.get("proved") or (end and not why):
        if not t.get("proved"):
            t["proved"] = 1
            _write(TRIAL, t)   # the commit point, as trial.prove()
        elif not _exists("app.proved"):   # proved, and the cut came before its note: the gateway is owed it
            _write("app.proved", {"release": rel, "prev": t.get("prev")})
        for n in t.get("kept", ()):
            _remove(n + ".old")
        _remove(FAILED)
        os.remove(TRIAL)
        print("trial: %s stays, the previous app is removed" % rel)
        return "proved"
    if not why:
        try:
            with open(FAILED) as f:
                why = json.load(f)["reason"]
        except OSError:
            why = "not proved in %d starts" % t.get("boots", 0)
        except Exception:
            why = "failed"
        t["back"] = why
        _write(TRIAL, t)   # the rollback's commit point: from here on it is finished, whatever happens
    for n in sorted(t.get("kept", ()), key=lambda n: (n == "boot.py", n == "appswap.py")):
        if _exists(n + ".old"):
            os.rename(n + ".old", n)
    for n in t.get("added", ()):
        _remove(n)
    _write("app.rollback", {"release": rel, "back_to": t.get("prev"), "reason": why})
    _remove(FAILED)
    os.remove(TRIAL)
    print("trial: rolled back from %s to %s: %s" % (rel, t.get("prev"), why))
    return "rolled back"
