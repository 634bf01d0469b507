"""What the store's readers return: `Reading`, the one type of a reading for every reader (the CLI,
the status page, export, the forwarders), and the rows of the other tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Container, Iterable, Iterator, NamedTuple

from ..payload import QUANTITIES, SCALAR
from .keys import Keys
from .values import decode


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


#: A `Reading` from a tuple in its order, without a Python call in between (tuple.__new__).
make_reading: Callable[[tuple], Reading] = partial(tuple.__new__, Reading)  # type: ignore[arg-type]

#: The columns of `recs AS r` that `expand` takes, in its order.
RECORD_COLUMNS = "r.id, r.node, r.start, r.dur, r.env, r.boot, r.seq, r.shape, r.vals"


def expand(keys: Keys, rows: Iterable[tuple], quantities: Container[str] | None = None) -> Iterator[Reading]:
    """The `Reading`s of records (rows of `RECORD_COLUMNS`), a record's together in the contract's
    order (values.py), of `quantities` only when given."""
    name, boot_of, shape_of = keys.node_name, keys.boot, keys.shape
    for rid, nid, start, dur, env, boot, seq, shape, vals in rows:
        b = boot_of(env)
        head, tail = (rid, name(nid), start, dur, b.board, b.fw), (b.sensors, boot, seq)
        for d in decode(shape_of(shape), vals, b.units):
            if quantities is None or d[0] in quantities:
                yield make_reading(head + d + tail)


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
    mode: str | None = None  # normal, trial or safe, from the last status that said it
    cfg: int | None = None  # the configuration version it runs (status `cfg`, config events)
    via: int | None = None  # its broker list's index of the broker it is on (status `via`; 0: its own)
    held: int | None = None  # records its spool holds not yet safe (status `held`)


@dataclass(frozen=True)
class EventRow:
    """One event a node reported (<prefix>/<node>/event), as checked and stored."""

    id: int  # grows with every event stored: a reader's cursor (`Store.events(since_id=...)`)
    node: str
    kind: str  # config, ota, crash, safe_mode, selftest
    state: str | None  # the event's `state` (ota: accepted, refused, installed, proved, rolled_back)
    at: float  # when the gateway received it
    body: dict[str, Any]  # the event as the node sent it


@dataclass(frozen=True)
class NodeConfigRow:
    """The configuration a node is sent (`Store.node_configs`)."""

    node: str
    version: int  # 0 while none could be made
    digest: str  # HMAC of the configuration with the node's key: tells a change, holds no secret
    shown: dict[str, Any]  # the configuration without its passwords
    made_at: float
    published_at: float | None  # when the broker took it; None until it did
    problem: str | None  # why it cannot be made or sent now


@dataclass(frozen=True)
class CommandRow:
    """A command asked of a node (`Store.add_command`)."""

    id: int  # the command's `id`; the node's answer (an event) carries it
    node: str
    cmd: str
    at: float
    sent_at: float | None  # when the broker took it; None until then
    problem: str | None  # why it cannot be sent (no node key)


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


@dataclass(frozen=True)
class RolloutRow:
    """A staged rollout (`meetkit-gateway fleet update`, gateway/rollouts.py)."""

    id: int
    release: str  # the release's version
    force: bool  # a downgrade allowed
    canary: int  # nodes in stage 0
    wave: int  # nodes in each later stage
    state: str  # running, done, halted, stopped
    stage: int  # the stage under way: 0 the canaries, 1 the first wave...
    reason: str | None  # why it halted or stopped
    created_at: float
    updated_at: float
    events_seen: int  # events.id of the last event the manager took


@dataclass(frozen=True)
class RolloutNodeRow:
    """A node of a rollout."""

    rollout: int
    node: str
    stage: int
    state: str  # waiting, offered, accepted, installed, proved, done, failed, skipped
    reason: str | None
    offers: int
    offered_at: float | None  # the last offer
    accepted_at: float | None
    updated_at: float
    first_offered_at: float | None = None  # the first offer: [ota] answer_within_s counts from it
