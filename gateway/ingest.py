"""From received messages to committed rows: a queue and the one thread that writes the store.

The MQTT side only wraps each message in an `Inbound` and calls `Writer.submit` (a queue put), so
the MQTT network thread (mqtt.py) does not wait for the disk while the gateway keeps up. The
writer thread takes everything queued, up to `max_group` messages, and handles them in ONE
transaction: while one commit is being synced, the next group builds up, so the cost of a commit is
shared by however many messages arrived meanwhile. What is held, queued or in the group being committed, is bounded in
messages and in bytes (`MAX_QUEUE_BYTES`): past either, `submit` blocks the network thread, which
stops reading, and the broker keeps the rest unacknowledged until the store takes some.

The valid batches of a group are written together, with a few statements (`ingest_group`); every
other message (a status, a rejected batch, a retained message) gets a savepoint of its own. A batch
is judged record by record (payload.py): what it refused, records or values, is kept as ONE dead
letter beside the records stored, and the seqs of refused records are acknowledged with the rest
(the dead letter holds them). A retained message the broker hands over again at a new subscription
is taken once (`Store.retained_seen`). A message that fails, even
through a bug, is undone alone and dead-lettered, the rest of its group is committed: should the
joint write fail, it is undone and the group's batches are taken one by one, each in its savepoint. After each commit the writer calls
`on_committed(done)` with each message and the `Ack` its node is owed: the place to acknowledge
messages only once they are on disk.

When the store itself cannot commit for want of space or through an I/O error, the group is rolled
back and REFUSED: `on_refused(group)` is called (the service then lets the broker go on, while the
nodes keep those records and send them again), the refusals are counted and an alarm is raised.
The next group simply tries again, so the gateway takes data again as soon as space is back. Other
store errors (a lock held too long) are retried with backoff.

Between groups the writer keeps the store within its bounds (`bounds`, retention.py): one small
pruning transaction per turn of its loop, so a group that arrives meanwhile waits for one slice
at most; while there is more to prune the loop does not wait for messages.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from dataclasses import field
from typing import Callable, NamedTuple, Sequence

from . import payload
from .acks import Ack, readable
from .alarms import DISK_ERROR, DISK_FULL, Alarms
from .inbox import Inbox
from .payload import Rejected
from .retention import Bounds, Pruner
from .store import Store
from .timefmt import iso
from .topics import Topic, Topics
from .visitors import UNKNOWN_VISITOR

log = logging.getLogger(__name__)

#: in a region, whether a node is an unknown visitor (gateway/visitors.py, `Visitors.unknown`)
Unknown = Callable[[str], bool]

INTERNAL = "internal"  # rejection code for a message the gateway failed on


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message as received. A message over the contract's size limit is not held whole
    (mqtt.py): `payload` is its first bytes, `size` the size it had (-1: len(payload))."""

    topic: str
    payload: bytes
    received_at: float
    retained: bool = False
    mid: int = 0
    qos: int = 0
    conn: int = 0  # which connection to the broker it came over (an MQTT ack goes back on it only)
    size: int = -1  # the message's size; more than len(payload) when only its first bytes are kept

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.payload))

    @property
    def truncated(self) -> bool:
        """Only the first bytes of the payload were kept."""
        return self.size > len(self.payload)

    @property
    def held_bytes(self) -> int:
        """About what the message takes in memory while the gateway holds it (object headers,
        the topic and the payload)."""
        return len(self.payload) + len(self.topic) + INBOUND_OVERHEAD


#: Bytes an `Inbound` takes besides its payload and topic (tracemalloc: about 240).
INBOUND_OVERHEAD = 256


class Done(NamedTuple):
    """A committed message and the acknowledgement its node is owed (None: none, e.g. a status)."""

    msg: Inbound
    ack: Ack | None


def _store_failed(e: Exception) -> bool:
    # The store itself failed (disk full, I/O, locked, corrupt), as opposed to a bug in a statement.
    return isinstance(e, (sqlite3.OperationalError, sqlite3.InternalError)) or type(e) is sqlite3.DatabaseError


def _dead_letter_node(topic: Topic | None) -> str | None:
    # the node a dead letter counts against (its budget); one of no valid node id counts as none
    return topic.node if topic is not None and payload.NODE_ID.fullmatch(topic.node) else None


def _ack(batch: payload.Batch) -> Ack | None:
    ack = Ack.of(batch)
    return ack if ack.seqs else None


def _keep_refused(store: Store, msg: Inbound, batch: payload.Batch) -> None:
    """What `batch` refused, as one dead letter, and the counters of refusals and range flags."""
    letter = batch.dead_letter()
    if letter is not None:
        body, code, reason = letter
        dl = store.add_dead_letter(msg.topic, body, code, reason, msg.received_at, batch.node, count=False)
        log.warning("%s: refused in boot %d (dead letter %d): %s", batch.node, batch.boot, dl, reason)
        for f in batch.refused:
            store.bump(f"refused_{'records' if f.whole else 'values'}.{f.code}", f.count)
    flagged = sum(payload.RANGE in fl for rec in batch.records for fl in rec.flags.values())
    store.bump("flagged.range", flagged)


def _count_unknown(store: Store, batch: payload.Batch, stored: int, unknown: Unknown | None) -> None:
    """In a region: the records stored of a node the visitors' table does not know, forwarded under
    this gateway's town for want of its home town (gateway/visitors.py)."""
    if unknown is not None and stored and unknown(batch.node):
        store.bump(UNKNOWN_VISITOR, stored)


def ingest(store: Store, topics: Topics, msg: Inbound, unknown: Unknown | None = None) -> Ack | None:
    """Validate one message and write what it means: records, a node status or a dead letter.
    Call inside a transaction; the caller commits. Returns what to acknowledge to the node once
    that commit is done: every seq of a batch the store now holds (stored now or before, or kept
    as a refused record); the readable seqs of a batch that was dead-lettered whole. `unknown`: in
    a region, whether a node is an unknown visitor (its records are counted)."""
    topic = topics.parse(msg.topic)
    if msg.retained:
        digest = hashlib.sha256(msg.payload).digest()
        if store.retained_seen(msg.topic, digest):
            store.bump("retained_again")
            log.debug("%s: the retained message again, taken before", msg.topic)
            return None
        store.set_retained_seen(msg.topic, digest, msg.received_at)
    try:
        with store.savepoint():
            if topic is None:
                raise Rejected(payload.BAD_VALUE, f"topic {msg.topic!r} is not <prefix>/<node>/up, /status or /event")
            if msg.truncated:  # its first bytes only (mqtt.py)
                raise Rejected(payload.OVERSIZED, f"{msg.size} bytes, the limit is {payload.MAX_MESSAGE_BYTES}")
            if topic.kind == "up":
                batch = payload.parse_batch(msg.payload, topic.node, msg.received_at, msg.size, store.envelope,
                                            encoded=True)
                if batch.envelope is not None:
                    store.add_envelope(batch.node, batch.boot, batch.envelope, msg.received_at)
                added = store.add_batch(batch, msg.received_at)
                _keep_refused(store, msg, batch)
                _count_unknown(store, batch, added.stored, unknown)
                if batch.records:
                    log.debug(
                        "%s: boot %d seq %d..%d: %d stored, %d duplicates",
                        batch.node, batch.boot, batch.records[0].seq, batch.records[-1].seq,
                        added.stored, added.duplicates,
                    )
                return _ack(batch)
            elif topic.kind == "event":
                event = payload.parse_event(msg.payload, topic.node, msg.size)
                eid = store.add_event(event, msg.received_at)
                _log_event(event, eid)
                return None
            else:
                status = payload.parse_status(msg.payload, topic.node, msg.size)
                store.set_status(status, msg.received_at, live=not msg.retained)
                log.info(
                    "%s: %s%s", status.node, "online" if status.online else "offline",
                    " (retained)" if msg.retained else "",
                )
                return None
    except payload.NoEnvelope as e:  # not kept: the node still has it, and sends it with the envelope
        store.bump("envelope_asked")
        log.info("%s: %s: asked for the envelope", msg.topic, e.reason)
        return Ack(topic.node, e.boot, (), env=True, compact=True) if topic is not None else None
    except Rejected as e:
        code, reason = e.code, e.reason
    except Exception as e:  # a bug must not lose the message: keep it with what went wrong
        if _store_failed(e):
            raise  # the whole group is refused or retried
        log.exception("failed on a message from %s", msg.topic)
        code, reason = INTERNAL, f"gateway error: {type(e).__name__}: {e}"
    dl = store.add_dead_letter(msg.topic, msg.payload, code, reason, msg.received_at, _dead_letter_node(topic),
                               size=msg.size)
    log.warning("rejected %s (dead letter %d): %s", msg.topic, dl, reason)
    return readable(msg.payload, topic.node) if topic is not None and topic.kind == "up" and not msg.truncated else None


def _log_event(event: payload.Event, eid: int) -> None:
    """One line per event; a crash report's traceback stays in the store (the page and the CLI
    show it), a refusal or a rollback is a warning."""
    b = event.body
    if event.kind == "config" and event.state == "reverted":
        what = (f"configuration version {b['version']} REVERTED by the node: {b['reason']}; it runs version "
                f"{b['back_to']} again")
    elif event.kind == "config" and event.state == "proved":
        what = f"configuration version {b['version']} proved on trial"
    elif event.kind == "config":
        what = (f"configuration refused whole: {b.get('reason')}" if event.state else
                f"configuration version {b.get('version')} taken" + (" on trial" if "trial_s" in b else "")
                + (f", refused: {', '.join(sorted(b.get('refused', {})))}" if b.get("refused") else ""))
    elif event.kind == "ota":
        what = f"update {b.get('release', '?')}: {event.state}" + (f" ({b['reason']})" if "reason" in b else "")
    elif event.kind == "cmd":
        what = f"command {b.get('id', '?')} refused: {b['reason']}"
    elif event.kind == "crash":
        what = f"crashed in boot {b['boot']} after {b['at_up']} s " + (
            f"({b['count']} in a row)" if b["count"] else "(while measuring: restarted, not counted)")
    elif event.kind == "safe_mode":
        what = f"in safe mode after {b['crashes']} crashes in a row"
    else:
        failed = sorted(k for k, (result, _) in b.get("checks", {}).items() if result != "pass")
        what = (f"self-test {b.get('id', '?')} refused: {b.get('reason')}" if event.state else
                f"self-test {b.get('id', '?')}: " + (f"failed {', '.join(failed)}" if failed else "all passed"))
    bad = event.state in ("refused", "rolled_back", "reverted") or event.kind in ("crash", "safe_mode") \
        or bool(b.get("refused"))
    log.log(logging.WARNING if bad else logging.INFO, "%s: %s (event %d)", event.node, what, eid)


#: Messages whose valid batches are written together: a few statements for all of them, and the
#: parsed batches held at once stay few (a group of 500 held whole took 10 MiB more at its peak).
JOINT_WRITE = 100


def ingest_group(store: Store, topics: Topics, group: Sequence[Inbound],
                 unknown: Unknown | None = None) -> list[Ack | None]:
    """`ingest` for each message of `group`, in one transaction the caller holds and commits; what
    to acknowledge for each, in order.

    The valid batches, nearly all messages, are written together, `JOINT_WRITE` messages' worth
    at a time (`Store.add_batches`): a few statements instead of several per message. Statuses and
    rejected messages go through `ingest` one by one. Should a joint write fail through a bug, it
    is undone and its batches go through `ingest` one by one too, so the bad one is dead-lettered
    alone."""
    acks: list[Ack | None] = []
    for start in range(0, len(group), JOINT_WRITE):
        acks += _ingest_together(store, topics, group[start:start + JOINT_WRITE], unknown)
    return acks


def _ingest_together(store: Store, topics: Topics, group: Sequence[Inbound],
                     unknown: Unknown | None) -> list[Ack | None]:
    """`ingest_group` for up to `JOINT_WRITE` messages."""
    acks: list[Ack | None] = [None] * len(group)
    valid: list[tuple[int, payload.Batch]] = []
    for i, msg in enumerate(group):
        topic = topics.parse(msg.topic)
        if topic is not None and topic.kind == "up" and not msg.retained:
            try:
                batch = payload.parse_batch(msg.payload, topic.node, msg.received_at, msg.size, store.envelope,
                                            encoded=True)
                if batch.envelope is not None:  # before the boot's next batch in this group is read
                    store.add_envelope(batch.node, batch.boot, batch.envelope, msg.received_at)
                valid.append((i, batch))
                continue
            except Exception:  # Rejected, or a bug: `ingest` parses it again and keeps the dead letter
                pass
        acks[i] = ingest(store, topics, msg, unknown)
    if not valid:
        return acks
    try:
        with store.savepoint():
            added = store.add_batches([(batch, group[i].received_at) for i, batch in valid])
            for (i, batch), a in zip(valid, added):
                _keep_refused(store, group[i], batch)
                _count_unknown(store, batch, a.stored, unknown)
    except Exception as e:
        if _store_failed(e):
            raise  # the whole group is refused or retried
        log.exception("failed on %d batches together; taking them one by one", len(valid))
        for i, _ in valid:
            acks[i] = ingest(store, topics, group[i], unknown)
        return acks
    for (i, batch), a in zip(valid, added):
        if batch.records:
            log.debug(
                "%s: boot %d seq %d..%d: %d stored, %d duplicates",
                batch.node, batch.boot, batch.records[0].seq, batch.records[-1].seq, a.stored, a.duplicates,
            )
        acks[i] = _ack(batch)
    return acks


# SQLite's primary result codes on which the writer refuses data instead of retrying.
_REFUSALS = {13: DISK_FULL, 10: DISK_ERROR, 8: DISK_ERROR}  # SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY


def refusal(e: sqlite3.Error) -> str | None:
    """The alarm code when `e` means the store cannot take data now (full disk, I/O error, a file
    that became read-only), else None."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return _REFUSALS.get(code & 0xFF)
    text = str(e)
    return DISK_FULL if "is full" in text else DISK_ERROR if "I/O error" in text else None


@dataclass
class Refusal:
    """A run of refused groups, from the first refusal to the next commit that succeeds."""

    code: str
    error: str
    since: float
    messages: int = 0
    logged_at: float = field(default_factory=time.monotonic)


_STOP = object()

#: What the messages held (queued, or in the group being committed) may take in memory: about 4000
#: node messages of 4 KB, 8 times the largest group. Past it (or past `max_queue` messages),
#: `submit` blocks: the network thread stops reading and the broker keeps the rest (docs/reliability.md).
MAX_QUEUE_BYTES = 16 * 1024 * 1024


class Writer:
    """Commits submitted messages to the store in groups, from a thread of its own."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        *,
        max_group: int = 500,
        max_queue: int = 10_000,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        on_committed: Callable[[Sequence[Done]], None] | None = None,
        on_refused: Callable[[Sequence[Inbound]], None] | None = None,
        alarms: Alarms | None = None,
        summary_every: float = 60.0,
        bounds: Bounds | None = None,
        unknown: Unknown | None = None,
    ) -> None:
        self.store = store
        self.unknown = unknown  # in a region: an unknown visitor's records are counted (visitors.py)
        self.topics = topics
        self.max_group = max_group
        self.on_committed = on_committed
        self.on_refused = on_refused
        self.alarms = alarms if alarms is not None else Alarms()
        self.summary_every = summary_every
        self.pruner = Pruner(store, bounds, self.alarms) if bounds is not None else None
        self._prune_failed_at = -summary_every
        # Bounded in messages and bytes, until committed: when the disk cannot keep up, submit()
        # blocks the network thread, which stops reading from the broker; the broker holds the rest
        # (QoS 1, unacknowledged) instead of our memory.
        self._queue: Inbox[object] = Inbox(max_queue, max_queue_bytes)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._closing = False
        self.received = 0  # messages submitted
        self.waits = 0  # times submit() waited for room
        self._wait_logged_at = -summary_every
        self.committed = 0  # messages committed
        self.groups = 0  # transactions committed
        self.refused = 0  # messages refused (the store could not commit them)
        self.refusing: Refusal | None = None  # while commits fail for want of space
        self._refused_unsaved = 0  # refusals not yet counted in the store
        #: monotonic time of the writer loop's last pass (at least once a second while it works)
        self.alive_at = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def submit(self, msg: Inbound) -> None:
        """Queue a message for the next group (any thread; blocks while the messages held take
        `max_queue` messages or `max_queue_bytes` bytes, until a commit makes room)."""
        if self._closing:
            raise RuntimeError("the writer is closed")
        self.received += 1
        if self._queue.put(msg, msg.held_bytes, timeout=0):
            return
        self.waits += 1
        if time.monotonic() - self._wait_logged_at >= self.summary_every:
            self._wait_logged_at = time.monotonic()
            items, nbytes = self._queue.held
            log.warning(
                "holding %d messages (%.1f MB), all it may: not reading from the broker until the store "
                "commits some (the broker keeps the rest); %d such waits so far", items, nbytes / 1e6, self.waits,
            )
        self._queue.put(msg, msg.held_bytes)

    @property
    def backlog(self) -> int:
        """Messages queued, not yet taken into a group."""
        return self._queue.queued

    @property
    def held(self) -> tuple[int, int]:
        """Messages held, queued or in the group being committed, and the bytes they take."""
        return self._queue.held

    @property
    def running(self) -> bool:
        """The writer thread is alive (it ends only on close() or a bug)."""
        return self._thread.is_alive()

    def close(self, timeout: float | None = None) -> None:
        """Commit everything submitted so far, then stop the thread."""
        if not self._closing:
            self._closing = True
            self._queue.put_last(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        last_summary, at_summary = time.monotonic(), self.store.counters()
        stop = more_pruning = False
        while not stop:
            self.alive_at = time.monotonic()
            first = self._queue.get(timeout=0.0 if more_pruning else 1.0)
            group: list[Inbound] = []
            if first is _STOP:
                stop = True
            elif first is not None:
                group.append(first)  # type: ignore[arg-type]
                while len(group) < self.max_group:
                    m = self._queue.get(timeout=0)
                    if m is None:
                        break
                    if m is _STOP:
                        stop = True
                        break
                    group.append(m)  # type: ignore[arg-type]
            if group:
                try:
                    self._commit(group)
                finally:  # committed, refused or given up: no longer held
                    self._queue.done(len(group), sum(m.held_bytes for m in group))
            if not stop:
                more_pruning = self._prune()
            if time.monotonic() - last_summary >= self.summary_every:
                last_summary = time.monotonic()
                try:
                    at_summary = self._summary(at_summary)
                except sqlite3.Error as e:
                    log.warning("could not read the counters: %s", e)
        log.info("writer stopped: %d messages committed in %d transactions", self.committed, self.groups)

    def _commit(self, group: list[Inbound]) -> None:
        delay, attempts = 1.0, 0
        while True:
            started = time.monotonic()
            try:
                with self.store.transaction():
                    done = [Done(m, a) for m, a in zip(group, ingest_group(self.store, self.topics, group, self.unknown))]
                break
            except sqlite3.Error as e:
                code = refusal(e)
                if code is not None:
                    self._refuse(group, code, e)
                    return
                attempts += 1
                if self._closing and attempts >= 3:
                    log.critical(
                        "store failed, %d received messages NOT stored and not acknowledged "
                        "(the broker delivers them again): %s", len(group), e,
                    )
                    return
                log.error("store failed (%s); retrying %d messages in %.0f s", e, len(group), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.committed += len(group)
        self.groups += 1
        log.debug("committed %d messages in %.1f ms", len(group), (time.monotonic() - started) * 1000)
        if self.refusing is not None:
            self._recovered(self.refusing)
        self._save_aside()
        if self.on_committed is not None:
            try:
                self.on_committed(done)
            except Exception:
                log.exception("on_committed failed")

    def _prune(self) -> bool:
        """One pruning step if one is due; True when more should follow at once."""
        if self.pruner is None:
            return False
        try:
            more = self.pruner.step()
        except sqlite3.Error as e:  # a full disk, a lock: the bounds are looked at again later
            if time.monotonic() - self._prune_failed_at >= self.summary_every:
                self._prune_failed_at = time.monotonic()
                log.warning("could not prune the store (tried again every second): %s", e)
            more = False
        self._save_aside()  # the alarm a step may have raised
        return more

    def _refuse(self, group: list[Inbound], code: str, e: sqlite3.Error) -> None:
        self.refused += len(group)
        self._refused_unsaved += len(group)
        r = self.refusing
        if r is None:
            r = self.refusing = Refusal(code, str(e), time.time())
            self.alarms.raise_(
                code, f"the store {self.store.path} cannot commit ({e}): refusing new data, which the "
                "nodes keep and send again; what is stored is not affected",
            )
        r.messages += len(group)
        if time.monotonic() - r.logged_at >= self.summary_every:
            r.logged_at = time.monotonic()
            log.error("still refusing (%s): %d messages since %s", e, r.messages, iso(r.since))
        if self.on_refused is not None:
            try:
                self.on_refused(group)
            except Exception:
                log.exception("on_refused failed")

    def _recovered(self, r: Refusal) -> None:
        self.refusing = None
        self.alarms.clear(
            r.code, f"the store {self.store.path} commits again after {time.time() - r.since:.0f} s; "
            f"{r.messages} messages were refused since {iso(r.since)} ({r.error}); the nodes send them again",
        )

    def _save_aside(self) -> None:
        """Count refusals and write alarms that waited for the store to take writes again."""
        refused = self._refused_unsaved
        if not refused and not self.alarms.unsaved:
            return
        try:
            with self.store.transaction():
                self.store.bump("refused", refused)
                n = self.alarms.write(self.store)
        except sqlite3.Error as e:
            log.warning("could not yet write the alarms and refusal counts: %s", e)
            return
        self._refused_unsaved -= refused
        self.alarms.written(n)

    def _summary(self, before: dict[str, int]) -> dict[str, int]:
        now = self.store.counters()
        d = {k: v - before.get(k, 0) for k, v in now.items()}
        rejected = sum(v for k, v in d.items() if k.startswith("rejected."))
        if any(d.values()):
            log.info(
                "last %.0f s: %d batches (%d records, %d duplicates), %d status, %d rejected; %d queued",
                self.summary_every, d.get("batches", 0), d.get("records", 0), d.get("duplicates", 0),
                d.get("status", 0), rejected, self.backlog,
            )

        return now
