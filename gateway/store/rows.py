"""What the store's readers return: `Reading`, the one type of a reading for every reader (the CLI,
the status page, export, the forwarders), and the rows of the other tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple

from ..payload import QUANTITIES, SCALAR


class Reading(NamedTuple):
    """One quantity of one record, with what a reader needs of its record. A named tuple, made
    straight from the cursor's rows (`make_reading`): export and a forwarder's drain read millions,
    and a tuple is made four times as fast as a dataclass."""

    record_id: int
    node: str
    # Interval start, Unix seconds. Every reader but one reads timed records only: `Store.latest`
    # gives a node's newest record also before its start is known, and then its readings' start is
    # None, as `Latest.start` says (typed int for the hot paths' sake: the forwarders add to it).
    start: int
    dur: int
    board: str
    fw: str
    quantity: str
    avg: float | None
    min: float | None
    max: float | None
    n: int | None
    unit: str
    flags: str  # comma-separated as stored, '' when none; `flag_names` has them one by one
    sensors: str = "{}"  # JSON object of the record: sensor model per role (pm, climate, mic)
    boot: int = 0  # (node, boot, seq) identifies the record for ever: a consumer's de-duplication key
    seq: int = 0

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(f for f in self.flags.split(",") if f)

    @property
    def scalar(self) -> bool:
        """The node sent a plain number (or null for a quantity that is only ever one): `min`,
        `max` and `n` do not apply, rather than being missing."""
        if self.n is not None:
            return False
        if self.avg is not None:
            return True
        q = QUANTITIES.get(self.quantity)
        return q is not None and q.form == SCALAR


#: A `Reading` from a row of `READING_COLUMNS`, without a Python call in between (tuple.__new__).
make_reading: Callable[[tuple], Reading] = partial(tuple.__new__, Reading)  # type: ignore[arg-type]

#: The columns of a `Reading`, in its order, over `records AS r JOIN readings AS g`.
READING_COLUMNS = ("r.id, r.node, r.start, r.dur, r.board, r.fw, g.quantity, g.avg, g.min, g.max, g.n, g.unit,"
                   " g.flags, r.sensors, r.boot, r.seq")


@dataclass(frozen=True)
class Latest:
    """The newest record of a node (highest boot, then seq) with its readings by quantity."""

    node: str
    boot: int
    seq: int
    start: int | None
    dur: int
    received_at: float
    readings: dict[str, Reading]


@dataclass(frozen=True)
class Node:
    node: str
    online: bool | None
    boot: int | None
    fw: str | None
    up: int | None
    rssi: int | None
    status_at: float | None
    last_seen: float | None
    dropped: int | None = None


@dataclass(frozen=True)
class AlarmRow:
    id: int
    at: float
    code: str
    active: bool
    reason: str


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: float
    topic: str
    payload: bytes
    code: str
    reason: str
    node: str | None = None
    size: int = 0


@dataclass(frozen=True)
class Counts:
    records: int
    readings: int
    dead_letters: int
    nodes: int
    duplicates: int
    rejected: dict[str, int] = field(default_factory=dict)  # code -> messages


@dataclass(frozen=True)
class Pruned:
    """What `Store.drop_records` deleted."""

    records: int
    unforwarded: int  # of them, records above the lowest forward cursor
    first_id: int | None  # the lowest id deleted; None when nothing was


@dataclass(frozen=True)
class Added:
    """What `Store.add_batch` did with a batch's records."""

    stored: int
    duplicates: int


@dataclass(frozen=True)
class TargetState:
    """A forward target as the store has it (`Store.target_state`), read in one snapshot."""

    last_id: int  # its cursor; 0 before its first run
    last_success: float | None
    last_error: str | None
    queue_rows: int  # readings after the cursor
    oldest_received_at: float | None  # of the first record after the cursor; None: none waits
    counters: dict[str, int]  # forward.<target>.* (and those of targets named "<target>.<x>")


_ORDER = {q: i for i, q in enumerate(QUANTITIES)}


def order(quantity: str) -> int:
    """A quantity's place in the contract's order (an unknown one last)."""
    return _ORDER.get(quantity, len(_ORDER))
