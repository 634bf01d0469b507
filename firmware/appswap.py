# Installing a new app without ever leaving half of one (docs/technician.md, "Updating a node").
# `meetkit provision` (or the node's update, lib/trial.py) puts the complete new app in new/
# (mirroring the root), its manifest new/app.json (every file of new/: provision's {"files": {path:
# sha256}} or a release's {"files": [{"path": ...}, ...]}), and only then the empty new/.ready: the
# commit point. finish() (called first thing by boot.py, and by provision over the REPL) then puts
# the files in place, in two phases, each step finished by the next call when the power is cut:
#   1. every new/X is COPIED next to its place as X.swp (a new file in X's own folder, written and
#      closed: littlefs commits it in one step at the close), and only then new/X is removed (one
#      commit in new/). A cut mid-copy leaves new/X whole: the next call copies it again; a cut
#      after the close finds X.swp whole (new/X gone: done, or still there: copied again). So a
#      complete new/ is never lost, and the flash needs room for ONE more file than old + new
#      app (checked first; the offer asks for it, lib/otaoffer.py). The manifest goes last, as
#      app.json.swp. The old app is untouched. Then the marker app.swap: the new app is in.
#   2. every X.swp is renamed to X (appswap.py and boot.py first, so a cut boot finishes), then
#      app.json; /lib keeps only the manifest's files (a stale x.py would shadow a new x.mpy);
#      new/ and the marker go.
# Why not new/X -> X.swp (a rename): littlefs moves a file between folders in two commits, and a
# power cut between them lost the file (and in the simulator the NEXT file's copy as well):
# bench/ota_powercut.py found a third of the cut nodes back on the old app, the update given up.
# A release staged with new/trial.json goes on trial, the old app kept: phase 2 first writes
# app.trial (trial.json plus the old app's files it keeps and the new app's it adds), then moves
# each old X to X.old before X.swp -> X (a copy for appswap.py and boot.py, which must never be
# missing), app.json to app.json.old, a stale /lib file to .old. lib/trial.py counts the trial's
# starts and proves the new app (deletes the .old files); lib/trialboot.py puts the old one back.
# Without new/trial.json (provision) nothing is kept, and an app on trial is settled first.
# An install that cannot be made (a release that may not be installed, no room for the copy, a
# file missing from new/) removes new/ and keeps the old app; when it was the node's update
# (new/ota.json) it leaves app.refused ({"release", "reason"}): the running app reports it as the
# event "refused" (lib/aftercare.py), so the gateway's rollout halts at once with the reason.
# An unfinished new/ is removed, unless it holds new/ota.json: an update the node is downloading.
# It imports only os and never touches config.json, board.json, ca.der, node.key, sp/,
# boot.count, crash.* or any file it was not given.
import os

NEW = "new"
READY = "new/.ready"
MANIFEST = "app.json"
MARK = "app.swap"
SWP = ".swp"
OLD = ".old"
TRIAL = "app.trial"
TRIAL_NEW = "new/trial.json"
OTA = "new/ota.json"
REFUSED = "app.refused"


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


def _release():
    """The release new/ holds (trial.json's or the manifest's version), for app.refused."""
    for p, k in ((TRIAL_NEW, '"release"'), (NEW + "/" + MANIFEST, '"fw"'), (MANIFEST + SWP, '"fw"')):
        try:
            with open(p) as f:
                t = f.read()
            i = t.index('"', t.index(":", t.index(k)) + 1) + 1
            return t[i:t.index('"', i)]
        except (OSError, ValueError):
            pass
    return None


def _abort(why):
    if _exists(OTA):   # the node's update: the running app tells the gateway (lib/aftercare.py)
        v = _release()
        with open(REFUSED + ".tmp", "w") as f:
            f.write('{"release":%s,"reason":"install failed: %s"}' % (
                "null" if v is None else '"%s"' % v.replace("\\", "").replace('"', ""),
                why.replace("\\", "/").replace('"', "'")))
        os.rename(REFUSED + ".tmp", REFUSED)
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


_buf = None


def _copy(src, dst):
    """src -> dst, whole at dst's close (one commit); a fixed 512-byte buffer (boot's heap)."""
    global _buf
    if _buf is None:
        _buf = bytearray(512)
    b = memoryview(_buf)
    with open(src, "rb") as f, open(dst, "wb") as g:
        k = f.readinto(_buf)
        while k:
            g.write(b[:k])
            k = f.readinto(_buf)


def _keep(n):
    """n -> n.old; appswap.py and boot.py copied instead: never missing, they finish a cut install."""
    if n not in ("appswap.py", "boot.py"):
        os.rename(n, n + OLD)
        return
    _copy(n, n + ".tmp")
    os.rename(n + ".tmp", n + OLD)


def _room(names):
    """None when the flash has room for the largest file's copy (phase 1 holds one file twice at
    most), else why not."""
    big = 0
    for n in names + [MANIFEST]:
        try:
            big = max(big, os.stat(NEW + "/" + n)[6])
        except OSError:
            pass
    st = os.statvfs(".")
    need = (big + st[0] - 1) // st[0] + 2   # its blocks, and 2 for the folders' metadata
    if st[3] < need:
        return "no room to copy %d bytes: %d KB free" % (big, st[3] * st[0] // 1024)
    return None


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
        why = _room(names)
        if why:
            return _abort(why)
        # phase 1: copied next to their places, the old app untouched
        try:
            for n in names + [MANIFEST]:
                src = NEW + "/" + n
                if _exists(src):
                    _makedirs(n)
                    _copy(src, n + SWP)   # again after a cut: new/X is the original until here
                    os.remove(src)
                elif not _exists(n + SWP):
                    return _abort("%s is missing from new/" % n)
        except OSError as e:
            if e.args[0] != 28:   # ENOSPC; anything else: boot.py goes on, the next start tries again
                raise
            return _abort("the flash is full (%r)" % (e,))
        open(MARK, "w").close()   # the point of no return
        print("appswap: %d files copied next to their places: the new app is in" % (len(names) + 1))
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
