# A record as a few dozen bits on flash (spool.py), and back to the payload's JSON when it is sent.
# A month of 1-minute records must fit the 4 MB board's spool budget: about 40 bytes each.
#
# A record in memory (a list): [boot, seq, ts, up, dur, vals, flags, errs, keys, shape]
#   vals   flat, in the boot's key order: a summary takes 4 slots (avg, min, max, n), a plain
#          quantity 1; fixed-point integers at DEC decimals (value = integer / 10**dec), None: no value
#   flags  {key index: bits of FLAGS}     errs  {role: count}     keys  the boot's quantity keys
#   shape  per key (slots, k of its changes, k of its spread): the codes' parameters
# On flash: a length byte, then the record's bits. A key frame (a segment's first record, a boot's
# first) holds everything absolute and the shape, so a segment decodes from its own bytes alone;
# every other record holds its changes from the segment's record before it: seq +1, up +dur,
# ts +dur, the same n, the same nulls, flags and errors cost a bit each; averages and plain numbers
# are the change since that record, min and max the distance from the average. Each number is an
# Exp-Golomb code of order k (signed ones zigzagged): k bits for the usual size, two bits more per
# doubling beyond it.

DEC = {"pm1": 1, "pm25": 1, "pm10": 1, "temp": 2, "rh": 2, "press": 2, "LAeq": 2, "LA10": 2, "LA50": 2,
       "LA90": 2, "LZeq": 2, "cov": 3}
# k for a quantity's change from one record to the next and for its min/max spread; a summary if
# it has the second (measured on the simulator's scenarios, bench/wire.py)
_K = {"pm1": (4, 5), "pm25": (4, 5), "pm10": (4, 5), "temp": (2, 3), "rh": (4, 4), "press": (2, 2),
      "LAeq": (7, 9), "LA10": (7,), "LA50": (7,), "LA90": (7,), "LZeq": (7,), "cov": (0,)}
FLAGS = ("missing", "partial", "warmup", "checksum", "rh_high", "overload", "floor")
ROLES = ("pm", "climate", "mic")

_B = bytearray(256)   # the record being written: a length byte, then its bits (well under 255 bytes)
_acc = _nb = _len = 0
_R = None             # the record being read, and the bit position in it
_pos = 0
_shape = (None, None)


# -- bits ------------------------------------------------------------------------------------------
def _put(v, n):
    global _acc, _nb, _len
    while n > 16:   # in pieces: the accumulator stays a small int on the ESP32
        n -= 16
        _put(v >> n, 16)
    _acc = _acc << n | v & ((1 << n) - 1)
    _nb += n
    while _nb >= 8:
        _nb -= 8
        _B[_len] = _acc >> _nb & 255
        _len += 1
    _acc &= (1 << _nb) - 1


def _eg(u, k):   # u >= 0
    w = u + (1 << k)
    nb = k + 1
    while w >> nb:
        nb += 1
    _put(0, nb - k - 1)
    _put(w, nb)


def _zg(v, k):   # signed
    _eg(v + v if v >= 0 else -v - v - 1, k)


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


# -- a record -------------------------------------------------------------------------------------
def keys_of(parts):
    return [p[0] for p in parts]


def record(boot, seq, ts, up, dur, parts, flags, errs, keys):
    """The record of an interval. parts: [(key, value)] as the samplers fill them, in `keys`' order:
    value None, a fixed-point int, or (avg, min, max, n); flags: {key: [flag names]}."""
    global _shape
    if _shape[0] is not keys:   # once per boot
        _shape = (keys, [(4,) + _K[k] if len(_K.get(k, ())) > 1 else (1, _K.get(k, (6,))[0]) for k in keys])
    vals = []
    for k, v in parts:
        if len(_K.get(k, ())) > 1:
            vals.extend(v or (None, None, None, None))
        else:
            vals.append(v)
    fl = {}
    for k, names in flags.items():
        b = 0
        for f in names:
            b |= 1 << FLAGS.index(f)
        fl[keys.index(k)] = b
    return [boot, seq, ts, up, dur, vals, fl, errs, keys, _shape[1]]


def boot_of(rec):
    return rec[0]


def seq_of(rec):
    return rec[1]


def pack(rec, prev):
    """The record's bytes on flash (length byte first): its changes from prev, the record before it
    in the same segment, or a key frame when prev is None or of another boot."""
    global _acc, _nb, _len
    _acc = _nb = 0
    _len = 1
    boot, seq, ts, up, dur, vals, flags, errs, keys, shape = rec
    if prev is not None and (prev[0] != boot or prev[1] >= seq or prev[9] != shape):
        prev = None
    if prev is None:
        _put(1, 1)
        _eg(boot, 4)
        _eg(seq, 6)
        _eg(up, 10)
        _eg(dur, 5)
        _put(0 if ts is None else 1, 1)
        if ts is not None:
            _put(ts, 32)
        _eg(len(shape), 2)
        for s in shape:
            _put(1 if s[0] == 4 else 0, 1)
            for k in s[1:]:
                _put(k, 4)
        pv, pflags, pnull = None, {}, -1
    else:
        _put(0, 1)
        _eg(seq - prev[1] - 1, 0)
        _zg(up - prev[3] - prev[4], 0)
        _zg(dur - prev[4], 0)
        _put(0 if ts is None else 1, 1)
        if ts is not None:
            if prev[2] is None:
                _put(ts, 32)
            else:
                _zg(ts - prev[2] - prev[4], 0)
        pv, pflags, pnull = prev[5], prev[6], _nulls(prev)
    nulls = _nulls(rec)
    _put(1 if nulls == pnull else 0, 1)
    if nulls != pnull:
        _put(nulls, len(shape))
    j = 0
    for i, s in enumerate(shape):
        v = vals[j]
        if v is not None:
            p = None if pv is None else pv[j]
            _zg(v if p is None else v - p, s[1])
            if s[0] == 4:
                _zg(v - vals[j + 1], s[2])
                _zg(vals[j + 2] - v, s[2])
                if p is None:
                    _eg(vals[j + 3], 4)
                else:
                    _zg(vals[j + 3] - pv[j + 3], 0)
        j += s[0]
    _put(1 if flags == pflags else 0, 1)
    if flags != pflags:
        for i in range(len(shape)):
            b = flags.get(i, 0)
            _put(1 if b else 0, 1)
            if b:
                _put(b, len(FLAGS))
    _put(1 if errs else 0, 1)
    if errs:
        for r in ROLES:
            c = errs.get(r, 0)
            _put(1 if c else 0, 1)
            if c:
                _eg(c - 1, 0)
    if _nb:
        _put(0, 8 - _nb)
    _B[0] = _len - 1
    return bytes(_B[:_len])


def _nulls(rec):
    m = 0
    j = 0
    vals = rec[5]
    for i, s in enumerate(rec[9]):
        if vals[j] is None:
            m |= 1 << i
        j += s[0]
    return m


def unpack(buf, prev, full=True):
    """The record whose bits (after the length byte) are buf, prev the one before it in its
    segment (None at the segment's start). full False: its header only (vals, flags, errs None),
    enough for a record that follows it with full False too."""
    global _R, _pos
    _R = buf
    _pos = 0
    if _get(1):
        boot = _ueg(4)
        seq = _ueg(6)
        up = _ueg(10)
        dur = _ueg(5)
        ts = _get(32) if _get(1) else None
        shape = []
        for _ in range(_ueg(2)):
            w = 4 if _get(1) else 1
            shape.append((w, _get(4), _get(4)) if w == 4 else (w, _get(4)))
        pv, pflags, pnull, keys = None, {}, -1, None
    else:
        if prev is None:
            raise ValueError("no key frame")
        boot, shape, keys = prev[0], prev[9], prev[8]
        seq = prev[1] + 1 + _ueg(0)
        up = prev[3] + prev[4] + _uzg(0)
        dur = prev[4] + _uzg(0)
        ts = None
        if _get(1):
            ts = _get(32) if prev[2] is None else prev[2] + prev[4] + _uzg(0)
        if not full:
            return [boot, seq, ts, up, dur, None, None, None, keys, shape]
        pv, pflags, pnull = prev[5], prev[6], _nulls(prev)
    rec = [boot, seq, ts, up, dur, None, None, None, keys, shape]
    if not full:
        return rec
    nulls = pnull if _get(1) else _get(len(shape))
    vals = []
    j = 0
    for i, s in enumerate(shape):
        if nulls >> i & 1:
            vals.extend((None, None, None, None)[:s[0]])
        else:
            p = None if pv is None else pv[j]
            v = _uzg(s[1]) + (p or 0)
            vals.append(v)
            if s[0] == 4:
                vals.append(v - _uzg(s[2]))
                vals.append(v + _uzg(s[2]))
                vals.append(_ueg(4) if p is None else pv[j + 3] + _uzg(0))
        j += s[0]
    rec[5] = vals
    if _get(1):
        flags = pflags
    else:
        flags = {}
        for i in range(len(shape)):
            if _get(1):
                flags[i] = _get(len(FLAGS))
    errs = {}
    if _get(1):
        for r in ROLES:
            if _get(1):
                errs[r] = _ueg(0) + 1
    rec[6] = flags
    rec[7] = errs
    return rec


# -- JSON ------------------------------------------------------------------------------------------
def _num(v, d):
    # fixed point as the shortest decimal text: exact, no float on the way
    if v is None:
        return "null"
    t = "%d" % abs(v)
    if d:
        t = "0" * (d + 1 - len(t)) + t
        f = t[-d:].rstrip("0")
        t = t[:-d] + ("." + f if f else "")
    return "-" + t if v < 0 else t


def _ts(rec, anchor_ms):
    # A record made before the clock was known gets its time from the boot's anchor (Unix ms at
    # uptime 0) when there is one, else stays null.
    ts = rec[2]
    if ts is None:
        return "null" if anchor_ms is None else "%d" % ((anchor_ms + rec[3] * 1000 + 500) // 1000)
    return "%d" % ts


def _extras(rec, keys, sep):
    # '"f":{...}' and '"err":{...}' of a record that has flags or errors, joined by sep
    out = []
    flags, errs = rec[6], rec[7]
    if flags:
        out.append('"f":{' + ",".join('"%s":["%s"]' % (keys[i], '","'.join(
            f for b, f in enumerate(FLAGS) if flags[i] >> b & 1)) for i in range(len(rec[9])) if i in flags) + "}")
    if errs:
        out.append('"err":{' + ",".join('"%s":%d' % (r, errs[r]) for r in ROLES if r in errs) + "}")
    return sep.join(out)


def to_json(rec, keys, anchor_ms):
    """The record as payload v1's JSON object."""
    vals = rec[5]
    out = ['{"seq":%d,"ts":%s,"up":%d,"dur":%d' % (rec[1], _ts(rec, anchor_ms), rec[3], rec[4])]
    j = 0
    for k, s in zip(keys, rec[9]):
        d = DEC.get(k, 0)
        v = vals[j]
        if s[0] == 4 and v is not None:
            v = "[%s,%s,%s,%d]" % (_num(v, d), _num(vals[j + 1], d), _num(vals[j + 2], d), vals[j + 3])
        else:
            v = _num(v, d)
        out.append('"%s":%s' % (k, v))
        j += s[0]
    x = _extras(rec, keys, ",")
    if x:
        out.append(x)
    return ",".join(out) + "}"


def to_v2(rec, anchor_ms, keys=None):
    """The record as payload v2's array: [seq, ts, up, dur, q...], a summary as [avg, avg - min,
    max - avg, n], all integers at DEC decimals; then {"f":..., "err":...} if it has any."""
    vals = rec[5]
    out = ["[%d,%s,%d,%d" % (rec[1], _ts(rec, anchor_ms), rec[3], rec[4])]
    j = 0
    for s in rec[9]:
        v = vals[j]
        if v is None:
            out.append("null")
        elif s[0] == 4:
            out.append("[%d,%d,%d,%d]" % (v, v - vals[j + 1], vals[j + 2] - v, vals[j + 3]))
        else:
            out.append("%d" % v)
        j += s[0]
    x = _extras(rec, keys or rec[8], ",")
    if x:
        out.append("{" + x + "}")
    return ",".join(out) + "]"
