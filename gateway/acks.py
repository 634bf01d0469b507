"""The application-level acknowledgement a node gets once its batch is committed (docs/payload.md).

    <prefix>/<node>/ack    QoS 1, not retained
    {"v":1,"db":"3f9c0a1b2c3d4e5f","boot":3,"seq":[[16,17],[20,20]]}

`seq` lists, as sorted inclusive ranges, the seqs of that one batch that the database now holds:
stored now, stored before (duplicates), or kept in the dead-letter table with the batch when it was
rejected but its boot and seqs could still be read (`readable`). `db` is the database's id: a node
that sees another id than before sends again everything its spool still holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from .payload import Batch

VERSION = 1

# A dead letter is kept whole up to this many bytes (store.DEAD_LETTER_MAX); a longer one is cut,
# so its records are not held and must not be acknowledged.
_READABLE_MAX = 64 * 1024


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges covering exactly `seqs`: [3, 1, 2, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


@dataclass(frozen=True)
class Ack:
    """What one batch message left in the database: the seqs of `boot` it holds."""

    node: str
    boot: int
    seqs: tuple[int, ...]

    @classmethod
    def of(cls, batch: Batch) -> "Ack":
        return cls(batch.node, batch.boot, tuple(r.seq for r in batch.records))

    def payload(self, db_id: str) -> bytes:
        doc = {"v": VERSION, "db": db_id, "boot": self.boot, "seq": [list(r) for r in ranges(self.seqs)]}
        return json.dumps(doc, separators=(",", ":")).encode()


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def readable(payload: bytes, node: str) -> Ack | None:
    """The boot and seqs of a REJECTED batch from `node`'s up topic, if they can still be read: a
    JSON object with an integer `boot` and `recs` of objects with integer `seq`s. None otherwise
    (then the node is not told, and sends the batch again until a gateway can read it)."""
    if len(payload) > _READABLE_MAX:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict) or _count(doc.get("boot")) is None or not isinstance(doc.get("recs"), list):
        return None
    seqs = [_count(r.get("seq")) for r in doc["recs"] if isinstance(r, dict)]
    held = tuple(s for s in seqs if s is not None)
    return Ack(node, doc["boot"], held) if held else None
