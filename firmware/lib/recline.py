# A record as one short line on flash, and back to the payload's JSON when it is sent.
#
#   boot seq ts up dur|avg,min,max,n|...|flags|errors
#
# Quantities go in the boot's key order (stored once per boot, see spool.py), so the line carries
# no key names: about 140 bytes instead of 200, which is what lets 7 days of 1-minute records fit in
# the ESP32's 2 MB file system. ts is "-" while the clock is unknown; an empty field is a null.
# flags: <key index><flag letters>,...  e.g. 0wh,2w    errors: role=count,role=count

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
