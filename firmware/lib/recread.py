# The spool's reader: a segment's records from flash (spool.py has the files), their bits back into
# records (recline.py has the format). Loaded at the spool's first read, not at the start: its code
# is heap the start needs.
from recline import ROLES, _B, _ref, _nulls

_R = None   # the record being read, and the bit position in it
_pos = 0
_MV = memoryview(_B)   # one record as read from flash: recline's buffer (never both at once)


def _get(n):
    global _pos
    v = 0
    while n:
        used = _pos & 7
        t = 8 - used
        if t > n:
            t = n
        v = v << t | _R[_pos >> 3] >> (8 - used - t) & ((1 << t) - 1)
        _pos += t
        n -= t
    return v


def _ueg(k):
    z = 0
    while not _get(1):
        z += 1
        if z > 40:
            raise ValueError("bad code")
    return (1 << z + k | _get(z + k)) - (1 << k)


def _uzg(k):
    u = _ueg(k)
    return -(u + 1 >> 1) if u & 1 else u >> 1


def unpack(buf, prev, full=True):
    """The record whose bits (after the length byte) are buf, prev the one before it in its
    segment (None at the segment's start). full False: its header only (vals, flags, errs None),
    enough for a record that follows it with full False too."""
    global _R, _pos
    _R = buf
    _pos = 0
    if _get(1):
        boot = _get(31)
        shape = tuple(_get(9) for _ in range(_ueg(0)))
        prev = _ref(boot, shape)
    elif prev is None:
        raise ValueError("no key frame")
    pd = prev[4]
    rec = [prev[0], prev[1] + 1 + _ueg(0), None, prev[3] + pd + _uzg(0), pd + _uzg(0), None, None, None,
           prev[8], prev[9]]
    if _get(1):
        rec[2] = _get(32) if prev[2] is None else prev[2] + pd + _uzg(0)
    if not full:
        return rec
    shape = rec[9]
    pv = prev[5]
    nulls = _nulls(prev) if pv else -1
    if not _get(1):
        nulls = _get(len(shape))
    vals = []
    j = 0
    for i, s in enumerate(shape):
        w = 4 if s > 255 else 1
        if nulls >> i & 1:
            vals.extend((None, None, None, None)[:w])
        else:
            p = pv and pv[j]
            v = _uzg(s >> 4 & 15 if w == 4 else s) + (p or 0)
            vals.append(v)
            if w == 4:
                vals.append(v - _uzg(s & 15))
                vals.append(v + _uzg(s & 15))
                vals.append(_uzg(0) + (pv[j + 3] if p is not None else 0))
        j += w
    flags = prev[6]
    if not _get(1):
        flags = {}
        for i in range(len(shape)):
            if _get(1):
                flags[i] = _get(7)
    errs = {}
    if _get(1):
        for r in ROLES:
            if _get(1):
                errs[r] = _ueg(0) + 1
    rec[5] = vals
    rec[6] = flags
    rec[7] = errs
    return rec


def recs(sp, n, size, start, what=2):
    """(pos, end, record) of segment n's records from byte offset start on. what: 2 the records,
    1 their headers only (unpack), 0 their places only (record None). A record is decoded from the
    one before it, from the key frame at or before start (one every spool.KEY_EVERY records). A
    caller that stops early closes it (the file stays open until then)."""
    f = sp._open(n, 0)
    if f is None:
        return
    with f:
        off = o = 0
        mv = _MV
        while what and o < start:   # the last key frame before start
            f.seek(o)
            if f.readinto(mv[:2]) != 2:
                return
            if _B[1] & 0x80:
                off = o
            o += 1 + _B[0]
        f.seek(off)
        prev = None
        while off < size:
            if f.readinto(mv[:1]) != 1:
                return
            k = _B[0]
            end = off + 1 + k
            if not k or end > size:
                return   # cut short: not a record (littlefs commits whole writes; a guard)
            if what:
                if f.readinto(mv[:k]) != k:
                    return
                try:
                    prev = unpack(mv[:k], prev, what == 2)
                except (ValueError, IndexError):
                    import console   # here: the host's tools read with this module too (tools/dev/spoolfile.py)
                    console.error("spool: s%d damaged at %d" % (n, off))
                    return
                if what == 2 and prev[8] is None:
                    prev[8] = sp.boot_info(prev[0])[1]
            else:
                f.seek(end)
            if off >= start:
                yield n << 16 | off, n << 16 | end, prev
            off = end
