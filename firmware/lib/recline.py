# A record as a few dozen bits on flash (spool.py), and as the payload's JSON when it is sent or
# shown. A month of 1-minute records must fit the 4 MB board's spool budget: about 40 bytes each.
#
# A record in memory (a list): [boot, seq, ts, up, dur, vals, flags, errs, keys, shape]
#   vals   flat, in the boot's key order: a summary takes 4 slots (avg, min, max, n), a plain
#          quantity 1; fixed-point integers at DEC decimals (value = integer / 10**dec), None: no value
#   flags  {key index: bits of FLAGS}     errs  {role: count}     keys  the boot's quantity keys
#   shape  per key its _K: a summary or not, and the codes' parameters
# While it waits in the outbox it is kept as pack(rec, None), its bytes as a key frame.
# On flash (written here, read by recread.py): a length byte, then the record's bits. A key frame
# (a segment's first record, every spool.KEY_EVERY-th, a boot's first) holds its boot in its first
# 4 bytes, everything else absolute and the shape, so a segment decodes from its own bytes alone.
# Every other record holds its changes from the segment's record before it: seq +1, up +dur,
# ts +dur, the same n, the same nulls, flags and errors cost a bit each; averages and plain numbers
# are the change since that record, min and max the distance from the average. Each number is an
# Exp-Golomb code of order k (signed ones zigzagged): k bits for the usual size, two bits more per
# doubling beyond it.

DEC = {"pm1": 1, "pm25": 1, "pm10": 1, "temp": 2, "rh": 2, "press": 2, "LAeq": 2, "LA10": 2, "LA50": 2,
       "LA90": 2, "LZeq": 2, "cov": 3}
# k for a quantity's change from one record to the next and, for a summary, of its min/max spread:
# 0x100 | k << 4 | k of the spread (ints, not tuples: heap); measured on the simulator's scenarios
_K = {"pm1": 0x145, "pm25": 0x145, "pm10": 0x145, "temp": 0x123, "rh": 0x144, "press": 0x122,
      "LAeq": 0x179, "LA10": 7, "LA50": 7, "LA90": 7, "LZeq": 7, "cov": 0}
FLAGS = ("missing", "partial", "warmup", "checksum", "rh_high", "overload", "floor")
ROLES = ("pm", "climate", "mic")

_B = bytearray(256)   # the record being written: a length byte, then its bits (well under 255 bytes)
_acc = _nb = _len = 0
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


# -- a record -------------------------------------------------------------------------------------
def keys_of(parts):
    return [p[0] for p in parts]


def record(boot, seq, ts, up, dur, parts, flags, errs, keys):
    """The record of an interval. parts: [(key, value)] as the samplers fill them, in `keys`' order:
    value None, a fixed-point int, or (avg, min, max, n); flags: {key: [flag names]}."""
    global _shape
    if _shape[0] is not keys:   # once per boot
        _shape = (keys, tuple(_K.get(k, 6) for k in keys))
    vals = []
    for k, v in parts:
        if _K.get(k, 0) > 255:
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


def _rec(rec, keys=None):
    # a record kept compact while it waits to be sent: pack(rec, None), a key frame of about 70 bytes
    # against some 250 as a list on the ESP32 (outbox.py keeps up to 8)
    if type(rec) is bytes:
        import recread
        rec = recread.unpack(memoryview(rec)[1:], None)
        rec[8] = keys or _shape[0]   # waiting records are the running boot's
    return rec


def boot_of(rec):
    return _rec(rec)[0]


def seq_of(rec):
    return _rec(rec)[1]


def _ref(boot, shape):
    # what a key frame is coded against: nothing known but the boot
    return [boot, -1, None, 0, 0, None, {}, {}, None, shape]


def _nulls(rec):
    m = 0
    j = 0
    vals = rec[5]
    for i, s in enumerate(rec[9]):
        if vals is None or vals[j] is None:
            m |= 1 << i
        j += 4 if s > 255 else 1
    return m


def pack(rec, prev):
    """The record's bytes on flash (length byte first): its changes from prev, the record before it
    in the same segment, or a key frame when prev is None or of another boot."""
    global _acc, _nb, _len
    _acc = _nb = 0
    _len = 1
    boot, seq, ts, up, dur, vals, flags, errs, keys, shape = rec
    key = prev is None or prev[0] != boot or prev[1] >= seq or prev[9] != shape
    _put(key, 1)
    if key:
        prev = _ref(boot, shape)
        _put(boot, 31)   # in bytes 1-4: the spool finds a segment's boot without decoding
        _eg(len(shape), 0)
        for s in shape:
            _put(s, 9)
    _eg(seq - prev[1] - 1, 0)
    _zg(up - prev[3] - prev[4], 0)
    _zg(dur - prev[4], 0)
    _put(ts is not None, 1)
    if ts is not None:
        if prev[2] is None:
            _put(ts, 32)
        else:
            _zg(ts - prev[2] - prev[4], 0)
    pv = prev[5]
    nulls = _nulls(rec)
    pn = _nulls(prev) if pv else -1
    _put(nulls == pn, 1)
    if nulls != pn:
        _put(nulls, len(shape))
    j = 0
    for s in shape:
        v = vals[j]
        if v is not None:
            p = pv and pv[j]
            if s > 255:
                _zg(v - (p or 0), s >> 4 & 15)
                _zg(v - vals[j + 1], s & 15)
                _zg(vals[j + 2] - v, s & 15)
                _zg(vals[j + 3] - (pv[j + 3] if p is not None else 0), 0)
            else:
                _zg(v - (p or 0), s)
        j += 4 if s > 255 else 1
    _put(flags == prev[6], 1)
    if flags != prev[6]:
        for i in range(len(shape)):
            b = flags.get(i, 0)
            _put(b != 0, 1)
            if b:
                _put(b, 7)
    _put(len(errs) != 0, 1)
    if errs:
        for r in ROLES:
            c = errs.get(r, 0)
            _put(c != 0, 1)
            if c:
                _eg(c - 1, 0)
    _put(0, -_nb & 7)
    _B[0] = _len - 1
    return bytes(_B[:_len])


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


def extra(rec, keys):
    """A record's flags and error counts as payload JSON members ([] when it has none)."""
    x = []
    flags, errs = rec[6], rec[7]
    if flags:
        x.append('"f":{' + ",".join('"%s":["%s"]' % (keys[i], '","'.join(
            f for b, f in enumerate(FLAGS) if flags[i] >> b & 1)) for i in range(len(keys)) if i in flags) + "}")
    if errs:
        x.append('"err":{' + ",".join('"%s":%d' % (r, errs[r]) for r in ROLES if r in errs) + "}")
    return x


def time_of(rec, anchor_ms):
    """The record's ts; one made before the clock was known gets its time from the boot's anchor
    (Unix ms at uptime 0) when there is one, else None."""
    ts = rec[2]
    if ts is None and anchor_ms is not None:
        ts = (anchor_ms + rec[3] * 1000 + 500) // 1000
    return ts


def to_json(rec, keys, anchor_ms):
    """The record (a list, or its bytes from pack(rec, None)) as payload v1's JSON object."""
    rec = _rec(rec, keys)
    vals = rec[5]
    ts = time_of(rec, anchor_ms)
    out = ['{"seq":%d,"ts":%s,"up":%d,"dur":%d' % (rec[1], "null" if ts is None else "%d" % ts, rec[3], rec[4])]
    j = 0
    for i, s in enumerate(rec[9]):
        v = vals[j]
        k = keys[i]
        d = DEC.get(k, 0)
        if s > 255 and v is not None:
            v = "[%s,%s,%s,%d]" % (_num(v, d), _num(vals[j + 1], d), _num(vals[j + 2], d), vals[j + 3])
        else:
            v = _num(v, d)
        out.append('"%s":%s' % (k, v))
        j += 4 if s > 255 else 1
    out += extra(rec, keys)
    return ",".join(out) + "}"
