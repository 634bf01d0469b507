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
from typing import NamedTuple

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
