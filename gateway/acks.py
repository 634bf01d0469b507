"""The application-level acknowledgement a node gets once its batches are committed (docs/payload.md).

    <prefix>/<node>/ack    QoS 1, not retained
    {"v":1,"db":"3f9c0a1b2c3d4e5f","boot":3,"seq":[[16,17],[20,20]]}

`seq` lists, as sorted inclusive ranges, the seqs that the database now holds of every batch of
that node and boot committed together (`merge`: one message, not one per batch): stored now,
stored before (duplicates), or kept in the dead-letter table: a record refused on its own, or the
whole batch when it was rejected but its boot and seqs could still be read (`readable`). Only
values the contract allows are acknowledged: a boot or seq beyond `BOOT_MAX` / `SEQ_MAX` never is.
`db` is the database's id: a node that sees another id than before sends again everything its
spool still holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Iterable

#: a node's safe pair: (boot, seq), or None for `[]` (nothing of it safe yet)
SafePair = tuple[int, int] | None
#: `safe` left out: a gateway on its own (no [region])
NO_REGION = object()

from .payload import BOOT_MAX, MAX_MESSAGE_BYTES, SEQ_MAX, Batch

VERSION = 1
#: the most ranges one acknowledgement holds: the node reads each whole into its heap and keeps up
#: to 16 until its loop takes them (firmware/lib/outbox.py, _ACKS_MAX). 32 ranges of the largest
#: seqs, the largest boot and a safe pair make 856 bytes, under the 1 KB docs/payload.md promises.
MAX_RANGES = 32


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
    #: payload v2: the gateway has no envelope for this boot; the node sends it with its next batch
    env: bool = False
    #: to a node that sends payload v2: no `v`, a range of one seq as that seq
    compact: bool = False

    @classmethod
    def of(cls, batch: Batch) -> "Ack":
        return cls(batch.node, batch.boot, batch.held_seqs(), compact=batch.version == 2)

    def payload(self, db_id: str, safe: SafePair | object = NO_REGION) -> bytes:
        doc: dict[str, Any] = {"db": db_id, "boot": self.boot,
                               "seq": [(a if a == b and self.compact else [a, b]) for a, b in ranges(self.seqs)]}
        if not self.compact:
            doc = {"v": VERSION, **doc}
        if safe is not NO_REGION:
            doc["safe"] = [] if safe is None else list(safe)  # type: ignore[arg-type]
        if self.env:
            doc["env"] = 1
        return json.dumps(doc, separators=(",", ":")).encode()


def merge(acks: Iterable[Ack], most: int = MAX_RANGES) -> list[Ack]:
    """The acknowledgements of one commit as the messages to send: those of one node, boot and form
    (`compact`) become one, the union of their seqs, where the first of them stood (each node's
    first, so the order between nodes stays); one of more than `most` ranges is split. An `env` ack
    stays a message of its own (the node acts on it for the whole boot)."""
    slots: list[Ack | tuple[str, int, bool]] = []
    seqs: dict[tuple[str, int, bool], set[int]] = {}
    for ack in acks:
        if ack.env:
            slots.append(ack)
            continue
        key = (ack.node, ack.boot, ack.compact)
        if key not in seqs:
            seqs[key] = set()
            slots.append(key)
        seqs[key].update(ack.seqs)
    out: list[Ack] = []
    for slot in slots:
        if isinstance(slot, Ack):
            out.append(slot)
        else:
            node, boot, compact = slot
            out += split(Ack(node, boot, tuple(sorted(seqs[slot])), compact=compact), most)
    return out


def split(ack: Ack, most: int = MAX_RANGES) -> list[Ack]:
    """`ack` as acknowledgements of at most `most` ranges each, lowest seqs first (the node takes
    each on its own: a record is acknowledged by whichever of them names its seq)."""
    chunks: list[list[int]] = []
    runs = 0
    prev: int | None = None
    for s in sorted(set(ack.seqs)):
        if prev is None or s != prev + 1:  # a range begins
            if runs % most == 0:
                chunks.append([])
            runs += 1
        chunks[-1].append(s)
        prev = s
    return [replace(ack, seqs=tuple(c)) for c in chunks] or [ack]


def safe_payload(db_id: str, safe: SafePair) -> bytes:
    """A standalone safe acknowledgement: the pair moved without a batch to acknowledge."""
    doc = {"v": VERSION, "db": db_id, "safe": [] if safe is None else list(safe)}
    return json.dumps(doc, separators=(",", ":")).encode()


def _count(v: Any, high: int) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= high else None


def readable(payload: bytes, node: str) -> Ack | None:
    """The boot and seqs of a REJECTED batch from `node`'s up topic, if they can still be read: a
    JSON object with an integer `boot` and `recs` of objects with integer `seq`s, within the
    contract. None otherwise (then the node is not told, and sends the batch again until a gateway
    can read it). A message over the contract's size is not kept whole, so never acknowledged."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict) or _count(doc.get("boot"), BOOT_MAX) is None or not isinstance(doc.get("recs"), list):
        return None
    seqs = [_count(r.get("seq"), SEQ_MAX) for r in doc["recs"] if isinstance(r, dict)]
    held = tuple(s for s in seqs if s is not None)
    return Ack(node, doc["boot"], held) if held else None
