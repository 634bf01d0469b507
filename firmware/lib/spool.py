# Every record on flash before anything tries to send it, until the gateway says it committed it.
#
# Layout under DIR (littlefs on the board: a file's new content counts only once it is closed, so a
# power cut leaves each file wholly old or wholly new):
#   s<n>_<boot>   segment n: record lines of one boot, appended; a new one after SEG_BYTES
#   b<boot>       that boot's batch envelope and quantity keys (JSON), written with its first record
#   t<boot>       that boot's clock anchor: Unix ms at uptime 0, once NTP set the clock
#   state         the ack cursor, acknowledged records past it, the dropped count, the gateway's db id
# A record is addressed by pos = n << 16 | byte offset. Everything before the cursor is acknowledged;
# it stays on flash (a gateway that lost its database can ask for it again) until the byte budget
# needs the space: then whole segments go, oldest first, and records in them that were never
# acknowledged are counted as dropped. The state is saved at most every SAVE_MS: after a power cut
# a few acknowledged records may be sent again, which the gateway's de-duplication absorbs.
import os
import json
import time
import console

DIR = "sp"
SEG_BYTES = 16384
SAVE_MS = 30000


def _int(s, default=None):
    try:
        return int(s)
    except ValueError:
        return default


class Spool:
    def __init__(self, budget, dirname=DIR):
        self.dir = dirname
        self.budget = budget
        self.segs = []          # [n, boot, size], oldest first
        self.total = 0          # bytes in segments
        self.acked = {}         # pos -> end of acknowledged records past the cursor
        self.dropped = 0        # unacknowledged records dropped for space, ever
        self.db = None          # the gateway database that acknowledged last
        self.bad_lines = 0
        self.dirty = False
        self._saved = time.ticks_ms()
        self._boots = {}        # boot -> (envelope, keys, anchor ms or None), cached
        try:
            os.mkdir(dirname)
        except OSError:
            pass
        anchors = set()
        for name in os.listdir(dirname):
            if name[0] == "s" and "_" in name:
                n, _, b = name[1:].partition("_")
                n, b = _int(n), _int(b)
                if n is not None and b is not None:
                    self.segs.append([n, b, os.stat(self._seg(n, b))[6]])
        self.segs.sort()
        for s in self.segs:
            self.total += s[2]
        self.cur = self._first()
        self._load_state()

    # -- files --------------------------------------------------------------------------------
    def _seg(self, n, boot):
        return "%s/s%d_%d" % (self.dir, n, boot)

    def _first(self):
        return self.segs[0][0] << 16 if self.segs else 0

    def _find(self, n):
        for i, s in enumerate(self.segs):
            if s[0] == n:
                return i
        return -1

    def _load_state(self):
        try:
            with open(self.dir + "/state") as f:
                st = json.load(f)
            self.dropped = st["dropped"]
            self.db = st.get("db")
            cur = st["cur"]
            if self._find(cur >> 16) >= 0:
                self.cur = cur
                for p, e in st["acked"]:
                    if p > cur:
                        self.acked[p] = e
            elif self.segs and (cur >> 16) > self.segs[-1][0]:
                self.cur = cur  # all acknowledged, segment not yet written
        except (OSError, ValueError, KeyError, TypeError) as e:
            if self.segs:  # from the oldest: sending again is harmless, losing is not
                console.warn("spool: state unreadable (%r); re-sending from the oldest record" % e)
        self._normalise()

    def save(self, now, force=False):
        if not (self.dirty and (force or time.ticks_diff(now, self._saved) >= SAVE_MS)):
            return
        tmp = self.dir + "/state.new"
        with open(tmp, "w") as f:
            f.write('{"cur":%d,"dropped":%d,"db":%s,"acked":[%s]}' % (
                self.cur, self.dropped, json.dumps(self.db),
                ",".join("[%d,%d]" % kv for kv in self.acked.items())))
        os.rename(tmp, self.dir + "/state")
        self.dirty = False
        self._saved = now

    # -- boots --------------------------------------------------------------------------------
    def begin_boot(self, boot, envelope, keys):
        """Write this boot's envelope (from its first record on) so old records go out with theirs."""
        with open("%s/b%d" % (self.dir, boot), "w") as f:
            f.write(json.dumps({"env": envelope, "keys": keys}))
        self._boots[boot] = (envelope, keys, None)
        # Boots with no segment left: their files go.
        live = set(s[1] for s in self.segs)
        live.add(boot)
        for name in os.listdir(self.dir):
            if name[0] in "bt" and _int(name[1:]) is not None and _int(name[1:]) not in live:
                os.remove("%s/%s" % (self.dir, name))

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
            b = self._boots[boot] = (env, keys, anchor)
            if len(self._boots) > 4:  # a cache, not an index of every boot on flash
                for k in list(self._boots):
                    if k != boot and len(self._boots) > 4:
                        del self._boots[k]
        return b

    # -- writing ------------------------------------------------------------------------------
    def append(self, boot, line):
        """Store one record line (no newline); returns its pos. Raises OSError if flash fails."""
        segs = self.segs
        if not segs or segs[-1][1] != boot or segs[-1][2] >= SEG_BYTES:
            n = segs[-1][0] + 1 if segs else max(1, (self.cur >> 16))
            segs.append([n, boot, 0])
        s = segs[-1]
        with open(self._seg(s[0], boot), "a") as f:
            f.write(line)
            f.write("\n")
        pos = s[0] << 16 | s[2]
        s[2] += len(line) + 1
        self.total += len(line) + 1
        self._normalise()
        self._make_room()
        return pos

    def _free_bytes(self):
        try:
            st = os.statvfs(self.dir)
            return st[0] * st[3]
        except OSError:
            return None

    def _make_room(self):
        # Keep within the budget, and keep two segments' room on the file system in any case.
        while len(self.segs) > 1:
            free = self._free_bytes()
            if self.total <= self.budget and (free is None or free >= 2 * SEG_BYTES):
                break
            self._drop_oldest()

    def _drop_oldest(self):
        n, boot, size = self.segs.pop(0)
        lost = 0
        first = last = ""
        f = self._open(n, boot, self.cur & 0xFFFF) if self.cur >> 16 == n else None
        if f is not None:
            off = self.cur & 0xFFFF
            with f:
                for line in f:
                    if (n << 16 | off) not in self.acked and line[-1:] == "\n":
                        last = line[:line.find(" ")]
                        first = first or last
                        lost += 1
                    off += len(line)
        try:
            os.remove(self._seg(n, boot))
        except OSError:
            pass
        self.total -= size
        for p in [p for p in self.acked if p >> 16 == n]:
            del self.acked[p]
        if self.cur >> 16 == n:
            self.cur = self.segs[0][0] << 16
        if lost:
            self.dropped += lost
            console.warn("spool: full, dropped %d unsent records of boot %d: seq %s..%s"
                         % (lost, boot, first, last))
        self.dirty = True

    # -- reading ------------------------------------------------------------------------------
    def _open(self, n, boot, off):
        try:
            f = open(self._seg(n, boot))
        except OSError:
            return None
        f.seek(off)
        return f

    def read(self, pos, max_bytes, skip, now_boot, may_send_now_boot, extra=0):
        """Records from pos on that are not acknowledged and not in `skip` (pos -> anything), all of
        one boot and about max_bytes, counting each line's length plus `extra`. Returns (boot, [(pos, end, line)], next_pos);
        boot None when there is nothing to send."""
        if pos < self.cur:
            pos = self.cur
        out = []
        got = 0
        for n, boot, size in self.segs:
            if (n << 16 | size) <= pos:
                continue
            if boot == now_boot and not may_send_now_boot:
                break  # this boot's clock is not known yet: hold its records
            off = pos & 0xFFFF if pos >> 16 == n else 0
            f = self._open(n, boot, off)
            if f is None:
                pos = n << 16 | size
                continue
            try:
                while off < size:
                    line = f.readline()
                    if not line or line[-1] != "\n":
                        off = size
                        break
                    p = n << 16 | off
                    off += len(line)
                    if p in self.acked or p in skip:
                        continue
                    if out and got + len(line) + extra > max_bytes:
                        return boot, out, p
                    out.append((p, n << 16 | off, line[:-1]))
                    got += len(line) + extra
            finally:
                f.close()
            pos = n << 16 | off
            if out:
                return boot, out, pos
        return None, out, pos

    # -- acknowledgements -----------------------------------------------------------------------
    def ack(self, pos, end):
        if pos < self.cur or pos in self.acked:
            return
        self.acked[pos] = end
        while self.cur in self.acked:
            self.cur = self.acked.pop(self.cur)
            self._normalise()
        self.dirty = True

    def _normalise(self):
        # A cursor before the oldest segment, or at the end of one, moves to the next record's.
        if self.segs and self.cur < self.segs[0][0] << 16:
            self.cur = self.segs[0][0] << 16
        i = self._find(self.cur >> 16)
        if i >= 0 and (self.cur & 0xFFFF) >= self.segs[i][2] and i + 1 < len(self.segs):
            self.cur = self.segs[i + 1][0] << 16
            self._normalise()

    def replay(self):
        """Everything on flash is unacknowledged again: the gateway lost what it had."""
        self.cur = self._first()
        self.acked = {}
        self.dirty = True

    def pending_bytes(self):
        """Bytes of records from the cursor on (acknowledged ones past it included)."""
        t = 0
        for n, boot, size in self.segs:
            if n > self.cur >> 16:
                t += size
            elif n == self.cur >> 16:
                t += size - (self.cur & 0xFFFF)
        return t
