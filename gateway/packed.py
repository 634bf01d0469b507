"""Payload v2's packed records (docs/payload.md, "Packed records"): a node's records as its spool
holds them, bits read back into integers.

A batch's `recs` is then one base64 string: the records back to back, each padded to a whole byte,
each coded against the one before it in the batch, the first against a reference that knows only
the boot and the envelope's `k` (the shape). Every number is an Exp-Golomb code of order k (a
signed one zigzagged). The node writes them with firmware/lib/recline.py's `pack`; this is the
gateway's own reader of the same format (it imports nothing of the firmware).
"""

from __future__ import annotations

import base64
import binascii
import re
from itertools import compress, repeat
from operator import add, is_, itemgetter
from typing import Any, Callable, NamedTuple, Sequence

#: flag bits, bit 0 first (recline.FLAGS)
FLAGS = ("missing", "partial", "warmup", "checksum", "rh_high", "overload", "floor")
#: error count roles, in the order their bits come (recline.ROLES)
ROLES = ("pm", "climate", "mic")
#: a code of a key's shape: 256 and up a summary (avg, min, max, n)
SUMMARY_CODE = 256
#: the most zero bits before an Exp-Golomb code's 1: more is not a number a node writes
_ZEROS_MAX = 40


class PackedRecord(NamedTuple):
    """One record, its numbers whole: `vals` per key None, an int, or (avg, min, max, n)."""

    boot: int
    seq: int
    ts: int | None
    up: int
    dur: int
    vals: tuple[int | tuple[int, int, int, int] | None, ...]
    #: key index -> bits of FLAGS
    flags: dict[int, int]
    #: role -> count
    errs: dict[str, int]


class Unreadable(ValueError):
    """Bits that are not a record (cut short, a code too long, another shape)."""


class _Bits:
    # the bits as a text of "0" and "1": a code's run of zeros is found by str.find, in C
    def __init__(self, data: bytes) -> None:
        self.bits = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b") if data else ""
        self.pos = 0

    def get(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.bits):
            raise Unreadable("the bytes end inside a record")
        v = int(self.bits[self.pos:end], 2) if n else 0
        self.pos = end
        return v

    def ueg(self, k: int) -> int:
        one = self.bits.find("1", self.pos, self.pos + _ZEROS_MAX + 1)
        if one < 0:
            if len(self.bits) - self.pos <= _ZEROS_MAX:
                raise Unreadable("the bytes end inside a record")
            raise Unreadable("a code longer than any number a node writes")
        z = one - self.pos
        self.pos = one + 1
        return (1 << z + k | self.get(z + k)) - (1 << k)

    def zg(self, k: int) -> int:
        u = self.ueg(k)
        return -(u + 1 >> 1) if u & 1 else u >> 1

    def align(self) -> None:
        if self.get(-self.pos & 7):
            raise Unreadable("a record's padding is not zero")

    def left(self) -> int:
        return len(self.bits) - self.pos


def _nulls(vals: tuple) -> int:
    return sum(1 << i for i, v in enumerate(vals) if v is None)


def decode_text(text: str) -> bytes:
    """The bytes of a packed `recs` string (standard base64, padded)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise Unreadable(f"not base64: {e}") from None


def records(data: bytes, boot: int, shape: tuple[int, ...]) -> list[PackedRecord]:
    """The records in `data`, a boot's batch whose envelope gives `shape` (its `k`). Raises
    `Unreadable` with the records read before the one that is not in `.args[1]`."""
    bits = _Bits(data)
    out: list[PackedRecord] = []
    prev = PackedRecord(boot, -1, None, 0, 0, (), {}, {})
    try:
        while bits.left():
            prev = _record(bits, prev, shape, boot)
            out.append(prev)
    except Unreadable as e:
        raise Unreadable(f"packed record {len(out)}: {e}", out) from None
    return out


def _record(bits: _Bits, prev: PackedRecord, shape: tuple[int, ...], boot: int) -> PackedRecord:
    if bits.get(1):  # a key frame: the boot and the shape in the record (the spool's; a node may send one)
        if bits.get(31) != boot:
            raise Unreadable("a key frame of another boot")
        if tuple(bits.get(9) for _ in range(bits.ueg(0))) != shape:
            raise Unreadable("a key frame of another shape than the envelope's k")
        prev = PackedRecord(boot, -1, None, 0, 0, (), {}, {})
    pd = prev.dur
    seq = prev.seq + 1 + bits.ueg(0)
    up = prev.up + pd + bits.zg(0)
    dur = pd + bits.zg(0)
    ts = None
    if bits.get(1):
        ts = bits.get(32) if prev.ts is None else prev.ts + pd + bits.zg(0)
    pv = prev.vals
    nulls = _nulls(pv) if pv else -1
    if not bits.get(1):
        nulls = bits.get(len(shape))
    vals: list[int | tuple[int, int, int, int] | None] = []
    for i, s in enumerate(shape):
        if nulls >> i & 1:
            vals.append(None)
            continue
        p = pv[i] if pv else None
        if s >= SUMMARY_CODE:
            pa, pn = (p[0], p[3]) if isinstance(p, tuple) else (0, 0)
            a = bits.zg(s >> 4 & 15) + pa
            lo = a - bits.zg(s & 15)
            hi = a + bits.zg(s & 15)
            vals.append((a, lo, hi, bits.zg(0) + pn))
        else:
            vals.append(bits.zg(s) + (p if isinstance(p, int) else 0))
    flags = prev.flags
    if not bits.get(1):
        flags = {i: bits.get(7) for i in range(len(shape)) if bits.get(1)}
    errs: dict[str, int] = {}
    if bits.get(1):
        errs = {r: bits.ueg(0) + 1 for r in ROLES if bits.get(1)}
    bits.align()
    return PackedRecord(boot, seq, ts, up, dur, tuple(vals), flags, errs)


# -- the quick reader ------------------------------------------------------------------------------
# payload.py's quick way for packed records: the same numbers as `records`, several times faster,
# or None for anything unusual (a key frame, a code of more than _QUICK_ZEROS zeros, bits that are
# not records), which `records` then reads, or says why it cannot. The reader above goes a bit
# field at a time in Python; this one lets a regular expression, made once per shape and layout (the
# keys not null), cut a record's bits into its codes in C, looks each code's number up in a table,
# and adds a record's deltas to the record before's with map(), not a Python loop per number.

#: the most zeros before a code's 1 the quick reader takes: numbers up to 2^25 times the order's
_QUICK_ZEROS = 24
#: codes of up to this many bits are looked up in a table (filled per order when a shape needs it;
#: about 17 000 codes for firmware 0.2's k, 2 MB): longer ones, a batch's first values, are computed
_TABLE_BITS = 16
_SIGNED: dict[str | None, int] = {}
_UNSIGNED: dict[str | None, int] = {}  # order 0 only: seq steps
_COUNTS: dict[str | None, int] = {None: 0}  # an error count (order 0, +1), 0 when not sent
_NO_FLAGS: dict[str | None, int] = {None: 0}  # flags the same as before; explicit ones are read apart
_NEGATED: dict[str | None, int] = {}  # -(signed): average - min, subtracted by adding
_tabled: set[int] = set()
#: longer codes met (a batch's first values, whole), their number not zigzagged: nodes send the
#: same ones again and again (a level, a pressure); forgotten when full
_LONG: dict[str, int] = {}
_LONG_MAX = 4096


def _table(k: int) -> None:
    """Every code of order k of up to _TABLE_BITS bits into the tables: the code's text alone says
    its order (k = length - 2 * zeros - 1), so one table serves every order."""
    if k in _tabled:
        return
    z = 0
    while 2 * z + 1 + k <= _TABLE_BITS:
        for w in range(1 << z + k, 1 << z + k + 1):
            text = "0" * z + format(w, "b")
            u = w - (1 << k)
            _SIGNED[text] = v = -(u + 1 >> 1) if u & 1 else u >> 1
            _NEGATED[text] = -v
            if k == 0:
                _UNSIGNED[text] = u
                _COUNTS[text] = u + 1
        z += 1
    _tabled.add(k)


def _unsigned(text: str) -> int:
    """A code's number (not zigzagged), whatever its length."""
    z = len(text) - len(text.lstrip("0"))
    return int(text, 2) - (1 << len(text) - 2 * z - 1)


def _signed(text: str) -> int:
    u = _unsigned(text)
    return -(u + 1 >> 1) if u & 1 else u >> 1


def _code(k: int, z: int = 0) -> str:
    """A pattern of an Exp-Golomb code of order k, nested a zero deeper each time (no backtracking
    over the zeros): a 1 and z + k bits, or a 0 and the same one level down."""
    one = "1" + (f".{{{z + k}}}" if z + k else "")
    return one if z == _QUICK_ZEROS else f"(?:{one}|0{_code(k, z + 1)})"


def picker(idx: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """itemgetter that always gives a tuple (itemgetter of one index gives the item)."""
    if len(idx) == 1:
        i = idx[0]
        return lambda s: (s[i],)
    if not idx:
        return lambda s: ()
    return itemgetter(*idx)


class Layout:
    """The codes of a record whose null keys are the bits of `mask`, in the bit order: per key not
    null, a summary's four (average, average - min, max - average, n) or a plain number. The quick
    reader gives a record's numbers as `nums`: the averages of the summaries (`sums`, key indices),
    the plain numbers (`plains`), the summaries' n, their min - average, their max - average."""

    def __init__(self, shape: tuple[int, ...], mask: int) -> None:
        self.mask = mask
        present = [i for i in range(len(shape)) if not mask >> i & 1]
        self.sums = [i for i in present if shape[i] >= SUMMARY_CODE]
        self.plains = [i for i in present if shape[i] < SUMMARY_CODE]
        self.ns, self.np = len(self.sums), len(self.plains)
        at: dict[int, int] = {}  # key -> the group of its first code (seq, up, dur and ts are 0..3)
        pattern: list[str] = []
        tables: list[dict[str | None, int]] = [_UNSIGNED, _SIGNED, _SIGNED, _SIGNED]
        for i in present:
            at[i] = 4 + len(pattern)
            s = shape[i]
            if s >= SUMMARY_CODE:
                pattern += [_code(s >> 4 & 15), _code(s & 15), _code(s & 15), _code(0)]
                tables += [_SIGNED, _NEGATED, _SIGNED, _SIGNED]
            else:
                pattern.append(_code(s))
                tables.append(_SIGNED)
        self.nv = len(pattern)
        #: per group, the table of its numbers; flags and error counts as _NO_FLAGS and _COUNTS say
        self.tables = tuple(tables + [_NO_FLAGS] + [_COUNTS] * len(ROLES))
        # what is added to the record before's: the averages, the plain numbers, the counts
        self.acc = picker([at[i] for i in self.sums] + [at[i] for i in self.plains] + [at[i] + 3 for i in self.sums])
        self.zeros = [0] * (2 * self.ns + self.np)
        # min - average and max - average, added to the average by the reader's caller
        self.spread = picker([at[i] + 1 for i in self.sums] + [at[i] + 2 for i in self.sums])
        #: the group of the last value code: a later one is flags or an error count
        self.last = 4 + len(pattern)
        n = len(shape)
        # then the flags (1: the same; else per key a bit, and after a 1 its 7 bits) and error counts
        self.body = "".join(f"({p})" for p in pattern) + f"(?:1|0((?:0|1.{{7}}){{{n}}}))" + \
            "(?:0|1" + f"(?:0|1({_code(0)}))" * len(ROLES) + ")"
        self.body_re = re.compile(self.body)
        self.full_re: list[re.Pattern[str]] = []

    def carried(self, before: "Layout", acc: list[int]) -> list[int]:
        """`acc` of a record of layout `before` in this layout's order: what each delta of a record of
        this layout is added to (0 for a key null before: its number is sent whole)."""
        old = dict(zip(before.sums + before.plains, acc))
        old_n = dict(zip(before.sums, acc[before.ns + before.np:]))
        return [old.get(i, 0) for i in self.sums + self.plains] + [old_n.get(i, 0) for i in self.sums]


class Quick:
    """The quick reader's patterns of one shape (an envelope's k), made once, and its layouts."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        for s in shape:
            _table(s >> 4 & 15 if s >= SUMMARY_CODE else s)
            _table(s & 15 if s >= SUMMARY_CODE else s)
        _table(0)
        c0 = _code(0)
        # not a key frame; seq, up, dur; the ts (32 bits when the record before had none); the nulls
        self.start = [f"0({c0})({c0})({c0})(?:0|1({c0}))", f"0({c0})({c0})({c0})(?:0|1(.{{32}}))"]
        self.head_re = [re.compile(s + f"(?:1|0(.{{{len(shape)}}}))") for s in self.start]
        self.layouts: dict[int, Layout] = {}
        self.none = self.layout((1 << len(shape)) - 1)  # the reference: every key null

    def layout(self, mask: int) -> Layout:
        lay = self.layouts.get(mask)
        if lay is None:
            if len(self.layouts) >= 256:  # a node does not send hundreds of null patterns
                self.layouts.clear()
                self.none = self.layouts[self.none.mask] = self.none
            lay = Layout(self.shape, mask)
            # a whole record with the same nulls as the record before (most records), ts delta or
            # whole; made before another thread can find the layout
            lay.full_re = [re.compile(s + "1" + lay.body) for s in self.start]
            self.layouts[mask] = lay
        return lay


_quick: dict[tuple[int, ...], Quick] = {}


def quick(shape: tuple[int, ...]) -> Quick:
    """The quick reader of `shape`, made once."""
    q = _quick.get(shape)
    if q is None:
        if len(_quick) >= 64:
            _quick.clear()
        q = _quick[shape] = Quick(shape)
    return q


#: one record read the quick way: seq, ts, up, dur, flags (key index -> bits: the same dict object as
#: the record before's when the record says they are the same), error counts
Head = tuple[int, "int | None", int, int, dict[int, int], dict[str, int]]


class Run(NamedTuple):
    """Records one after the other with the same null keys: each one's head, and their numbers
    back to back, as `layout` says one record's."""

    layout: Layout
    heads: list[Head]
    nums: list[int]


def quick_records(data: bytes, q: Quick) -> list[Run] | None:
    """The records of `data` as `records` reads them, or None where the quick way cannot tell."""
    n8 = len(data) * 8
    bits = format(int.from_bytes(data, "big"), f"0{n8}b")
    runs: list[Run] = []
    get, sg = dict.get, _SIGNED.get
    seq, ts, up, dur = -1, None, 0, 0
    lay = q.none
    acc: list[int] = []
    flags: dict[int, int] = {}
    heads: list[Head] = []
    nums: list[int] = []
    pos = 0
    while pos < n8:
        m = lay.full_re[ts is None].match(bits, pos) if runs else None
        if m is not None:
            g = m.groups()
            new = lay
            tail = m.lastindex > lay.last  # flags or error counts
        else:  # the nulls are not the same as the record before's (a batch's first record)
            h = q.head_re[ts is None].match(bits, pos)
            if h is None or h.group(5) is None:
                return None
            new = q.layout(int(h.group(5), 2))
            m = new.body_re.match(bits, h.end())
            if m is None:
                return None
            g = h.groups()[:4] + m.groups()
            tail = True
            if new is not lay or not runs:
                acc = new.carried(lay, acc) if runs else new.zeros
                heads, nums = [], []
                runs.append(Run(new, heads, nums))
        d = list(map(get, new.tables, g))
        if None in d:  # a code longer than the tables' (a batch's first values), flags, a ts of 32 bits
            _long(d, g, new)
            if g[new.nv + 4] is not None:
                flags = _flags(g[new.nv + 4], len(q.shape))
        t = g[3]
        if t is None:
            ts = None
        elif ts is None:
            ts = int(t, 2)
        else:
            x = sg(t)
            ts += dur + (_signed(t) if x is None else x)
        seq += 1 + d[0]
        up += dur + d[1]
        dur += d[2]
        acc = list(map(add, new.acc(d), acc))
        nums += acc
        nums += new.spread(d)
        heads.append((seq, ts, up, dur, flags, _errs(d[new.nv + 5:]) if tail else {}))
        e = m.end()
        pos = e + (-e & 7)
        if pos > e and bits.find("1", e, pos) >= 0:  # the padding is not zero
            return None
        lay = new
    return runs


def _long(d: list[int | None], g: tuple[str | None, ...], lay: Layout) -> None:
    """Into `d`, the numbers of the codes of `g` that the tables do not have."""
    nv = lay.nv
    for i in compress(range(len(d)), map(is_, d, repeat(None))):
        text = g[i]
        if text is None or i == 3 or i == nv + 4:  # no error count; the ts and flags are read apart
            continue
        x = _LONG.get(text)
        if x is None:
            z = len(text) - len(text.lstrip("0"))
            x = int(text, 2) - (1 << len(text) - 2 * z - 1)
            if len(_LONG) >= _LONG_MAX:
                _LONG.clear()
            _LONG[text] = x
        if i == 0 or i > nv + 4:  # seq's step, an error count
            d[i] = x + (i > 0)
        else:
            x = -(x + 1 >> 1) if x & 1 else x >> 1
            d[i] = -x if lay.tables[i] is _NEGATED else x


def _flags(text: str, n: int) -> dict[int, int]:
    flags, j = {}, 0
    for i in range(n):
        if text[j] == "1":
            flags[i] = int(text[j + 1:j + 8], 2)
            j += 8
        else:
            j += 1
    return flags


def _errs(counts: list[int | None]) -> dict[str, int]:
    return {r: c for r, c in zip(ROLES, counts) if c}
