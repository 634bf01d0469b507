# Records (recline.py) as a batch of payload v2 (docs/payload.md, "Payload v2"). Loaded at the first
# batch, not at the start: its code is heap the start needs (bench/start_heap.py).
#
# The record's numbers are already the fixed-point integers v2 sends (recline.DEC). A summary goes
# as its four numbers a, a-min, max-a, n in line (the envelope's "sum" marks its keys); with the
# boot's t0 (Unix s at uptime 0) ts goes as ts-t0-up, a few digits; after a batch's first record a
# number whose place held a number in the record before too goes as the difference from it.
import json
import recline


def _ints(rec, anchor_ms, t0):
    # [seq, ts, up, dur, then per key None, an int or (a, a-min, max-a, n)]
    ts = recline.time_of(rec, anchor_ms)
    if ts is not None and t0 is not None:
        ts -= t0 + rec[3]
    cur = [rec[1], ts, rec[3], rec[4]]
    vals = rec[5]
    j = 0
    for s in rec[9]:
        a = vals[j]
        if s > 255:
            cur.append(None if a is None else (a, a - vals[j + 1], vals[j + 2] - a, vals[j + 3]))
            j += 4
        else:
            cur.append(a)
            j += 1
    return cur


def to_v2(rec, keys, anchor_ms, t0, prev):
    """The record as payload v2's array, and its numbers whole for the next record's differences
    (`prev`: the batch's record before, or None); then {"f":..,"err":..} when it has any."""
    rec = recline._rec(rec, keys)
    cur = _ints(rec, anchor_ms, t0)
    out = []
    for j, x in enumerate(cur):
        p = prev[j] if prev is not None else None
        if x is None:
            out.append("null")
        elif type(x) is tuple:
            if type(p) is tuple:
                x = (x[0] - p[0], x[1] - p[1], x[2] - p[2], x[3] - p[3])
            out.append("%d,%d,%d,%d" % x)
        else:
            out.append("%d" % (x - p if type(p) is int else x))
    x = recline.extra(rec, keys)
    if x:
        out.append("{" + ",".join(x) + "}")
    return "[" + ",".join(out) + "]", cur


def batch(buf, boot, recs, env, keys, anchor, dropped):
    """One batch of `boot`'s records into `buf`, as many as fit: (records, bytes). `env`: the boot's
    v1 envelope text when the batch carries it (the first of the boot in a session), else None; then,
    when `dropped` is 0 too, the short form [2,boot,records...]. `buf` is allocated at the start
    (node.py): a fragmented heap may no longer have 2 KB in one piece."""
    t0 = None if anchor is None else anchor // 1000
    short = env is None and not dropped
    if short:
        head = b"[2,%d," % boot
    elif env is None:
        head = b'{"v":2,"boot":%d,' % boot
    else:
        shape = recline._rec(recs[0], keys)[9]
        head = (env.replace('{"v":1,', '{"v":2,', 1) + '"keys":%s,"dec":[%s],"sum":[%s],%s' % (
            json.dumps(keys).replace(", ", ","), ",".join(str(recline.DEC.get(k, 0)) for k in keys),
            ",".join("1" if s > 255 else "0" for s in shape), "" if t0 is None else '"t0":%d,' % t0)).encode()
    if not short:
        if dropped:
            head += b'"dropped":%d,' % dropped
        head += b'"recs":['
    mv = memoryview(buf)
    i = len(head)
    mv[:i] = head
    n = 0
    prev = None
    for rec in recs:
        r, prev = to_v2(rec, keys, anchor, t0, prev)
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


def publish(node, buf, boot, recs, env, keys, anchor, now):
    """node.py's _publish in payload v2: the envelope with the boot's first batch of the session."""
    sent = node.outbox.env_sent
    n, size = batch(buf, boot, recs, env if boot not in sent else None, keys, anchor, node.spool.dropped)
    if not node.uplink.publish(buf[:size], now):
        return 0
    if boot not in sent:
        sent.append(boot)
    return n
