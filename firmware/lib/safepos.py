# The spool's safe position (spool.py), the parts a node needs only with a region's gateway or when
# the gateway's database changes: loaded at the first of those and kept (not at a plain start, where
# compiling spool.py is part of the start's heap peak). docs/payload.md, "Safe in the region".
#
# Records before the safe position are safe: on a lone gateway's disk (its acknowledgement is
# enough: the safe position is the ack cursor) or in the region's store (a region's gateway's `safe`
# pair covered them after they were acknowledged under its database). sp.held counts the records on
# flash that are not: kept up to date by the spool as it appends, acknowledges and drops; counted
# here from flash only when a change makes it unknown.

def count(sp, pos):
    """Records from pos to the end of the spool (a scan of flash)."""
    import spstate
    return spstate.count(sp, pos)


def region(sp, on):
    """The gateway's acknowledgements carry `safe` (on) or not: a gateway reconfigured, or another one."""
    sp.region = on
    if on:   # acknowledged past the cursor: no longer safe by that alone
        sp.held += len(sp.acked)
    else:    # a lone gateway's disk is the system of record: what it acknowledged is safe
        sp.safe = sp.cur
        sp.held = count(sp, sp.cur) - len(sp.acked)
    sp.dirty = True


def advance(sp, b, s):
    """A region's gateway says its database's records up to (boot b, seq s) are in the region's store:
    the safe position moves over the records acknowledged under that database (before the cursor)
    that are at or before (b, s), from where it is. It never moves back: a smaller pair (after a
    late record) releases nothing more, and covers nothing acknowledged after it."""
    import recread
    pos = sp.safe
    cur = sp.cur
    k = 0
    for n, size in sp.segs:
        if pos >= cur:
            break
        if (n << 16 | size) <= pos:
            continue
        g = recread.recs(sp, n, size, pos & 0xFFFF if pos >> 16 == n else 0, 1)
        pos = n << 16 | size
        try:
            for p, e, r in g:
                if p >= cur:
                    pos = p
                    break
                if r[0] > b or r[0] == b and r[1] > s:
                    pos = p
                    cur = -1   # the first record past the pair: the position stops before it
                    break
                k += 1
        finally:
            g.close()
    if k:
        sp.safe = pos
        sp.held -= k
        sp.dirty = True


def replay(sp):
    """The gateway's database changed: what is not safe is unacknowledged again. After a lone gateway
    that is everything on flash (how a gateway with a fresh database is refilled); after a region's
    gateway what follows the safe position: what the region may lack, never what it confirmed."""
    if not sp.region:
        sp.safe = sp._first()
        sp.held = count(sp, sp.safe)
    sp.cur = sp.safe
    sp.acked = {}
    sp.dirty = True
