# Installing a new app without ever leaving half of one (docs/technician.md, "Updating a node").
# `meetkit provision` copies the complete new app into new/ (mirroring the root), its manifest
# new/app.json (every file of new/ with its sha256), checks every file on the board, and only then
# writes the empty new/.ready: the commit point. finish() (called first thing by boot.py, and by
# provision over the REPL) then puts the files in place, in two phases, each step finished by the
# next call when the power is cut:
#   1. every new/X is moved next to its place as X.swp, the manifest as app.json.swp (the old app
#      untouched). If one is lost the new app cannot be completed: the .swp files and new/ go, and
#      the old app runs on. Then the marker app.swap is written: from here on the new app is in.
#   2. every X.swp is renamed to X (appswap.py and boot.py first, so a cut boot finishes), then
#      app.json; /lib keeps only the manifest's files (a stale x.py would shadow a new x.mpy);
#      new/ and the marker go.
# Why not new/X -> X directly: littlefs moves a file between folders in two commits, and in the
# simulator a power cut between them lost the NEXT file's copy as well (tests/sim/test_appswap.py);
# a rename within a folder is one commit, atomic. It imports only os and never touches sp/,
# boot.count or any file it was not given.
import os

NEW = "new"
READY = "new/.ready"
MANIFEST = "app.json"
MARK = "app.swap"
SWP = ".swp"


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
    """The paths of the manifest's "files" object, appswap.py and boot.py first (no json module:
    the board may not have it)."""
    with open(path) as f:
        text = f.read()
    i = text.find('"files"')
    if i < 0:
        raise ValueError("no files")
    i = text.index("{", i)
    names = text[i + 1:text.index("}", i)].split('"')[1::4]
    for n in names:
        if not n or n.startswith("/") or ".." in n.split("/") or n in (MANIFEST, MARK, ".ready") \
                or n.startswith(NEW + "/") or n.endswith(SWP):
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


def finish():
    """Install the app waiting in new/ if it is complete (new/.ready), else remove the unfinished
    copy. True when this call installed something."""
    if not _exists(MARK):
        if not _isdir(NEW):
            return False
        if not _exists(READY):   # a copy that was never finished: the app in place stays
            _rmtree(NEW)
            print("appswap: removed an unfinished copy in new/")
            return False
        m = NEW + "/" + MANIFEST
        try:
            names = _files(m if _exists(m) else MANIFEST + SWP)
        except (OSError, ValueError) as e:
            return _abort("the manifest is unreadable (%r)" % (e,))
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
    for n in names:
        if _exists(n + SWP):
            os.rename(n + SWP, n)   # replaces the old file in one step
    if _exists(MANIFEST + SWP):
        os.rename(MANIFEST + SWP, MANIFEST)
    keep = {}
    for n in names:
        keep[n] = 1
    if _isdir("lib"):
        _prune("lib", keep)
    if _isdir(NEW):
        _rmtree(NEW)
    os.remove(MARK)
    print("appswap: installed the app of new/ (%d files)" % len(names))
    return True


def _prune(d, keep):
    for e in list(os.ilistdir(d)):
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            _prune(p, keep)
        elif p not in keep:
            os.remove(p)
