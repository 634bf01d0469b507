# The spool's state file (spool.py), read once at the start; the module is dropped after.
# The ack cursor and the acknowledged records past it, the safe position and the count of records
# not yet safe (with the spool's end when it was saved: the records appended after that save are
# counted from flash, a few at most), the dropped count, the gateway's database id and whether it
# is a region's (docs/payload.md "Safe in the region"). What cannot be trusted is made safe:
# an unreadable state sends everything again, an unknown count is counted from flash.
import sys
import json
import console


def is_text(sp, n):
    """Segment n holds an older firmware's text lines: its second byte is a digit or a space, where
    a binary segment's first record (a key frame) has its top bit set."""
    f = sp._open(n, 0)
    if f is None:
        return False
    with f:
        b = f.read(2)
    return len(b) == 2 and not b[1] & 0x80


def load(sp):
    """Fill sp's cursor, acknowledged records, safe position, held count, dropped count and db."""
    held = None
    for s in sp.segs[::-1]:   # the newest segment with records: text only before an update to binary
        if s[1]:
            if is_text(sp, s[0]):
                import spconvert
                spconvert.convert(sp)
                del sys.modules["spconvert"]
            break
    try:
        with open(sp.dir + "/state") as f:
            st = json.load(f)
        if "fmt" not in st:   # an older firmware's: its positions were in text lines, rewritten since
            for k in ("cur", "safe", "end"):
                if k in st:
                    st[k] = st[k] >> 16 << 16   # its segment's start: what follows is sent again
            st["acked"] = ()
            st.pop("held", None)
        sp.dropped = st["dropped"]
        sp.db = st.get("db")
        sp.region = st.get("reg") == 1
        cur = st["cur"]
        safe = st.get("safe", cur)   # an older firmware's state: what it acknowledged was safe
        if sp._find(cur >> 16) >= 0:
            sp.cur = cur
            for p, e in st["acked"]:
                if p > cur:
                    sp.acked[p] = e
            if safe <= cur and sp._find(safe >> 16) >= 0:
                sp.safe = safe
                # the count saved, and the records appended after that save (a few at most)
                end = st.get("end", -1)
                i = sp._find(end >> 16)
                if i >= 0 and (end & 0xFFFF) <= sp.segs[i][1] and "held" in st:
                    held = st["held"]
                    held += count(sp, end)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if sp.segs:  # from the oldest: sending again is harmless, losing is not
            console.warn("spool: state unreadable (%r); re-sending from the oldest record" % e)
    if sp.safe > sp.cur:
        sp.safe = sp.cur
    sp._normalise()
    if held is None and sp.segs:   # no count to trust (a power cut after a segment was dropped)
        held = count(sp, sp.safe) - (0 if sp.region else len(sp.acked))
    sp.held = held or 0



def count(sp, pos):
    """Records from pos to the end of the spool (a scan of flash; safepos.py's too)."""
    import recread
    k = 0
    for n, size in sp.segs:
        if (n << 16 | size) <= pos:
            continue
        for _ in recread.recs(sp, n, size, pos & 0xFFFF if pos >> 16 == n else 0, 0):
            k += 1
    return k
