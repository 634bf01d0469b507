# The spool's oldest segment dropped for its budget (spool.py): loaded only when the spool is full.
import os
import console
import recread


def drop_oldest(sp):
    """The spool's oldest segment goes (spool.py's budget): the records in it not yet safe are
    counted as dropped and logged."""
    n, size = sp.segs.pop(0)
    lost = {}   # boot -> [count, first seq, last seq]
    # not yet safe: from the safe position on (on a lone gateway: but what it acknowledged)
    off = sp.safe & 0xFFFF if sp.safe >> 16 == n else 0
    acked = {} if sp.region else sp.acked
    if sp.safe >> 16 <= n:
        for p, _, r in recread.recs(sp, n, size, off, 1):
            if p not in acked:
                b, s = r[0], r[1]
                c = lost.get(b)
                if c is None:
                    lost[b] = [1, s, s]
                else:
                    c[0] += 1
                    c[2] = s
    try:
        os.remove(sp._seg(n))
    except OSError:
        pass
    sp.total -= size
    for p in [p for p in sp.acked if p >> 16 == n]:
        del sp.acked[p]
    if sp.cur >> 16 == n:
        sp.cur = sp.segs[0][0] << 16
    if sp.safe >> 16 <= n:
        sp.safe = sp.segs[0][0] << 16
    for b, c in lost.items():
        sp.dropped += c[0]
        sp.held -= c[0]
        console.warn("spool: full, dropped %d records not yet safe of boot %d: seq %d..%d" % (c[0], b, c[1], c[2]))
    sp.dirty = True
