# A record line (recline.py) as payload v2's array (docs/payload.md, "Payload v2"). Loaded at the
# first batch, not at the start: its code is heap the start needs (bench/start_heap.py).
import json
from recline import _extra

# Payload v2 (docs/payload.md) sends values as integers: value = integer / 10**DEC[key]. A step
# finer than the sensor's own, so nothing a sensor says is lost.
DEC = {"pm1": 1, "pm25": 1, "pm10": 1, "temp": 2, "rh": 2, "press": 2, "LAeq": 2, "LA10": 2, "LA50": 2,
       "LA90": 2, "LZeq": 2, "cov": 3}

# The quantities the samplers give as [avg, min, max, n]: payload v2 writes these four numbers
# without brackets (the envelope's "sum" says which keys); any other summary keeps its brackets.
SUM = ("pm1", "pm25", "pm10", "temp", "rh", "press", "LAeq")


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


def batch(buf, boot, lines, env, keys, anchor, dropped):
    """One batch of `boot`'s record lines into `buf`, as many as fit: (records, bytes). `env`: the
    boot's v1 envelope text when the batch carries it (the first of the boot in a session), else
    None; then, when `dropped` is 0 too, the short form [2,boot,records...]. `buf` is allocated at
    the start (node.py): a fragmented heap may no longer have 2 KB in one piece."""
    t0 = None if anchor is None else anchor // 1000
    short = env is None and not dropped
    if short:
        head = b"[2,%d," % boot
    elif env is None:
        head = b'{"v":2,"boot":%d,' % boot
    else:
        head = (env.replace('{"v":1,', '{"v":2,', 1) + '"keys":%s,"dec":[%s],"sum":[%s],%s' % (
            json.dumps(keys).replace(", ", ","), ",".join(str(DEC.get(k, 2)) for k in keys),
            ",".join("1" if k in SUM else "0" for k in keys), "" if t0 is None else '"t0":%d,' % t0)).encode()
    if not short:
        if dropped:
            head += b'"dropped":%d,' % dropped
        head += b'"recs":['
    mv = memoryview(buf)
    i = len(head)
    mv[:i] = head
    n = 0
    prev = None
    for line in lines:
        r, prev = to_v2(line, keys, anchor, t0, prev)
        r = r.encode()
        if n and i + len(r) + 3 > len(buf):
            break
        if n:
            buf[i] = 44  # ,
            i += 1
        mv[i:i + len(r)] = r
        i += len(r)
        n += 1
    if short:
        buf[i] = 93  # ]
        return n, i + 1
    mv[i:i + 2] = b"]}"
    return n, i + 2
