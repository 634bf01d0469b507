"""A region of gateways: the safe pair in every acknowledgement, and standalone safe
acknowledgements when the region targets take what was acknowledged before (docs/payload.md,
"Safe in the region").

- After a commit (the writer's thread), `for_batches` reads the pair of every node acknowledged
  in the group in one query (store/safe.py); each acknowledgement carries its node's.
- A thread of its own (`run`) reads the region targets' lowest cursor every `poll_s`. When it
  moved, the nodes with records in the range it passed are due: each gets `{"v":1,"db":..,
  "safe":[b,s]}` on its ack topic, at most once every `every_s` (10 s) per node, and only when the
  pair differs from the last one the node was sent (with a batch or alone). A node whose records
  were not forwarded gets nothing. A node seen again after the gateway started gets its pair with
  its next acknowledgement; nodes due when the gateway stops are told with their next one then.

Order. A pair is true when it is read; it can be smaller than one sent before when a record below
that one arrives late (a batch the store refused for want of disk space, sent again after later
ones). The node therefore applies each acknowledgement's pair to the records acknowledged up to
then (docs/payload.md). For that to hold, a pair must reach the node before the acknowledgement of
any record committed after the pair was read: the writer (read the pairs of its group, publish its
acknowledgements) and this thread (read the pairs, publish them) each do both under `lock`, and
paho sends what is published in order.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from .acks import SafePair, safe_payload
from .config import RegionConfig
from .store import Store
from .topics import Topics

log = logging.getLogger(__name__)

#: at most one standalone safe acknowledgement per node this often (docs/payload.md)
EVERY_S = 10.0
_UNSENT = object()


class SafeAcks:
    def __init__(self, region: RegionConfig, store_path: str | Path, topics: Topics,
                 publish: Callable[[str, bytes], object], db_id: str, *, poll_s: float = 1.0,
                 every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.targets = region.safe_targets
        self.store_path = Path(store_path)
        self.topics = topics
        self.publish = publish
        self.db_id = db_id
        self.poll_s = poll_s
        self.every_s = every_s
        self.clock = clock
        self.standalone = 0  # standalone safe acknowledgements sent (the log says so at the end)
        #: held while pairs are read and published (the writer's thread and ours): see "Order" above
        self.lock = threading.RLock()
        self._sent: dict[str, SafePair] = {}  # the last pair each node was sent
        self._alone_at: dict[str, float] = {}  # when each node last got a standalone one
        self._due: set[str] = set()
        self._cursor: int | None = None
        self._store: Store | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- with the batches' acknowledgements (the writer's thread) --------------------------------------

    def for_batches(self, store: Store, nodes: Iterable[str]) -> dict[str, SafePair]:
        """The pair of each node (one query on the writer's connection, after its commit); call
        with `lock` held until the acknowledgements carrying them are published."""
        with self.lock:
            pairs = store.safe_pairs(self.targets, nodes)
            self._sent.update(pairs)
        return pairs

    # -- standalone ------------------------------------------------------------------------------------

    def step(self) -> int:
        """Look at the cursors once; send what is due. Returns how many were sent."""
        if self._store is None:
            self._store = Store(self.store_path, readonly=True)
        s = self._store
        now = self.clock()
        with s.snapshot():
            cursor = s.safe_cursor(self.targets)
            if self._cursor is not None and cursor > self._cursor:
                self._due.update(s.nodes_between(self._cursor, cursor))
            self._cursor = cursor  # also when it went back (an operator's replay): from there on
        ready = [n for n in self._due if now - self._alone_at.get(n, -self.every_s) >= self.every_s]
        if not ready:
            return 0
        with self.lock:
            return self._send(s.safe_pairs(self.targets, ready), now)

    def _send(self, pairs: dict[str, SafePair], now: float) -> int:
        sent = 0
        for node, pair in pairs.items():
            self._due.discard(node)
            if self._sent.get(node, _UNSENT) == pair:
                continue  # the node has this pair already (its last acknowledgement carried it)
            self._sent[node] = pair
            try:
                self.publish(self.topics.ack(node), safe_payload(self.db_id, pair))
            except Exception:  # one odd node id must not stop the others'
                log.exception("could not send node %r its safe pair", node)
                continue
            self._alone_at[node] = now
            sent += 1
        self.standalone += sent
        return sent

    def run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.step()
            except Exception:  # the store busy or being replaced: next time
                log.exception("safe acknowledgements: store error")
        if self._store is not None:
            self._store.close()
            self._store = None

    def start(self) -> "SafeAcks":
        """Before the forwarders start: every move of their cursors from here on is seen."""
        self._store = Store(self.store_path, readonly=True)
        self._cursor = self._store.safe_cursor(self.targets)
        self._thread = threading.Thread(target=self.run, name="safe-acks", daemon=True)
        self._thread.start()
        log.info("region: acknowledgements carry `safe` (records taken by %s)", ", ".join(self.targets))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        log.info("region: %d standalone safe acknowledgements sent", self.standalone)
