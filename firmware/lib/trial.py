"""A new app on trial, from the running node's side (issue 15; design: docs/technician.md, "Updating a
node"). Loaded only when needed (heap): the node imports it when app.trial exists, or to report a
rollback when app.rollback exists.

Files at the flash's root, each written whole (a temporary file, then one rename):
  app.trial     JSON: the app running is on trial. appswap.py writes it when it installs a release
                staged with new/trial.json: that object as the downloader wrote it ("release" and
                "prev" at least: the new and the previous version; anything else the node wants back
                during the trial, e.g. "checks": the self-test items that passed before the update),
                plus "boots" (starts of the new app so far: boot.py counts them), "added" (the new
                app's files the old one did not have) and "kept" (the old app's files, renamed X.old
                within their folder, app.json -> app.json.old among them).
  app.failed    JSON {"reason": "..."}: the trial failed; boot.py rolls back at the next start.
  app.rollback  JSON {"release": new, "back_to": previous, "reason": "..."}: boot.py rolled back.
  app.proved    JSON {"release": new, "prev": previous}: the trial was proved (written right after
                the proof's commit, by prove() or by trialboot.py finishing a proof a power cut
                interrupted): aftercare.py sends the event "proved" from it once connected and
                removes it once the broker took the event (QoS 1), so a cut anywhere after the
                commit never leaves the gateway without the proof (it may hear it twice).

Staging a release for a trial (the OTA downloader): new/ mirrors the root with every file of the
release, new/app.json is the release manifest ("files": a list of {"path": ...} as in
docs/payload.md, or provision's {path: sha256} object), then new/trial.json (the object above), and
LAST the empty new/.ready (the commit point: appswap installs at the next start, boot.py). Without
new/trial.json the install is provision's: no trial, nothing kept (a provisioned app is the
technician's choice). A release never carries config.json, board.json, ca.der, node.key,
boot.count, crash.*, app.* or sp/: appswap refuses such a release (removes new/, keeps the old app).
appswap refuses a trial install while another app is on trial (state() is not None: refuse offers).

The start that installs a release resets the board; at every start with app.trial, boot.py calls
start() here, which counts it in "boots"; the start after the 3rd without proving rolls back ("not
proved in 3 starts"), as does app.failed (its reason): lib/trialboot.py, then a reset. Rolling
back: every kept X.old renamed back to X, the new app's added files removed, app.rollback
written, app.failed and app.trial removed; a power cut anywhere is finished by the next start.
main.py: an unhandled exception in node (or at its import) is recorded by crash.py and, on trial,
written to app.failed ("crash: ValueError: ..."), then the board resets.

The API:
  state()            -> app.trial's dict ({"release", "prev", "boots", ...}), or None when no app
                        is on trial (also when app.trial is unreadable: boot.py then decides).
  prove()            -> the release proved (str), or None when there was no trial to prove, or
                        app.failed exists (a failed trial is not proved). Deletes the previous app:
                        app.trial is first rewritten with "proved" (the commit point: from there no
                        rollback), then app.proved is written (what the node reports), then every
                        kept X.old is removed, then app.trial; a power cut in between is finished by
                        boot.py (trialboot.py writes app.proved too if the cut came before it). A cut
                        before the commit leaves the trial on: the next start counts a start of it
                        and the app proves itself again (the 3rd start's cut: rolled back). Call it
                        once the new app has proved itself (started, broker reached, a batch
                        acknowledged, the self-test's items pass).
  fail(reason)       -> True when app.failed was written (an app on trial, not proved yet), False
                        otherwise. The caller then resets (machine.reset()): boot.py rolls back.
  rollback_report()  -> app.rollback's dict, or None. Report it (event "rolled_back"), then:
  clear_rollback()   -> removes app.rollback.
  proved_report()    -> app.proved's dict, or None. Report it (event "proved"), and once the broker
  clear_proved()     -> took it, this removes app.proved.
Crash reports and the count of crashes in a row: crash.py.
"""
import json
import os

TRIAL = "app.trial"
FAILED = "app.failed"
ROLLBACK = "app.rollback"
PROVED = "app.proved"
BOOTS = 3   # starts a new app gets to prove itself


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _write(path, obj):
    """Whole or not at all: a temporary file, then one rename in the same folder (one commit)."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def start():
    """boot.py, at a start with app.trial: True when the start is counted (the node starts on
    trial). Else trialboot.py rolls back (app.failed, or the start after the 3rd) or finishes a
    proof a power cut interrupted, and boot.py resets the board. Here, not in trialboot.py: the node
    loads this module on trial anyway, so counting adds no names to the heap."""
    t = _load(TRIAL)
    if isinstance(t, dict) and not (t.get("proved") or t.get("back") or _exists(FAILED)):
        n = t.get("boots", 0) + 1
        if n <= BOOTS:
            t["boots"] = n
            _write(TRIAL, t)
            print("trial: %s on trial, start %d of %d" % (t.get("release"), n, BOOTS))
            return True
    import trialboot
    trialboot.settle(False)
    return False


def state():
    t = _load(TRIAL)
    if not isinstance(t, dict) or t.get("proved") or t.get("back"):
        return None
    return t


def prove():
    t = state()
    if t is None or _exists(FAILED):
        return None
    t["proved"] = 1
    _write(TRIAL, t)   # the commit point: from here on the new app stays
    _write(PROVED, {"release": t.get("release"), "prev": t.get("prev")})   # what the gateway is owed
    for n in t.get("kept", ()):
        try:
            os.remove(n + ".old")
        except OSError:
            pass
    os.remove(TRIAL)
    return t.get("release")


def fail(reason):
    if state() is None:
        return False
    _write(FAILED, {"reason": str(reason)[:300]})
    return True


def rollback_report():
    r = _load(ROLLBACK)
    return r if isinstance(r, dict) else None


def clear_rollback():
    try:
        os.remove(ROLLBACK)
    except OSError:
        pass


def proved_report():
    r = _load(PROVED)
    return r if isinstance(r, dict) else None


def clear_proved():
    try:
        os.remove(PROVED)
    except OSError:
        pass
