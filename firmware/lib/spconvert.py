# Segments an older firmware wrote as text lines (boot seq ts up dur|avg,min,max,n|...|flags|errors,
# quantities in the boot's key order of b<boot>), rewritten as binary records (recline.py) at the
# first start of this firmware, so that an update loses none of a spool's backlog. Loaded by
# spstate.py only then, and dropped after. Oldest segment first, each written whole to s<n>.new and
# renamed over s<n>: a power cut leaves each segment text or binary, and the next start goes on with
# what is still text (spstate.py checks the newest segment). Positions in a rewritten segment
# change: spstate.py takes a state file the older firmware wrote as pointing to its segments' starts
# (what follows is sent again; the gateway stores a boot and seq once).
import os
import recline
from spool import KEY_EVERY
from spstate import is_text

_LETTERS = "mcwhpof"   # the older firmware's flag letters, in the order of _NAMES
_NAMES = ("missing", "checksum", "warmup", "rh_high", "partial", "overload", "floor")


def _fixed(t, d):
    # "12.3" -> 1230 at d = 2: exact, no float
    neg = t[0] == "-"
    p = (t[1:] if neg else t).split(".")
    v = int(p[0] or "0") * 10 ** d + (int((p[1] + "0" * d)[:d]) if len(p) > 1 and d else 0)
    return -v if neg else v


def _record(line, keys):
    f = line.split("|")
    boot, seq, ts, up, dur = f[0].split(" ")
    parts = []
    for i, k in enumerate(keys):
        v = f[i + 1] if i + 1 < len(f) - 2 else ""   # fields past the line's end are nulls
        d = recline.DEC.get(k, 0)
        if not v:
            v = None
        elif "," in v:
            v = v.split(",")
            v = (_fixed(v[0], d), _fixed(v[1], d), _fixed(v[2], d), int(v[3]))
        else:
            v = _fixed(v, d)
        parts.append((k, v))
    flags = {}
    for kv in f[-2].split(",") if f[-2] else ():
        i = 0
        while kv[i] <= "9":
            i += 1
        flags[keys[int(kv[:i])]] = [_NAMES[_LETTERS.index(c)] for c in kv[i:]]
    errs = {}
    for kv in f[-1].split(",") if f[-1] else ():
        r, c = kv.split("=")
        errs[r] = int(c)
    return recline.record(int(boot), int(seq), None if ts == "-" else int(ts), int(up), int(dur), parts,
                          flags, errs, keys)


def convert(sp):
    """Every text segment rewritten as binary records; sp.segs and sp.total follow."""
    keys = None
    for s in sp.segs:
        n = s[0]
        if not is_text(sp, n):
            continue
        tmp = sp._seg(n) + ".new"
        prev = None
        k = 0
        with open(sp._seg(n)) as src, open(tmp, "wb") as out:
            for line in src:
                if line[-1:] != "\n":
                    break
                b = sp.boot_info(int(line[:line.index(" ")]))[1]
                keys = b or keys   # a boot whose file is gone: the keys of the one before (same board)
                if keys is None:
                    continue
                rec = _record(line[:-1], keys)
                out.write(recline.pack(rec, None if k % KEY_EVERY == 0 else prev))
                prev = rec
                k += 1
        os.rename(tmp, sp._seg(n))
        size = os.stat(sp._seg(n))[6]
        sp.total += size - s[1]
        s[1] = size
