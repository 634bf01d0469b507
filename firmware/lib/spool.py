# Every record on flash before anything tries to send it, until the gateway says it committed it.
#
# Layout under DIR (littlefs on the board: a file's new content counts only once it is closed, so a
# power cut leaves each file wholly old or wholly new):
#   s<n>          segment n: records (recline.py: a length byte, then the record's bits; each but a
#                 segment's first coded as its changes from the one before), appended; a new
#                 segment after SEG_BYTES
#   b<boot>       a boot's batch envelope and quantity keys (JSON), written with its first record
#   t<boot>       a boot's clock anchor: Unix ms at uptime 0, once NTP set the clock
#   state         the ack cursor, acknowledged records past it, the safe position, the count of
#                 records not yet safe, the dropped count, the gateway's db id and whether it is a
#                 region's (its acknowledgements carry `safe`, docs/payload.md "Safe in the region")
# A record is addressed by pos = n << 16 | byte offset (of its length byte). Everything before the cursor is acknowledged
# by the gateway's database `db`; everything before the safe position (at or before the cursor) is
# safe: on a lone gateway's disk (safe = cursor), or in a region's store (the gateway's `safe` pair
# covered it). Records stay on flash until the byte budget needs the space: then whole segments go,
# oldest first, and records in them not yet safe are counted as dropped. Another `db` makes what is
# not safe unacknowledged again: after a lone gateway everything on flash (a fresh database is
# refilled), after a region's gateway what follows the safe position (what the region may lack).
# The state is saved at most every SAVE_MS: after a power cut a few acknowledged records may be sent
# again, which the gateway's de-duplication absorbs, and the safe position is at worst older.
# RAM holds one small entry per segment (at most budget / SEG_BYTES + 1), whatever the number of
# boots: a node that reboots often fills segments with several boots each.
import os
import sys
import json
import time
import console
import recline

DIR = "sp"
SEG_BYTES = 16384
SAVE_MS = 30000
KEY_EVERY = 32   # a key frame every so many records: a read decodes at most that many to get going


def _int(s):
    try:
        return int(s)
    except ValueError:
        return None


class Spool:
    def __init__(self, budget, dirname=DIR):
        self.dir = dirname
        self.budget = budget
        self.segs = []          # [n, size], oldest first
        self.total = 0          # bytes in segments
        self.acked = {}         # pos -> end of acknowledged records past the cursor
        self.dropped = 0        # records not yet safe dropped for space, ever
        self.db = None          # the gateway database that acknowledged last
        self.region = False     # its acknowledgements carry `safe` (a region's gateway)
        self.held = 0           # records on flash not yet safe (the status's `held`): counted, not scanned
        self.dirty = False
        self._saved = time.ticks_ms()
        self._boots = {}        # boot -> (envelope, keys, anchor ms or None), a small cache
        self._last = None       # (segment, the record appended last, records since a key frame)
        try:
            os.mkdir(dirname)
        except OSError:
            pass
        for entry in os.ilistdir(dirname):  # an iterator, not a list
            name = entry[0]
            n = _int(name[1:]) if name[0] == "s" else None
            if n is not None:
                self.segs.append([n, os.stat(self._seg(n))[6]])
        self.segs.sort()
        for s in self.segs:
            self.total += s[1]
        self.cur = self.safe = self._first()
        import spstate   # read once at the start, then dropped: its code is heap the node needs
        spstate.load(self)
        del sys.modules["spstate"]

    # -- files --------------------------------------------------------------------------------
    def _seg(self, n):
        return "%s/s%d" % (self.dir, n)

    def _first(self):
        return self.segs[0][0] << 16 if self.segs else 0

    def _find(self, n):
        for i, s in enumerate(self.segs):
            if s[0] == n:
                return i
        return -1

    def _open(self, n, off):
        try:
            f = open(self._seg(n), "rb")
        except OSError:
            return None
        f.seek(off)
        return f

    def save(self, now, force=False):
        if not (self.dirty and (force or time.ticks_diff(now, self._saved) >= SAVE_MS)):
            return
        self._saved = now  # also on failure: try again in SAVE_MS, not on every pass
        tmp = self.dir + "/state.new"
        try:
            with open(tmp, "w") as f:
                s = self.segs[-1] if self.segs else (0, 0)
                f.write('{"fmt":2,"cur":%d,"safe":%d,"held":%d,"end":%d,"reg":%d,"dropped":%d,"db":%s,"acked":[%s]}' % (
                    self.cur, self.safe, self.held, s[0] << 16 | s[1], self.region, self.dropped,
                    json.dumps(self.db), ",".join("[%d,%d]" % kv for kv in self.acked.items())))
            os.rename(tmp, self.dir + "/state")
        except OSError as e:  # the records are safe; at worst some are sent again
            console.error("spool: state not saved: %r" % e)
            return
        self.dirty = False

    # -- boots --------------------------------------------------------------------------------
    def begin_boot(self, boot, envelope, keys):
        """Write this boot's envelope (with its first record) so old records go out with theirs,
        and remove the files of boots older than the oldest record on flash (boots only grow)."""
        with open("%s/b%d" % (self.dir, boot), "w") as f:
            f.write(json.dumps({"env": envelope, "keys": keys}))
        if len(self._boots) >= 4:  # a cache, not an index of every boot on flash
            self._boots = {}
        self._boots[boot] = (envelope, keys, None)
        self._forget_old_boots(boot)

    def _forget_old_boots(self, boot):
        oldest = self._oldest_boot()
        if oldest is None:
            oldest = boot
        gone = []
        for entry in os.ilistdir(self.dir):
            name = entry[0]
            b = _int(name[1:]) if name[0] in "bt" else None
            if b is not None and b < oldest:
                gone.append(name)
        for name in gone:
            os.remove("%s/%s" % (self.dir, name))

    def _oldest_boot(self):
        for n, size in self.segs:
            f = self._open(n, 1)   # a segment starts with a key frame: its boot in bytes 1-4
            if f is not None:
                with f:
                    b = f.read(4)
                if len(b) == 4:
                    return int.from_bytes(b, "big") & 0x7FFFFFFF
        return None

    def set_anchor(self, boot, unix_ms_at_up0):
        with open("%s/t%d" % (self.dir, boot), "w") as f:
            f.write(str(unix_ms_at_up0))
        b = self.boot_info(boot)
        self._boots[boot] = (b[0], b[1], unix_ms_at_up0)

    def boot_info(self, boot):
        """(envelope, keys, anchor ms or None) of a boot; envelope None if its file is gone."""
        b = self._boots.get(boot)
        if b is None:
            env = keys = anchor = None
            try:
                with open("%s/b%d" % (self.dir, boot)) as f:
                    d = json.load(f)
                env, keys = d["env"], d["keys"]
            except (OSError, ValueError, KeyError):
                pass
            try:
                with open("%s/t%d" % (self.dir, boot)) as f:
                    anchor = int(f.read())
            except (OSError, ValueError):
                pass
            if len(self._boots) >= 4:
                self._boots = {}
            b = self._boots[boot] = (env, keys, anchor)
        return b

    # -- writing ------------------------------------------------------------------------------
    def append(self, rec):
        """Store one record (recline.record); returns its (pos, end). Raises OSError if flash fails."""
        segs = self.segs
        if not segs or segs[-1][1] >= SEG_BYTES:
            segs.append([segs[-1][0] + 1 if segs else max(1, self.cur >> 16), 0])
        s = segs[-1]
        last = self._last
        ref = last[1] if last is not None and last[0] == s[0] and last[2] < KEY_EVERY - 1 else None
        b = recline.pack(rec, ref)
        with open(self._seg(s[0]), "ab") as f:
            f.write(b)
        self._last = (s[0], rec, 0 if ref is None else last[2] + 1)
        pos = s[0] << 16 | s[1]
        s[1] += len(b)
        self.total += len(b)
        self.held += 1
        self._normalise()
        self._make_room()
        return pos, pos + len(b)

    def _free_bytes(self):
        try:
            st = os.statvfs(self.dir)
            return st[0] * st[3]
        except OSError:
            return None

    def _make_room(self):
        # Keep within the budget, and keep two segments' room on the file system in any case.
        dropped = False
        while len(self.segs) > 1:
            free = self._free_bytes()
            if self.total <= self.budget and (free is None or free >= 2 * SEG_BYTES):
                break
            import spdrop   # only when full
            spdrop.drop_oldest(self)
            dropped = True
        if dropped:
            self._forget_old_boots(-1)

    # -- reading ------------------------------------------------------------------------------
    def read(self, pos, max_bytes, skip, now_boot, may_send_now_boot, extra=0):
        """Records from pos on that are not acknowledged and not in `skip` (pos -> anything), all of
        one boot and about max_bytes, counting each one's bytes on flash plus `extra`.
        Returns (boot, [(pos, end, record)], next_pos); boot None when there is nothing to send."""
        import recread   # at the first read (a backlog, or a record sent): its code is heap the start needs
        if pos < self.cur:
            pos = self.cur
        out = []
        got = 0
        boot = None
        for n, size in self.segs:
            if (n << 16 | size) <= pos:
                continue
            g = recread.recs(self, n, size, pos & 0xFFFF if pos >> 16 == n else 0)
            try:
                for p, e, r in g:
                    if p in self.acked or p in skip:
                        continue
                    b = r[0]
                    if (boot is not None and b != boot) or (b == now_boot and not may_send_now_boot) \
                            or (out and got + e - p + extra > max_bytes):
                        return boot, out, p  # another boot, a boot without its time yet, or full
                    boot = b
                    out.append((p, e, r))
                    got += e - p + extra
            finally:
                g.close()
            pos = n << 16 | size
        return boot, out, pos

    # -- acknowledgements -----------------------------------------------------------------------
    def ack(self, pos, end):
        if pos < self.cur or pos in self.acked:
            return
        self.acked[pos] = end
        region = self.region
        if not region:   # a lone gateway: what it acknowledged is safe
            self.held -= 1
        while self.cur in self.acked:
            self.cur = self.acked.pop(self.cur)
            self._normalise()
        if not region:
            self.safe = self.cur
        self.dirty = True

    def _normalise(self):
        # A cursor before the oldest segment, or at the end of one, moves to the next record's.
        if self.segs and self.cur < self.segs[0][0] << 16:
            self.cur = self.segs[0][0] << 16
        i = self._find(self.cur >> 16)
        while i >= 0 and (self.cur & 0xFFFF) >= self.segs[i][1] and i + 1 < len(self.segs):
            i += 1
            self.cur = self.segs[i][0] << 16

    def set_db(self, db, now):
        """The gateway database that acknowledged, from an acknowledgement. Another than the last
        one (a gateway that lost its database, or another gateway): what is not safe is
        unacknowledged again (replay). A new id is saved at once. Returns the id it replaced, None
        if it is the first or the same."""
        old = self.db
        if db == old:
            return None
        if old is not None:
            self.replay()
        self.db = db
        self.dirty = True
        self.save(now, True)
        return old

    def replay(self):
        """What is not safe is unacknowledged again: the gateway lost what it had (safepos.py)."""
        import safepos
        safepos.replay(self)
