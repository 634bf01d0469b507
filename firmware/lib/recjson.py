# A record (recline.py) as payload JSON: v1's object with decimals, v2's array of fixed-point
# integers. Loaded by recline at the first record sent or shown, not at the start: its code is heap
# the start needs.
from recline import DEC, FLAGS, ROLES


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


def text(rec, keys, anchor_ms, v2):
    """recline.to_json (v2 False) and recline.to_v2 (v2 True)."""
    vals = rec[5]
    ts = rec[2]
    if ts is None and anchor_ms is not None:
        # made before the clock was known: its time from the boot's anchor (Unix ms at uptime 0)
        ts = (anchor_ms + rec[3] * 1000 + 500) // 1000
    out = [("[%d,%s,%d,%d" if v2 else '{"seq":%d,"ts":%s,"up":%d,"dur":%d') % (
        rec[1], "null" if ts is None else "%d" % ts, rec[3], rec[4])]
    j = 0
    for k, s in zip(keys, rec[9]):
        v = vals[j]
        d = 0 if v2 else DEC.get(k, 0)
        if s > 255 and v is not None:
            lo, hi = vals[j + 1], vals[j + 2]
            if v2:
                lo, hi = v - lo, hi - v
            v = "[%s,%s,%s,%d]" % (_num(v, d), _num(lo, d), _num(hi, d), vals[j + 3])
        else:
            v = _num(v, d)
        out.append(v if v2 else '"%s":%s' % (k, v))
        j += 4 if s > 255 else 1
    x = []
    flags, errs = rec[6], rec[7]
    if flags:
        x.append('"f":{' + ",".join('"%s":["%s"]' % (keys[i], '","'.join(
            f for b, f in enumerate(FLAGS) if flags[i] >> b & 1)) for i in range(len(keys)) if i in flags) + "}")
    if errs:
        x.append('"err":{' + ",".join('"%s":%d' % (r, errs[r]) for r in ROLES if r in errs) + "}")
    if x:
        out.append("{%s}" % ",".join(x) if v2 else ",".join(x))
    return ",".join(out) + ("]" if v2 else "}")
