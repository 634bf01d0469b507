"""A record's readings in one BLOB (`recs.vals`, schema.py): every value exactly as the node sent
it, in a few bytes.

A node sends decimals (3.1, 12.34, 1013.21): a value is kept as an integer M and a decimal exponent
k, M / 10**k, and only when that division gives back the very same float (it is correctly rounded
for M below 2**53, so a round trip is exact); anything else (an infinity, -0.0, 1e-300, a value an
older gateway stored) is kept as the 8 bytes of its float. A summary's min and max are kept as
small differences from its avg, n in the smallest integer that holds it; flags as bits when they are
in the order the gateway writes them, else as text.

Layout (little-endian), in two parts: a record's shape (`recs.shape`, a row of `shapes`: the same
for most records of a node, so kept once) and its fields (`recs.vals`):

    shape   mask     uint16: bit i: `CODES[i]` is in the record; bit 15: `extra` follows the fields
            heads    one byte per quantity in the mask, in `CODES` order: bits 0-3 its kind (`KINDS`,
                     the struct format of its fields), bits 4-6 k, bit 7 a uint16 of flag bits
                     after its fields
    vals    fields   the quantities' fields, in the same order
            extra    JSON: [[quantity, avg, min, max, n, unit, flags], ...], what the bytes above
                     cannot say: a quantity not in `CODES`, a value that is no float, flags in another
                     order, a unit other than the record's boot gives (an older store's), an avg
                     without min when n is given...

`CODES`, `FLAG_BITS`, `KINDS` and `OFFSETS` are the stored format: only append to them.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Callable, Iterable, Mapping, Sequence

from msgspec import UNSET

from ..payload import QUANTITIES

#: the quantities by their bit in the mask (docs/payload.md's order); append only
CODES = ("pm1", "pm25", "pm10", "temp", "rh", "press", "LAeq", "LA10", "LA50", "LA90", "LZeq", "cov")
_CODE = {q: i for i, q in enumerate(CODES)}
#: the flags by their bit, in the order a record's flags are written (the node's, then the gateway's)
FLAG_BITS = ("missing", "checksum", "warmup", "rh_high", "partial", "overload", "floor", "range", "refused")
_EXTRA_BIT = 0x8000
#: an avg is kept as M - OFFSETS[q] * 10**k: pressure near 1000 hPa fits 16 bits at 0.01 hPa
OFFSETS = {"press": 1000}
#: decimals tried first for a quantity (what its node sends); then 0..7
_TRY = {"pm1": (1, 2), "pm25": (1, 2), "pm10": (1, 2), "temp": (2,), "rh": (1, 2), "press": (2,), "LAeq": (1, 2),
        "LA10": (1, 2), "LA50": (1, 2), "LA90": (1, 2), "LZeq": (1, 2), "cov": (3,)}
_ALL_K = tuple(range(8))
_P = tuple(10**k for k in range(8))

# kinds: the struct format of a quantity's fields
NULL, S16, S32, S64, SF, M8, M16, M32, M64, MF = range(10)
KINDS = ("", "h", "i", "q", "d", "hbbB", "hhhB", "iiiI", "qqqq", "dddq")
_SUMMARY = (False, False, False, False, False, True, True, True, True, True)
_LIMIT = 2**53  # |M| below it: M / 10**k is the correctly rounded decimal

Fields = tuple[float | None, float | None, float | None, int | None]  # avg, min, max, n
#: one reading of a record: quantity, avg, min, max, n, unit, flags (comma-separated)
Decoded = tuple[str, Any, Any, Any, Any, str, str]

_DEFAULT_UNITS = {k: q.unit for k, q in QUANTITIES.items()}


def unit_of(units: Mapping[str, str], q: str) -> str:
    """A reading's unit: what its boot's envelope says (`units`), else the contract's."""
    return units.get(q) or _DEFAULT_UNITS.get(q, "")


_flag_cache: dict[tuple[str, ...], int | None] = {}
_FLAG_TEXT = tuple(",".join(f for i, f in enumerate(FLAG_BITS) if bits >> i & 1) for bits in range(1 << len(FLAG_BITS)))


def _flag_bits(flags: tuple[str, ...]) -> int | None:
    """The bits of `flags`, or None when the bits would not give them back as they are."""
    bits = _flag_cache.get(flags)
    if bits is None and flags not in _flag_cache:
        bits = 0
        for f in flags:
            if f not in FLAG_BITS:
                bits = None
                break
            bits |= 1 << FLAG_BITS.index(f)
        if bits is not None and _FLAG_TEXT[bits] != ",".join(flags):
            bits = None  # another order, or a flag twice
        if len(_flag_cache) < 4096:
            _flag_cache[flags] = bits
    return bits


def _fixed(x: float, p: int) -> int | None:
    """M with M / p == x exactly, or None."""
    try:
        m = round(x * p)
    except (OverflowError, ValueError):  # an infinity, NaN
        return None
    if -_LIMIT < m < _LIMIT and m / p == x and (m or math.copysign(1.0, x) > 0):
        return m
    return None


def _scaled(q: str, xs: tuple[float, ...]) -> tuple[int, list[int]] | None:
    """(k, the Ms) of floats `xs` at the first decimals that keep them all exactly."""
    for ks in (_TRY.get(q, ()), _ALL_K):
        for k in ks:
            p = _P[k]
            ms = []
            for x in xs:
                m = _fixed(x, p)
                if m is None:
                    break
                ms.append(m)
            else:
                return k, ms
    return None


def _is_float(x: object) -> bool:
    return type(x) is float


def _is_int(x: object) -> bool:
    return type(x) is int and -2**63 <= x < 2**63  # type: ignore[operator]


def _one(q: str, v: Fields, bits: int | None) -> tuple[int, list[Any]] | None:
    """(head, fields) of one quantity, or None when it goes to `extra`."""
    avg, lo, hi, n = v
    flag = 0 if bits is None else 0x80
    tail = [] if bits is None else [bits]
    if avg is None and lo is None and hi is None and n is None:
        return NULL | flag, tail
    if lo is None and hi is None and n is None:
        if not _is_float(avg):
            return None
        kms = _scaled(q, (avg,))  # type: ignore[arg-type]
        if kms is None:
            return SF | flag, [avg, *tail]
        k, (m,) = kms
        m -= OFFSETS.get(q, 0) * _P[k]
        kind = S16 if -32768 <= m < 32768 else S32 if -2**31 <= m < 2**31 else S64
        return kind | k << 4 | flag, [m, *tail]
    if not (_is_float(avg) and _is_float(lo) and _is_float(hi) and _is_int(n)):
        return None
    kms = _scaled(q, (avg, lo, hi))  # type: ignore[arg-type]
    if kms is None:
        return MF | flag, [avg, lo, hi, n, *tail]
    k, (a, mn, mx) = kms
    a -= OFFSETS.get(q, 0) * _P[k]
    dl, dh = mn - (a + OFFSETS.get(q, 0) * _P[k]), mx - (a + OFFSETS.get(q, 0) * _P[k])
    if -32768 <= a < 32768 and 0 <= n < 256:  # type: ignore[operator]
        if -128 <= dl < 128 and -128 <= dh < 128:
            return M8 | k << 4 | flag, [a, dl, dh, n, *tail]
        if -32768 <= dl < 32768 and -32768 <= dh < 32768:
            return M16 | k << 4 | flag, [a, dl, dh, n, *tail]
    if -2**31 <= a < 2**31 and -2**31 <= dl < 2**31 and -2**31 <= dh < 2**31 and 0 <= n < 2**32:  # type: ignore[operator]
        return M32 | k << 4 | flag, [a, dl, dh, n, *tail]
    off = OFFSETS.get(q, 0) * _P[k]
    return M64 | k << 4 | flag, [a, mn - off, mx - off, n, *tail]


_pack_cache: dict[bytes, struct.Struct] = {}


def _struct(heads: bytes) -> struct.Struct:
    """The struct of the fields of quantities with `heads` (the shape without its mask)."""
    s = _pack_cache.get(heads)
    if s is None:
        fmt = "<" + "".join(KINDS[h & 15] + ("H" if h & 0x80 else "") for h in heads)
        s = struct.Struct(fmt)
        if len(_pack_cache) < 4096:
            _pack_cache[heads] = s
    return s


def encode(readings: Iterable[tuple[str, Fields, tuple[str, ...] | str, str | None]]) -> tuple[bytes, bytes]:
    """(shape, vals) of a record's readings: (quantity, (avg, min, max, n), flags, unit) each, unit
    None when it is the one the record's boot gives it (`unit_of`); flags a tuple, or text as stored."""
    mask = 0
    heads: list[tuple[int, int, list[Any]]] = []
    extra: list[list[Any]] = []
    for q, v, flags, unit in readings:
        code = _CODE.get(q)
        if isinstance(flags, str):
            flags = tuple(flags.split(",")) if flags else ()
        bits = _flag_bits(flags) if flags else None
        one = None
        if code is not None and unit is None and (bits is not None or not flags) and not mask >> code & 1:
            one = _one(q, v, bits)
        if one is None:
            extra.append([q, *v, unit, ",".join(flags)])
            continue
        mask |= 1 << code  # type: ignore[operator]
        heads.append((code, one[0], one[1]))  # type: ignore[arg-type]
    heads.sort(key=lambda h: h[0])
    hb = bytes(h[1] for h in heads)
    vals = _struct(hb).pack(*[x for h in heads for x in h[2]])
    if extra:
        mask |= _EXTRA_BIT
        vals += json.dumps(extra, separators=(",", ":")).encode()
    return _MASK.pack(mask) + hb, vals


_MASK = struct.Struct("<H")


def encode_record(values: Mapping[str, Any], flags: Mapping[str, tuple[str, ...]]) -> tuple[bytes, bytes, int]:
    """(shape, vals) of a record as ingest has it (payload.Record's values and flags: a quantity with
    flags but no value is stored as no value with its flags) and how many readings it holds.

    Ingest's path, tens of thousands of records a second: a record as the firmware sends it (its
    quantities in `CODES` order, each at the decimals `_TRY` names, in the narrow kinds) is encoded
    inline; anything else by `encode`."""
    fast = encode_fast(values, flags)
    if fast is not None:
        return fast[0], fast[1], len(values)
    items: list[tuple[str, Fields, tuple[str, ...] | str, str | None]] = []
    for q, v in values.items():
        items.append((q, v or _NONE, flags.get(q, ()), None))
    for q, fl in flags.items():
        if q not in values:
            items.append((q, _NONE, fl, None))
    return (*encode(items), len(items))


_FAST = {q: (i, tuple((_P[k], OFFSETS.get(q, 0) * _P[k], k << 4) for k in _TRY[q])) for i, q in enumerate(CODES)}


def encode_fast(values: Mapping[str, Any], flags: Mapping[str, tuple[str, ...]]) -> tuple[bytes, bytes] | None:
    """`encode_record`'s inline path alone: (shape, vals), or None for a record it does not take."""
    heads = bytearray()
    fields: list[int] = []
    mask, last = 0, -1
    try:
        for q, v in values.items():
            t = _FAST.get(q)
            if t is None or t[0] <= last:
                return None
            last = t[0]
            if v is None:
                head = NULL
            else:
                avg, lo, hi, n = v
                for p, offp, kbits in t[1]:
                    a = round(avg * p)
                    if a / p != avg or (not a and math.copysign(1.0, avg) < 0):
                        continue
                    if n is None:
                        a -= offp
                        if not -32768 <= a < 32768:
                            return None
                        head = S16 | kbits
                        fields.append(a)
                        break
                    mn, mx = round(lo * p), round(hi * p)
                    if mn / p != lo or mx / p != hi or (not mn and math.copysign(1.0, lo) < 0) \
                            or (not mx and math.copysign(1.0, hi) < 0):
                        continue
                    mn, mx, a = mn - a, mx - a, a - offp
                    if not (-32768 <= a < 32768 and 0 <= n < 256 and -32768 <= mn < 32768 and -32768 <= mx < 32768):
                        return None
                    head = (M8 if -128 <= mn < 128 and -128 <= mx < 128 else M16) | kbits
                    fields += (a, mn, mx, n)
                    break
                else:
                    return None
            if flags:
                fl = flags.get(q)
                if fl:
                    bits = _flag_bits(fl)
                    if bits is None:
                        return None
                    head |= 0x80
                    fields.append(bits)
            heads.append(head)
            mask |= 1 << last
    except (OverflowError, ValueError, TypeError):
        return None
    if flags and not flags.keys() <= values.keys():
        return None
    hb = bytes(heads)
    return _MASK.pack(mask) + hb, _struct(hb).pack(*fields)


_NONE: Fields = (None, None, None, None)


class _Plan:
    """How to read the fields of records of one shape."""

    __slots__ = ("struct", "items", "extra")

    def __init__(self, shape: bytes) -> None:
        mask, heads = _MASK.unpack_from(shape)[0], shape[2:]
        self.struct = _struct(heads)
        self.extra = bool(mask & _EXTRA_BIT)
        codes = [i for i in range(15) if mask >> i & 1]
        items = []
        at = 0
        for code, h in zip(codes, heads):
            kind, k, flagged = h & 15, h >> 4 & 7, bool(h & 0x80)
            width = len(KINDS[kind])
            q = CODES[code]
            items.append((q, kind, _P[k], OFFSETS.get(q, 0) * _P[k], at, at + width if flagged else -1))
            at += width + flagged
        self.items = tuple(items)


_plans: dict[bytes, _Plan] = {}


def decode(shape: bytes, vals: bytes, units: Mapping[str, str]) -> list[Decoded]:
    """The readings of a record, in `CODES` order, then `extra`'s; a reading's unit is
    `unit_of(units, q)` unless `extra` says another."""
    plan = _plans.get(shape)
    if plan is None:
        plan = _Plan(shape)
        if len(_plans) < 4096:
            _plans[shape] = plan
    s = plan.struct
    f = s.unpack_from(vals)
    out: list[Decoded] = []
    for q, kind, p, off, at, fl in plan.items:
        unit = units.get(q) or _DEFAULT_UNITS.get(q, "")
        flags = _FLAG_TEXT[f[fl]] if fl >= 0 else ""
        if kind == M8 or kind == M16 or kind == M32:
            m = f[at] + off
            out.append((q, m / p, (m + f[at + 1]) / p, (m + f[at + 2]) / p, f[at + 3], unit, flags))
        elif kind == S16 or kind == S32 or kind == S64:
            out.append((q, (f[at] + off) / p, None, None, None, unit, flags))
        elif kind == NULL:
            out.append((q, None, None, None, None, unit, flags))
        elif kind == M64:
            out.append((q, (f[at] + off) / p, (f[at + 1] + off) / p, (f[at + 2] + off) / p, f[at + 3], unit, flags))
        elif kind == SF:
            out.append((q, f[at], None, None, None, unit, flags))
        else:  # MF
            out.append((q, f[at], f[at + 1], f[at + 2], f[at + 3], unit, flags))
    if plan.extra:
        for q, avg, lo, hi, n, unit, flags in json.loads(vals[s.size:]):
            out.append((q, avg, lo, hi, n, unit if unit is not None else unit_of(units, q), flags))
    return out



# -- ingest's quick path: a record as payload v1's quick path decodes it ----------------------------
# `encode_decoded` gives what `encode_record` gives, from a record's values as msgspec decoded them
# (payload.py, `_plainly_valid_batch`), without the Values and the dict built only to be encoded:
# the same M = round(x * 10**k) at the first k of `_TRY` that gives each of a value's numbers back
# exactly, the same checks, the same bytes (tests/gateway/test_values_decoded.py compares them over
# the benchmark's stream and odd values). A node sends the same few thousand numbers again and
# again, so a number's M at its quantity's last k is kept (`_MEMO_MAX` numbers per `_TRY` entry,
# a few hundred KB each), which halves the cost.

#: numbers whose M is kept, per `_TRY` entry
_MEMO_MAX = 8192
_memos: dict[tuple[int, ...], dict[float, int]] = {}


def _m(memo: dict[float, int], x: float, p: int) -> int | None:
    """x's M at scale p (None when M / p is not x), kept in `memo` (a zero never is: -0.0 == 0.0
    as a key, but -0.0 has no M)."""
    m = _fixed(x, p)
    if x and m is not None:
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[x] = m
    return m


# Per quantity of `CODES`, in order: its name, mask bit, memo of Ms at its last k, that k's scale,
# d = 10**(last k - first k), and (offset, head bits) at the first k and at the last. A number
# whose M at the last k is a multiple of d has M // d at the first one (and none when it has
# none at the last: `_TRY`'s ks are ascending, and a decimal exact at k is exact at any larger k).
_QUICK = tuple(
    (q, 1 << i, _memos.setdefault(_TRY[q], {}), _P[_TRY[q][-1]], _P[_TRY[q][-1] - _TRY[q][0]],
     OFFSETS.get(q, 0) * _P[_TRY[q][0]], _TRY[q][0] << 4, OFFSETS.get(q, 0) * _P[_TRY[q][-1]], _TRY[q][-1] << 4)
    for i, q in enumerate(CODES))
assert all(len(t) <= 2 and list(t) == sorted(t) for t in _TRY.values())  # a first k and a last


def encode_decoded(given: Sequence[Any], flags: Mapping[str, Any] | None,
                   fields_of: Callable[[Any], tuple[Any, ...]]) -> tuple[bytes, bytes, int] | None:
    """`encode_record` of a record's values as payload's quick path decodes them, one per quantity
    of `CODES` in its order: UNSET (not in the record), None (null), a number (int or float: a
    scalar), or a summary whose `fields_of(x)` is (avg, min, max, n); `flags`: quantity -> flag
    names, or None. None when `encode_fast` would not take the record (the caller then encodes its
    Values with `encode_record`), and for a summary whose min is above its max.

    The records of a node are alike (the same quantities, each a summary, a number or null), so
    the work is done by a function made for records of that layout (`_make`), found by the types
    of the record's values."""
    fn = _by_types.get(tuple(map(type, given)))
    if fn is None:
        fn = _for_types(given)
        if fn is None:
            return None
    try:
        return fn(given, flags, fields_of)  # type: ignore[no-any-return]
    except (OverflowError, ValueError, TypeError, struct.error):  # as `encode_fast`: the caller's way
        return None


def _for_types(given: Sequence[Any]) -> Callable[..., Any] | None:
    """The made function for records whose values have the types of `given`'s."""
    if not _SAME_ORDER or len(given) != len(CODES):
        return None
    layout = "".join(_ABSENT if x is UNSET else _NULL if x is None else
                     _NUMBER if type(x) is float or type(x) is int else _SUMMARY for x in given)
    fn = _made.get(layout)
    if fn is None:
        if len(_made) >= 256:
            _made.clear()
        fn = _made[layout] = _make(layout)
    if len(_by_types) >= 1024:
        _by_types.clear()
    _by_types[tuple(map(type, given))] = fn
    return fn


#: a quantity's slot in a record's layout: absent, null, a number, a summary
_ABSENT, _NULL, _NUMBER, _SUMMARY = "-", "Z", "N", "S"
#: the payload's quantities are `CODES`, in that order (else `encode_decoded` takes nothing)
_SAME_ORDER = CODES == tuple(QUANTITIES)
_made: dict[str, Callable[..., Any]] = {}
#: the made function by the types of a record's values (they say its layout)
_by_types: dict[tuple[type, ...], Callable[..., Any]] = {}


def _make(layout: str) -> Callable[..., Any]:
    """`encode_decoded` for records of `layout` (a slot per quantity of `CODES`), its checks and
    constants written out, a slot's fields in local variables: a third of the work of a loop
    over the quantities. Only for records of that layout."""
    env: dict[str, Any] = {"_m": _m, "_struct": _struct, "_with_flags": _with_flags}
    xs = ", ".join(f"x{j}" for j in range(len(layout)))
    body: list[str] = []
    heads: list[str] = []
    fields: list[str] = []
    present = [j for j, c in enumerate(layout) if c != _ABSENT]
    for j, c in enumerate(layout):
        q, _, memo, p, d, off1, kb1, off2, kb2 = _QUICK[j]
        env[f"g{j}"], env[f"memo{j}"] = memo.get, memo
        x = f"x{j}"
        if c == _ABSENT:
            continue
        if c == _NULL:
            heads.append(str(NULL))
        elif c == _NUMBER:
            body += [f"a{j} = g{j}({x})",
                     f"if a{j} is None:",
                     f"    a{j} = _m(memo{j}, {x}, {p})",
                     f"    if a{j} is None: return None"]
            last = f"a{j} -= {off2}; " if off2 else ""
            if d != 1:
                body += [f"if a{j} % {d}: {last}h{j} = {S16 | kb2}",
                         f"else: a{j} = a{j} // {d}{f' - {off1}' if off1 else ''}; h{j} = {S16 | kb1}"]
            else:
                body += [f"{last}h{j} = {S16 | kb2}"]
            body.append(f"if not -32768 <= a{j} < 32768: return None")
            heads.append(f"h{j}")
            fields.append(f"a{j}")
        else:
            a, lo, hi, n = f"a{j}", f"l{j}", f"h{j}", f"n{j}"
            body += [f"v, u, w, {n} = fields_of({x})",
                     f"{a}, {lo}, {hi} = g{j}(v), g{j}(u), g{j}(w)",
                     f"if {a} is None or {lo} is None or {hi} is None:",
                     f"    {a}, {lo}, {hi} = _m(memo{j}, v, {p}), _m(memo{j}, u, {p}), _m(memo{j}, w, {p})",
                     f"    if {a} is None or {lo} is None or {hi} is None: return None",
                     f"if {lo} > {hi}: return None  # min above max: not plainly valid, the caller says so"]
            last = f"{lo} -= {a}; {hi} -= {a}; " + (f"{a} -= {off2}; " if off2 else "") + f"k{j} = {kb2}"
            if d != 1:
                body += [f"if {a} % {d} or {lo} % {d} or {hi} % {d}:",
                         f"    {last}",
                         "else:",
                         f"    {lo} = ({lo} - {a}) // {d}; {hi} = ({hi} - {a}) // {d}; "
                         f"{a} = {a} // {d}{f' - {off1}' if off1 else ''}; k{j} = {kb1}"]
            else:
                body.append(last)
            body += [f"if not (-32768 <= {a} < 32768 and 0 <= {n} < 256 and -32768 <= {lo} and {hi} < 32768):",
                     "    return None",
                     f"k{j} |= {M8} if -128 <= {lo} and {hi} < 128 else {M16}"]
            heads.append(f"k{j}")
            fields += [a, lo, hi, n]
    where, end = {}, 0
    for i, j in enumerate(present):
        end += {_NULL: 0, _NUMBER: 1, _SUMMARY: 4}[layout[j]]
        where[CODES[j]] = (i, end)
    env["WHERE"] = where
    env["MASK"] = _MASK.pack(sum(1 << j for j in present))
    src = [f"def made(given, flags, fields_of):",
           f"    {xs}, = given",
           *(f"    {line}" for line in body),
           f"    hb = bytes(({''.join(h + ', ' for h in heads)}))",
           f"    f = ({''.join(x + ', ' for x in fields)})",
           f"    if flags: return _with_flags(WHERE, hb, f, flags, MASK)",
           f"    return MASK + hb, _struct(hb).pack(*f), {len(present)}"]
    exec("\n".join(src), env)
    return env["made"]  # type: ignore[no-any-return]


def _with_flags(where: Mapping[str, tuple[int, int]], hb: bytes, f: tuple[int, ...], flags: Mapping[str, Any],
                mask: bytes) -> tuple[bytes, bytes, int] | None:
    """A record's encoding with its flags: each flagged quantity's head bit, the flags' bits after
    its fields (`where`: a quantity's head and the end of its fields), as `encode_fast` writes
    them; None when it would not take them."""
    marks = []
    for q, fl in flags.items():
        at = where.get(q)
        if at is None:  # flags of a quantity the record does not have
            return None
        if fl:
            bits = _flag_bits(tuple(fl))
            if bits is None:
                return None
            marks.append((at, bits))
    heads = bytearray(hb)
    fields = list(f)
    for (i, end), bits in sorted(marks, reverse=True):  # from the last, so that each end still holds
        heads[i] |= 0x80
        fields.insert(end, bits)
    hb = bytes(heads)
    return mask + hb, _struct(hb).pack(*fields), len(where)


def readings_of(shape: bytes, vals: bytes) -> dict[str, Fields | None]:
    """The values `encode_decoded` encoded, back: quantity -> (avg, min, max, n), None for null
    (exactly the floats and counts given: see the module's docstring)."""
    return {q: None if avg is None and n is None else (avg, lo, hi, n)
            for q, avg, lo, hi, n, _, _ in decode(shape, vals, _DEFAULT_UNITS)}
