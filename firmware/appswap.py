# Installing a new app without ever leaving half of one (docs/technician.md, "Updating a node").
# `meetkit provision` (or the node's update, lib/trial.py) puts the complete new app in new/
# (mirroring the root), its manifest new/app.json (every file of new/: provision's {"files": {path:
# sha256}} or a release's {"files": [{"path": ...}, ...]}), and only then the empty new/.ready: the
# commit point. finish() (called first thing by boot.py, and by provision over the REPL) then puts
# the files in place, in two phases, each step finished by the next call when the power is cut:
#   1. every new/X is moved next to its place as X.swp, the manifest as app.json.swp (the old app
#      untouched). If one is lost the new app cannot be completed: the .swp files and new/ go, and
#      the old app runs on. Then the marker app.swap is written: from here on the new app is in.
#   2. every X.swp is renamed to X (appswap.py and boot.py first, so a cut boot finishes), then
#      app.json; /lib keeps only the manifest's files (a stale x.py would shadow a new x.mpy);
#      new/ and the marker go.
# A release staged with new/trial.json goes on trial, the old app kept: phase 2 first writes
# app.trial (trial.json plus the old app's files it keeps and the new app's it adds), then moves
# each old X to X.old before X.swp -> X (a copy for appswap.py and boot.py, which must never be
# missing), app.json to app.json.old, a stale /lib file to .old. lib/trial.py counts the trial's
# starts and proves the new app (deletes the .old files); lib/trialboot.py puts the old one back.
# Without new/trial.json (provision) nothing is kept, and an app on trial is settled first.
# An unfinished new/ is removed, unless it holds new/ota.json: an update the node is downloading.
# Why not new/X -> X directly: littlefs moves a file between folders in two commits, and in the
# simulator a power cut between them lost the NEXT file's copy as well (tests/sim/test_appswap.py);
# a rename within a folder is one commit, atomic. It imports only os and never touches config.json,
# board.json, ca.der, node.key, sp/, boot.count, crash.* or any file it was not given.
import os

NEW = "new"
READY = "new/.ready"
MANIFEST = "app.json"
MARK = "app.swap"
SWP = ".swp"
OLD = ".old"
TRIAL = "app.trial"
TRIAL_NEW = "new/trial.json"


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _isdir(p):
    try:
        return os.stat(p)[0] & 0x4000 != 0
    except OSError:
        return False


def _rmtree(p):
    for e in list(os.ilistdir(p)):
        q = p + "/" + e[0]
        if e[1] & 0x4000:
            _rmtree(q)
        else:
            os.remove(q)
    os.rmdir(p)


def _makedirs(path):
    """The folders of a file's path, as needed."""
    i = path.find("/")
    while i > 0:
        d = path[:i]
        if not _isdir(d):
            os.mkdir(d)
        i = path.find("/", i + 1)


def _files(path):
    """The paths of the manifest's "files", appswap.py and boot.py first (no json module: the board
    may not have it)."""
    with open(path) as f:
        text = f.read()
    i = text.find('"files"')
    if i < 0:
        raise ValueError("no files")
    i = text.index(":", i) + 1
    while text[i] in " \r\n\t":
        i += 1
    if text[i] == "[":   # a release's [{"path": "boot.py", "size": ..., "sha256": ...}, ...]
        text = text[i:text.index("]", i)]
        names = []
        i = text.find('"path"')
        while i >= 0:
            i = text.index('"', text.index(":", i) + 1) + 1
            names.append(text[i:text.index('"', i)])
            i = text.find('"path"', i)
    else:   # provision's {path: sha256}
        names = text[i + 1:text.index("}", i)].split('"')[1::4]
    for n in names:
        if not n or n.startswith("/") or ".." in n.split("/") or n in (MANIFEST, MARK, ".ready") \
                or n.startswith(NEW + "/") or n.endswith(SWP) or n.endswith(OLD):
            raise ValueError("bad path %r" % n)
    names.sort(key=lambda n: (n != "appswap.py", n != "boot.py", n))
    return names


def _sweep(d):
    """Remove every *.swp under d (phase 1's moved copies), new/ aside."""
    for e in list(os.ilistdir(d) if d else os.ilistdir()):
        p = d + "/" + e[0] if d else e[0]
        if e[1] & 0x4000:
            if p != NEW:
                _sweep(p)
        elif p.endswith(SWP):
            os.remove(p)


def _abort(why):
    _sweep("")
    if _isdir(NEW):
        _rmtree(NEW)
    print("appswap: %s: the new app is removed, the old one stays" % why)
    return False


def _lib(d, out):
    """The files under d (lib/), .old copies aside."""
    for e in list(os.ilistdir(d)):
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            _lib(p, out)
        elif not p.endswith(OLD):
            out.append(p)
    return out


def _q(names):
    return ",".join('"%s"' % n for n in names)


def _trial(names, keep):
    """app.trial: new/trial.json's object plus the files the old app has (kept: renamed X.old) and
    has not (added). Before the first rename, so the same after a cut here. Written whole."""
    kept = [n for n in names + [MANIFEST] if _exists(n)]
    added = [n for n in names + [MANIFEST] if n not in kept]
    for p in _lib("lib", []) if _isdir("lib") else ():
        if p not in keep and not p.endswith(SWP):
            kept.append(p)
    with open(TRIAL_NEW) as f:
        t = f.read()
    t = t[:t.rindex("}")].rstrip()
    with open(TRIAL + ".tmp", "w") as f:
        f.write('%s%s"boots":0,"kept":[%s],"added":[%s]}' % (t, "" if t.endswith("{") else ",", _q(kept), _q(added)))
    os.rename(TRIAL + ".tmp", TRIAL)


def _keep(n):
    """n -> n.old; appswap.py and boot.py copied instead: never missing, they finish a cut install."""
    if n not in ("appswap.py", "boot.py"):
        os.rename(n, n + OLD)
        return
    b = bytearray(512)
    with open(n, "rb") as f, open(n + ".tmp", "wb") as g:
        k = f.readinto(b)
        while k:
            g.write(b[:k])
            k = f.readinto(b)
    os.rename(n + ".tmp", n + OLD)


def finish():
    """Install the app waiting in new/ if it is complete (new/.ready), else remove the unfinished
    copy. True when this call installed something."""
    if not _exists(MARK):
        if not _isdir(NEW):
            if _exists(NEW):   # a file in new/'s way: boot.py would come back for it at every start
                os.remove(NEW)
            return False
        if not _exists(READY):   # a copy that was never finished: the app in place stays
            if _exists(NEW + "/ota.json"):   # the node's update, being downloaded: it goes on
                return False
            _rmtree(NEW)
            print("appswap: removed an unfinished copy in new/")
            return False
        m = NEW + "/" + MANIFEST
        try:
            names = _files(m if _exists(m) else MANIFEST + SWP)
        except (OSError, ValueError) as e:
            return _abort("the manifest is unreadable (%r)" % (e,))
        if _exists(TRIAL_NEW):
            if _exists(TRIAL):
                return _abort("another release is on trial")
            for n in names:
                if n in ("config.json", "board.json", "ca.der", "node.key", "boot.count") \
                        or n[:3] == "sp/" or n[:6] == "crash." or n[:4] == "app.":
                    return _abort("a release may not carry %s" % n)
        elif _exists(TRIAL):   # provision over an app on trial: settled first
            import trialboot
            trialboot.settle(True)
        # phase 1: next to their places, the old app untouched
        for n in names:
            src = NEW + "/" + n
            if _exists(src):
                _makedirs(n)
                os.rename(src, n + SWP)
            elif not _exists(n + SWP):
                return _abort("%s was lost" % n)
        if _exists(m):
            os.rename(m, MANIFEST + SWP)
        open(MARK, "w").close()   # the point of no return
    # phase 2 (also after a cut in it): into place
    names = _files(MANIFEST + SWP if _exists(MANIFEST + SWP) else MANIFEST)
    want = {}
    for n in names:
        want[n] = 1
    if _exists(TRIAL_NEW) and not _exists(TRIAL):
        _trial(names, want)
    keep = _exists(TRIAL)   # on trial: the old app's files stay, as X.old
    for n in names + [MANIFEST]:
        if _exists(n + SWP):
            if keep and _exists(n):
                _keep(n)
            os.rename(n + SWP, n)   # replaces the old file in one step
    for p in _lib("lib", []) if _isdir("lib") else ():
        if p not in want:   # a stale module would shadow the new one
            if keep:
                os.rename(p, p + OLD)
            else:
                os.remove(p)
    if _isdir(NEW):
        _rmtree(NEW)
    os.remove(MARK)
    print("appswap: installed the app of new/ (%d files)%s" % (len(names), ", on trial" if keep else ""))
    return True
