# Records (recline.py) as a batch of payload v2 (docs/payload.md, "Payload v2"). Compiled right
# after the start (node.main), in the room the start's own code leaves (bench/start_heap.py).
#
# The records go packed: the spool's own bits (recline.pack) without their length bytes, in base64,
# one string for the batch. Each is coded against the batch's record before it; the first against
# recline._ref (the boot and its shape, nothing else known): no key frame, the envelope's "k" has
# the shape. A batch decodes from its own bytes and the boot's envelope alone.
import binascii
import json
import recline


def batch(buf, boot, recs, env, keys, anchor, dropped):
    """One batch of `boot`'s records into `buf`, as many as fit: (records, bytes). `env`: the boot's
    v1 envelope text when the batch carries it (the first of the boot in a session), else None; then,
    when `dropped` is 0 too, the short form [2,boot,"records"]. `buf` is allocated at the start
    (node.py): a fragmented heap may no longer have 2 KB in one piece, so the base64 is made in it."""
    short = env is None and not dropped
    if short:
        head = b'[2,%d,"' % boot
    elif env is None:
        head = b'{"v":2,"boot":%d,' % boot
    else:
        head = (env.replace('{"v":1,', '{"v":2,', 1) + '"keys":%s,"dec":[%s],"k":[%s],%s' % (
            json.dumps(keys).replace(", ", ","), ",".join(str(recline.DEC.get(k, 0)) for k in keys),
            ",".join(str(s) for s in recline._rec(recs[0], keys)[9]),
            "" if anchor is None else '"t0":%d,' % (anchor // 1000))).encode()
    if not short:
        if dropped:
            head += b'"dropped":%d,' % dropped
        head += b'"recs":"'
    mv = memoryview(buf)
    h = len(head)
    mv[:h] = head
    # The raw bits go to the buffer's top part, from r0; their base64 is written from h, 64
    # characters for each 48 bytes read: from r0 on it never reaches bytes not yet read.
    top = len(buf) - 8
    r0 = (3 * h + top) // 4 + 16
    j = r0
    n = 0
    prev = None
    for rec in recs:
        rec = recline._rec(rec, keys)
        if rec[2] is None:   # made before the clock was known: its time from the boot's anchor, as v1
            rec[2] = recline.time_of(rec, anchor)
        b = recline.pack(rec, prev or recline._ref(boot, rec[9]))
        k = len(b) - 1
        if j + k > top:
            break
        mv[j:j + k] = memoryview(b)[1:]
        j += k
        n += 1
        prev = rec
    i = h
    for a in range(r0, j, 48):
        t = binascii.b2a_base64(mv[a:min(a + 48, j)])
        k = len(t) - 1   # its newline
        mv[i:i + k] = memoryview(t)[:k]
        i += k
    mv[i:i + 2] = b'"]' if short else b'"}'
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
