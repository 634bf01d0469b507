"""Dead letters back through the checks, after a fix: `meetkit-gateway dead-letters replay`.

A dead letter holds a message the gateway rejected whole, or the records of one batch it refused
(their batch's envelope with them, as received; payload.py's `Batch.dead_letter`). Replaying it
parses it again with the checks of THIS gateway (a widened range, a newer payload contract) and
the gateway's clock of now (a record refused as ahead of the clock may be plausible by now):

- records the store does not hold are stored, as if they had arrived when the dead letter did;
- values the store holds as refused (null, flag `refused`) or lacks are filled in; values it holds
  are left alone, so a replay never stores anything twice, and replaying again changes nothing;
- a status message is taken as a replayed one (it does not make its node "seen"); an event is
  stored as if it had arrived when the dead letter did;
- what is refused still stays a dead letter, with the reason of now; what went through is deleted
  and counted as `dead_letters_replayed`.

Each dead letter is one transaction: the gateway may run meanwhile (SQLite's lock and busy
timeout order the two writers). Nothing is acknowledged to a node: it was acknowledged, or not,
when the message came.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import payload
from .payload import Rejected
from .store import DeadLetter, Store
from .topics import Topics


@dataclass
class Outcome:
    """What a replay did, in all."""

    replayed: int = 0  # dead letters that went through whole, deleted
    kept: int = 0  # dead letters with something still refused, kept with the reason of now
    records: int = 0  # records stored
    duplicates: int = 0  # records the store held already
    values: int = 0  # values filled in on records stored before
    statuses: int = 0  # status messages taken
    events: int = 0  # events taken
    still: list[tuple[int, str]] = field(default_factory=list)  # (dead letter, why it is still refused)


def replay(store: Store, topics: Topics, letters: list[DeadLetter], now: float | None = None) -> Outcome:
    """Replay `letters` (of `store`) one by one; see the module's docstring."""
    out = Outcome()
    for dl in letters:
        with store.transaction():
            _one(store, topics, dl, time.time() if now is None else now, out)
    return out


def _one(store: Store, topics: Topics, dl: DeadLetter, now: float, out: Outcome) -> None:
    topic = topics.parse(dl.topic)
    try:
        if topic is None:
            raise Rejected(payload.BAD_VALUE, f"topic {dl.topic!r} is not <prefix>/<node>/up, /status or /event")
        if topic.kind == "event":
            store.add_event(payload.parse_event(dl.payload, topic.node), dl.received_at)
            out.events += 1
            _done(store, dl, out)
            return
        if topic.kind == "status":
            store.set_status(payload.parse_status(dl.payload, topic.node), dl.received_at, live=False)
            out.statuses += 1
            _done(store, dl, out)
            return
        batch = payload.parse_batch(dl.payload, topic.node, now)
    except Rejected as e:
        out.kept += 1
        out.still.append((dl.id, e.reason))
        store.update_dead_letter(dl.id, dl.payload, e.code, e.reason)
        return
    added = store.add_batch(batch, dl.received_at)
    out.records += added.stored
    out.duplicates += added.duplicates
    out.values += store.restore_values(batch)
    letter = batch.dead_letter()
    if letter is None:
        _done(store, dl, out)
        return
    body, code, reason = letter
    out.kept += 1
    out.still.append((dl.id, reason))
    store.update_dead_letter(dl.id, body, code, reason)


def _done(store: Store, dl: DeadLetter, out: Outcome) -> None:
    store.delete_dead_letter(dl.id)
    store.bump("dead_letters_replayed")
    out.replayed += 1
