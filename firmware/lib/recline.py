# A record as one short line on flash, and back to the payload's JSON when it is sent.
#
#   boot seq ts up dur|avg,min,max,n|...|flags|errors
#
# Quantities go in the boot's key order (stored once per boot, see spool.py), so the line carries
# no key names: about 140 bytes instead of 200, which is what lets 7 days of 1-minute records fit in
# the ESP32's 2 MB file system. ts is "-" while the clock is unknown; an empty field is a null.
# flags: <key index><flag letters>,...  e.g. 0wh,2w    errors: role=count,role=count

# Payload v2 (docs/payload.md) sends values as integers: value = integer / 10**DEC[key]. A step
# finer than the sensor's own, so nothing a sensor says is lost.
DEC = {"pm1": 1, "pm25": 1, "pm10": 1, "temp": 2, "rh": 2, "press": 2, "LAeq": 2, "LA10": 2, "LA50": 2,
       "LA90": 2, "LZeq": 2, "cov": 3}

# The quantities the samplers give as [avg, min, max, n]: payload v2 writes these four numbers
# without brackets (the envelope's "sum" says which keys); any other summary keeps its brackets.
SUM = ("pm1", "pm25", "pm10", "temp", "rh", "press", "LAeq")

FLAGS = {"missing": "m", "checksum": "c", "warmup": "w", "rh_high": "h", "partial": "p",
         "overload": "o", "floor": "f"}
_NAMES = {v: k for k, v in FLAGS.items()}


def encode(boot, seq, ts, up, dur, parts, flags, errs):
    """parts: ['"key":[avg,min,max,n]', '"key":number' or '"key":null', ...] as the samplers fill
    them. An array keeps its commas on the line, a number has none: that tells them apart."""
    out = ["%d %d %s %d %d" % (boot, seq, "-" if ts is None else ts, up, dur)]
    keys = keys_of(parts)
    for p in parts:
        v = p[p.index(":") + 1:]
        out.append("" if v == "null" else v[1:-1] if v[0] == "[" else v)
    out.append(",".join("%d%s" % (keys.index(k), "".join(FLAGS[f] for f in v)) for k, v in flags.items()))
    out.append(",".join("%s=%d" % kv for kv in errs.items()))
    return "|".join(out)


def keys_of(parts):
    return [p[1:p.index('"', 1)] for p in parts]


def boot_of(line):
    return int(line[:line.index(" ")])


def seq_of(line):
    i = line.index(" ") + 1
    return int(line[i:line.index(" ", i)])


def to_json(line, keys, anchor_ms):
    """The record as the payload's JSON. A record made before the clock was known gets its time
    from the boot's anchor (Unix ms at uptime 0) when there is one, else stays "ts":null."""
    f = line.split("|")
    _, seq, ts, up, dur = f[0].split(" ")
    if ts == "-":
        ts = "null" if anchor_ms is None else str((anchor_ms + int(up) * 1000 + 500) // 1000)
    out = ['{"seq":%s,"ts":%s,"up":%s,"dur":%s' % (seq, ts, up, dur)]
    for i, k in enumerate(keys):
        v = f[i + 1] if i + 1 < len(f) - 2 else ""
        out.append('"%s":%s' % (k, ("[%s]" % v if "," in v else v) if v else "null"))
    _extra(out, keys, f[-2], f[-1])
    return ",".join(out) + "}"


def _extra(out, keys, fl, er):
    # a record's flags and error counts, as payload v1 writes them
    if fl:
        fs = []
        for kv in fl.split(","):
            i = 0
            while kv[i] <= "9":
                i += 1
            fs.append('"%s":["%s"]' % (keys[int(kv[:i])], '","'.join(_NAMES[c] for c in kv[i:])))
        out.append('"f":{' + ",".join(fs) + "}")
    if er:
        out.append('"err":{' + ",".join('"%s":%s' % tuple(kv.split("=")) for kv in er.split(",")) + "}")


def _fx(t, d):
    """Decimal text ("-3.25") as an integer of 10**-d steps, without float: exact on any port."""
    i = t.find(".")
    if i < 0:
        return int(t) * 10 ** d
    frac = t[i + 1:]
    if len(frac) > d:   # finer than the step: round half away from zero
        v = abs(int(t[:i] + frac[:d] or "0")) + (frac[d] >= "5")
        return -v if t[0] == "-" else v
    return int(t[:i] + frac + "0" * (d - len(frac)))


def to_v2(line, keys, anchor_ms, t0, prev):
    """The record as payload v2's array, and its integers for the next record's deltas (`prev`: the
    batch's record before, or None). [seq,ts,up,dur,q...] in the boot's key order, a summary as
    a,a-min,max-a,n in steps of 10**-DEC[key] (bracketed, and a plain number of a SUM key too, when
    the key's form is not the one SUM says); with the boot's `t0` (Unix s at uptime 0) ts is
    ts-t0-up; after the first record of a batch every number that was a number in the record
    before too is the difference from it. Then {"f":..,"err":..} when the record has any."""
    f = line.split("|")
    _, seq, ts, up, dur = f[0].split(" ")
    up = int(up)
    if ts == "-":
        ts = None if anchor_ms is None else (anchor_ms + up * 1000 + 500) // 1000
    else:
        ts = int(ts)
    if ts is not None and t0 is not None:
        ts -= t0 + up
    cur = [int(seq), ts, up, int(dur)]
    for i, k in enumerate(keys):
        v = f[i + 1] if i + 1 < len(f) - 2 else ""
        d = DEC.get(k, 2)
        if not v:
            cur.append(None)
        elif "," in v:
            a, lo, hi, n = v.split(",")
            a = _fx(a, d)
            cur.append((a, a - _fx(lo, d), _fx(hi, d) - a, int(n)))
        else:
            cur.append(_fx(v, d))
    out = []
    for j, x in enumerate(cur):
        p = prev[j] if prev is not None and j < len(prev) else None
        inline = j >= 4 and keys[j - 4] in SUM
        if x is None:
            out.append("null")
        elif type(x) is tuple:
            if type(p) is tuple:
                x = (x[0] - p[0], x[1] - p[1], x[2] - p[2], x[3] - p[3])
            out.append(("%d,%d,%d,%d" if inline else "[%d,%d,%d,%d]") % x)
        else:
            x = str(x - p if type(p) is int else x)
            out.append("[" + x + "]" if inline else x)
    if f[-2] or f[-1]:
        x = []
        _extra(x, keys, f[-2], f[-1])
        out.append("{" + ",".join(x) + "}")
    return "[" + ",".join(out) + "]", cur
