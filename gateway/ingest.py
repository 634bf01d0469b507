"""From received messages to committed rows: a queue and the one thread that writes the store.

The MQTT side only wraps each message in an `Inbound` and calls `Writer.submit` (a queue put), so
paho's network thread never waits for the disk. The writer thread takes everything queued, up to
`max_group` messages, and handles them in ONE transaction: while one commit is being synced, the
next group builds up, so the cost of a commit is shared by however many messages arrived meanwhile.

Each message gets a savepoint of its own: a message that fails, even through a bug, is undone
alone and dead-lettered, the rest of its group is committed. After each commit the writer calls
`on_committed(group)`: the place to acknowledge messages only once they are on disk.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from . import payload
from .payload import Rejected
from .store import Store
from .topics import Topics

log = logging.getLogger(__name__)

INTERNAL = "internal"  # rejection code for a message the gateway failed on


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message as received."""

    topic: str
    payload: bytes
    received_at: float
    retained: bool = False
    mid: int = 0
    qos: int = 0


def ingest(store: Store, topics: Topics, msg: Inbound) -> None:
    """Validate one message and write what it means: records, a node status or a dead letter.
    Call inside a transaction; the caller commits."""
    topic = topics.parse(msg.topic)
    try:
        with store.savepoint():
            if topic is None:
                raise Rejected(payload.BAD_VALUE, f"topic {msg.topic!r} is not <prefix>/<node>/up or /status")
            if topic.kind == "up":
                batch = payload.parse_batch(msg.payload, topic.node)
                added = store.add_batch(batch, msg.received_at)
                log.debug(
                    "%s: boot %d seq %d..%d: %d stored, %d duplicates",
                    batch.node, batch.boot, batch.records[0].seq, batch.records[-1].seq,
                    added.stored, added.duplicates,
                )
            else:
                status = payload.parse_status(msg.payload, topic.node)
                store.set_status(status, msg.received_at, live=not msg.retained)
                log.info(
                    "%s: %s%s", status.node, "online" if status.online else "offline",
                    " (retained)" if msg.retained else "",
                )
            return
    except Rejected as e:
        code, reason = e.code, e.reason
    except Exception as e:  # a bug must not lose the message: keep it with what went wrong
        if isinstance(e, sqlite3.OperationalError):
            raise  # the store itself failed (disk full, I/O): the whole group is retried
        log.exception("failed on a message from %s", msg.topic)
        code, reason = INTERNAL, f"gateway error: {type(e).__name__}: {e}"
    dl = store.add_dead_letter(msg.topic, msg.payload, code, reason, msg.received_at)
    log.warning("rejected %s (dead letter %d): %s", msg.topic, dl, reason)


_STOP = object()


class Writer:
    """Commits submitted messages to the store in groups, from a thread of its own."""

    def __init__(
        self,
        store: Store,
        topics: Topics,
        *,
        max_group: int = 500,
        max_queue: int = 10_000,
        on_committed: Callable[[Sequence[Inbound]], None] | None = None,
        summary_every: float = 60.0,
    ) -> None:
        self.store = store
        self.topics = topics
        self.max_group = max_group
        self.on_committed = on_committed
        self.summary_every = summary_every
        # Bounded: when the disk cannot keep up, submit() blocks paho's thread, which stops
        # reading from the broker; the broker holds the rest (QoS 1) instead of our memory.
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._closing = False
        self.received = 0  # messages submitted
        self.committed = 0  # messages committed
        self.groups = 0  # transactions committed

    def start(self) -> None:
        self._thread.start()

    def submit(self, msg: Inbound) -> None:
        """Queue a message for the next group (any thread; blocks while the queue is full)."""
        if self._closing:
            raise RuntimeError("the writer is closed")
        self.received += 1
        self._queue.put(msg)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Commit everything submitted so far, then stop the thread."""
        if not self._closing:
            self._closing = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        last_summary, at_summary = time.monotonic(), self.store.counters()
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                first = None
            group: list[Inbound] = []
            if first is _STOP:
                stop = True
            elif first is not None:
                group.append(first)  # type: ignore[arg-type]
                while len(group) < self.max_group:
                    try:
                        m = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if m is _STOP:
                        stop = True
                        break
                    group.append(m)  # type: ignore[arg-type]
            if group:
                self._commit(group)
            if time.monotonic() - last_summary >= self.summary_every:
                last_summary, at_summary = time.monotonic(), self._summary(at_summary)
        log.info("writer stopped: %d messages committed in %d transactions", self.committed, self.groups)

    def _commit(self, group: list[Inbound]) -> None:
        delay, attempts = 1.0, 0
        while True:
            started = time.monotonic()
            try:
                with self.store.transaction():
                    for msg in group:
                        ingest(self.store, self.topics, msg)
                break
            except sqlite3.Error as e:
                attempts += 1
                if self._closing and attempts >= 3:
                    log.critical("store failed, %d received messages NOT stored: %s", len(group), e)
                    return
                log.error("store failed (%s); retrying %d messages in %.0f s", e, len(group), delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.committed += len(group)
        self.groups += 1
        log.debug("committed %d messages in %.1f ms", len(group), (time.monotonic() - started) * 1000)
        if self.on_committed is not None:
            try:
                self.on_committed(group)
            except Exception:
                log.exception("on_committed failed")

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
