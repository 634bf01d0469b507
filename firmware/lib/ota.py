# The download of a release the node accepted (otaoffer.py checks an offer; docs/payload.md,
# "Release offer"): loaded only while a download is on or waits in new/ (resume(), at start).
# The accepted offer is new/ota.json, the signed envelope as received: after a reconnection or a
# power cut the download goes on from what new/ holds, without a new offer.
# Download.step(), called from the main loop, does one small thing per pass, so that the audio
# keeps flowing (the loop is paced by blocking I2S reads of 20 ms; the DMA holds 85 ms): ask one
# piece (ota/get, 2048 bytes at most, fewer once one did not fit the heap: _step), write the piece
# that came to new/<path> (appended: littlefs commits it at close, so a power cut leaves the file as
# it was before the piece or after it), or hash 1 KB of a whole file. The next piece is asked only
# once the last is written and GAP_MS have passed. A file whose sha256 does not match is fetched
# again; the third mismatch refuses the release. When every file matches: new/app.json (appswap.py's
# manifest), new/trial.json (the trial's note: lib/trial.py) and new/.ready (the commit point), event
# "installed", and the host restarts into the new app once the interval it measures is spooled
# (boot.py installs it, on trial: aftercare.py proves it).
# A download under way at a start goes on from the loop, FIRST_MS after, not in the start: parsed
# beside the node being made, the manifest did not fit heaps the node measures in (a MemoryError
# there restarts the node, and did so at every start). One the heap cannot take is put off (Later),
# tried again LATER_MS after and twice as long each time, and abandoned after LATER_TRIES tries more
# (new/ removed, event "refused" with the reason, which the rollout shows). One that fits and then
# starves the node (a MemoryError elsewhere restarts it: node.main) is abandoned the same way at
# its fourth restart (new/ota.starts counts them; a power cut is not one). The node must always
# come back to measuring: an update can be offered again, an interval not measured is lost, and a
# crash loop on a lamppost is a ladder.
import os
import json
import time
import console
import mgmt
from micropython import const

NEW = "new"
OFFER = "new/ota.json"
READY = "new/.ready"
STARTS = "new/ota.starts"   # restarts with the download on, power cuts not counted (resume)
PIECE = const(2048)
PIECE_MIN = const(256)       # the smallest piece asked when the heap is short
GAP_MS = const(250)          # between a piece written and the next asked
RETRY_MS = const(10000)      # a piece not come by then is asked again (QoS 0: it may be lost)
TRIES = const(3)             # sha256 mismatches of one file before the release is refused
LATER_MS = const(60000)      # a download the heap could not take at start: tried again after
LATER_TRIES = const(3)       # ... 1, 2 and 4 minutes, then abandoned
FIRST_MS = const(5000)       # from the start to the download's first step: the start's code gone
STARTS_MAX = const(4)        # restarts with a download on: the 4th abandons it


def _size(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return -1


def rmtree(p):
    try:
        entries = list(os.ilistdir(p))
    except OSError:
        return
    for e in entries:
        q = p + "/" + e[0]
        if e[1] & 0x4000:
            rmtree(q)
        else:
            os.remove(q)
    os.rmdir(p)


def _makedirs(path):
    i = path.find("/")
    while i > 0:
        try:
            os.mkdir(path[:i])
        except OSError:   # there already
            pass
        i = path.find("/", i + 1)


def _exists(p):
    return _size(p) >= 0


def _drop(host):
    """The download is over: this module's code goes with it (the host's loop holds it no more)."""
    host.ota = None
    import sys
    if "ota" in sys.modules:
        del sys.modules["ota"]


def say(host, state, v, **kw):
    kw["kind"] = "ota"
    kw["state"] = state
    kw["release"] = v
    mgmt.event(host, kw)


def refuse(host, v, why):
    console.warn("ota: %s refused: %s" % (v, why))
    say(host, "refused", v, reason=why)


def _abandon(host, why):
    console.error("ota: %s: %s: abandoned, removed" % (OFFER, why))
    rmtree(NEW)
    # the release unread: an event without one, which the gateway's rollout takes as its own
    mgmt.event(host, {"kind": "ota", "state": "refused", "reason": "download abandoned: " + why})


def resume(host):
    """At start (aftercare.py), with new/ota.json on the flash: a Later that goes on with the
    download from the loop, or None (new/ cleared)."""
    if _exists(READY):
        return None
    try:   # restarts while it is on, counted: those the download causes end (STARTS_MAX)
        with open(STARTS) as f:
            k = int(f.read())
    except (OSError, ValueError):
        k = 0
    import machine
    if machine.reset_cause() != machine.PWRON_RESET:   # a power cut is not the download's doing
        k += 1
        if k >= STARTS_MAX:
            _abandon(host, "the node restarted %d times while it was on" % k)
            return None
        try:
            with open(STARTS, "w") as f:
                f.write("%d" % k)
        except OSError:
            pass
    return Later(host, 0, FIRST_MS)


def _load(host, n):
    """The download new/ota.json holds, checked again, or None (new/ cleared); a Later when the heap
    could not take it (n: the tries before this one)."""
    import gc
    try:
        buf = bytearray(1024)   # before the parse, as otaoffer's: 1 KB in one piece is likelier now
        try:
            with open(OFFER, "rb") as f:
                body, why = mgmt.verify(f, host.cfg["node_id"])
        except OSError:
            body, why = None, "missing"
        try:   # checked when it was accepted, and its MAC now
            rel = body["release"]
            fs = rel["files"]
            body = None
            out = []
            gc.collect()
            while fs:   # copies, as otaoffer._files makes them (a heap in pieces fetches nothing); each
                f = fs.pop()   # parsed entry left to the collector as it is copied: the peak is lower
                out.append(("%s" % f["path"], f["size"], "%s" % f["sha256"]))
            out.reverse()
            d = Download(host, rel["version"], out, buf)
        except (ValueError, KeyError, TypeError, AttributeError):
            console.warn("ota: %s: cannot resume (%s): removed" % (OFFER, why or "not a release"))
            rmtree(NEW)
            return None
    except MemoryError as e:
        buf = body = rel = fs = out = None
        gc.collect()
        why = "no memory to resume the download (%s; %d bytes free)" % (e, gc.mem_free())
        if n < LATER_TRIES:
            console.warn("ota: %s: %s: trying again in %d s" % (OFFER, why, (LATER_MS << n) // 1000))
            return Later(host, n + 1, LATER_MS << n)
        _abandon(host, "%s, %d times" % (why, n + 1))
        return None
    console.info("ota: resuming %s from what %s/ holds" % (d.ver, NEW))
    return d


class Later:
    """A download to go on with from the loop (resume): nothing asked or kept meanwhile."""
    ver = OFFER   # what an offer meanwhile replaces (otaoffer.py says so)
    files = None

    def __init__(self, host, n, ms):
        self.host = host
        self.n = n
        self.due = time.ticks_add(time.ticks_ms(), ms)

    def waiting(self):
        return False

    def take(self, msg):
        pass

    def step(self, now, connected):
        if time.ticks_diff(now, self.due) < 0:
            return
        host = self.host
        host.ota = None
        d = _load(host, self.n)
        if d is None:
            _drop(host)
        host.ota = d


class Download:
    def __init__(self, host, ver, files, buf=None):
        self.host = host
        self.ver = ver
        self.files = files
        self.i = 0            # the file being fetched or checked
        self.off = None       # its bytes on flash (None: not looked at yet)
        self.asked = None     # ticks the piece was asked at (None: not asked)
        self.session = -1     # the uplink's connection the piece was asked on
        self.due = time.ticks_ms()
        self.piece = None     # a piece that came, to be written by step()
        self.bad = 0          # sha256 mismatches of the file being fetched
        self.hash = None      # (sha256, open file) while a whole file is checked
        self.buf = buf or bytearray(1024)
        self.stray = 0        # pieces that were not the one asked for (late, or another release's)
        self.short = 0        # passes that found the heap too short
        self.len = PIECE      # the most asked in one piece
        self.oom = 0          # the uplink's count of MemoryErrors when the piece was asked

    def waiting(self):
        """A piece is asked and not come: the uplink looks for it on every pass."""
        return self.asked is not None

    def take(self, msg):
        """umqtt's callback: a piece on ota/chunk, '{"release","file","off"}\\n<bytes>'. Kept for
        step() (it may come in the middle of a publish); anything else is dropped."""
        nl = msg.find(b"\n")
        try:
            h = json.loads(msg[:nl]) if nl > 0 else None
            ok = (self.asked is not None and self.piece is None and h["release"] == self.ver
                  and h["file"] == self.i and h["off"] == self.off)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.stray += 1
            return
        self.piece = memoryview(msg)[nl + 1:]
        self.asked = None

    def step(self, now, connected):
        try:
            self._step(now, connected)
        except MemoryError as e:   # the heap as it is: this pass does nothing, the next tries again
            self.piece = None
            self.short += 1
            if self.short & (self.short - 1) == 0:   # 1, 2, 4, 8 ...: said, not every pass
                console.warn("ota: %r (%d times): trying again" % (e, self.short))
            import gc
            gc.collect()

    def _step(self, now, connected):
        host = self.host
        if self.piece is not None:
            self._write(now)
            return
        if self.hash is not None:
            self._check()
            return
        if self.i >= len(self.files):
            self._finish()
            return
        path, size, _ = self.files[self.i]
        if self.off is None:
            n = _size(NEW + "/" + path)
            if n > size:
                os.remove(NEW + "/" + path)
                n = 0
            self.off = max(n, 0)
            if n < 0:
                _makedirs(NEW + "/" + path)
        if self.off == size:
            import hashlib
            self.hash = (hashlib.sha256(), open(NEW + "/" + path, "rb"))
            return
        if not connected:
            return
        up = host.uplink
        if self.asked is not None and up.connects == self.session and time.ticks_diff(now, self.asked) < RETRY_MS:
            return
        if self.asked is None and time.ticks_diff(now, self.due) < 0:
            return
        n = min(self.len, size - self.off)
        if self.asked is not None and up.oom != self.oom and n > PIECE_MIN:
            # The connection went for want of heap while the piece was on its way: umqtt reads a
            # message whole, so the same piece asked again would fail again. Half as much, and no
            # more for the rest of this download: growing back would cost a connection if it failed.
            self.len = n = max(n // 2, PIECE_MIN)
            console.warn("ota: a piece did not fit the heap: asking %d bytes at most" % n)
        if mgmt.send(host, "ota/get", '{"v":1,"release":%s,"file":%d,"off":%d,"len":%d}' % (
                json.dumps(self.ver), self.i, self.off, n), now):
            self.asked = now
            self.session = up.connects
            self.oom = up.oom

    def _write(self, now):
        p = self.piece
        self.piece = None
        path, size, _ = self.files[self.i]
        if not p or len(p) > min(PIECE, size - self.off):
            self._mismatch("the piece at %d is %d bytes, not up to %d" % (self.off, len(p), size - self.off))
            return
        try:
            with open(NEW + "/" + path, "ab") as f:
                f.write(p)
        except OSError as e:
            self._stop("cannot write %s/%s: %r" % (NEW, path, e))
            return
        self.off += len(p)
        self.due = time.ticks_add(now, GAP_MS)

    def _check(self):
        h, f = self.hash
        n = f.readinto(self.buf)
        if n:
            h.update(memoryview(self.buf)[:n])
            return
        f.close()
        self.hash = None
        import binascii
        path, _, sha = self.files[self.i]
        if binascii.hexlify(h.digest()).decode() == sha:
            self.i += 1
            self.off = None
            self.bad = 0
        else:
            self._mismatch("sha256 does not match")

    def _mismatch(self, why):
        path = self.files[self.i][0]
        self.bad += 1
        try:
            os.remove(NEW + "/" + path)
        except OSError:
            pass
        self.off = None
        if self.bad >= TRIES:
            self._stop("%s: %s (%d times)" % (path, why, self.bad))
        else:
            console.warn("ota: %s: %s (%d of %d): fetching it again" % (path, why, self.bad, TRIES))

    def _stop(self, why):
        """Refused half-way: new/ goes, the app in place stays."""
        host = self.host
        _drop(host)
        self.asked = None
        try:
            rmtree(NEW)
        except OSError as e:
            console.error("ota: new/ not removed: %r (appswap.py removes it at the next start)" % (e,))
        refuse(host, self.ver, why)

    def _finish(self):
        """Every file matches: appswap's manifest, the trial's note (lib/trial.py: the self-test
        items that pass now must pass on trial), the commit point, and the restart."""
        host = self.host
        try:
            with open(NEW + "/app.json", "w") as f:   # a file at a time: no string of it all in the heap
                f.write('{"fw":%s,"files":{' % json.dumps(self.ver))
                sep = ""
                for p, _, h in self.files:
                    f.write('%s%s:"%s"' % (sep, json.dumps(p), h))
                    sep = ","
                f.write("}}")
            with open(NEW + "/trial.json", "w") as f:
                f.write('{"release":%s,"prev":%s,"checks":%s}' % (json.dumps(self.ver), json.dumps(
                    host.uplink.meta["fw"]), json.dumps([k for k, r in console.checks().items() if r[0] == "pass"])))
            open(READY, "w").close()
        except OSError as e:
            self._stop("cannot write the manifest: %r" % (e,))
            return
        _drop(host)
        console.info("ota: %s complete: every file matches; installing it at the restart" % self.ver)
        say(host, "installed", self.ver)
        host.restart_why = "release %s installed" % self.ver
