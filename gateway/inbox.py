"""A FIFO between threads bounded in items AND in bytes, for the messages the gateway holds.

`put` blocks while what is held would go over either bound; what is held is released by `done`,
not when it is taken out (`get`): a message counts until its group is committed, so the queue
and the group being written take `max_bytes` at most between them. One item is always let in
when nothing is held, whatever its size, so a large one cannot block for ever. `put_last` is
for the one item that must get in whatever is held (the sentinel that stops the consumer).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, max_items: int, max_bytes: int) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("an inbox holds at least one item and one byte")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[T] = deque()
        self._held_items = 0  # put and not yet done
        self._held_bytes = 0
        self._cond = threading.Condition()

    def put(self, item: T, nbytes: int, timeout: float | None = None) -> bool:
        """Append `item`, costing `nbytes`, once the bounds allow; False if `timeout` (0: not at
        all) passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._held_items and not self._fits(nbytes):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            self._append(item, nbytes)
        return True

    def put_last(self, item: T) -> None:
        """Append `item` whatever is held; it holds nothing."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to `timeout` (None: for ever, 0: not at all); None if none."""
        with self._cond:
            if not self._items:
                if timeout == 0:
                    return None
                self._cond.wait_for(lambda: bool(self._items), timeout)
                if not self._items:
                    return None
            return self._items.popleft()

    def done(self, items: int, nbytes: int) -> None:
        """Release what `items` items of `nbytes` in all held (after they were got and handled)."""
        with self._cond:
            self._held_items -= items
            self._held_bytes -= nbytes
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        """Items waiting to be got."""
        with self._cond:
            return len(self._items)

    @property
    def held(self) -> tuple[int, int]:
        """Items and bytes put and not yet done."""
        with self._cond:
            return self._held_items, self._held_bytes

    def _fits(self, nbytes: int) -> bool:
        return self._held_items < self.max_items and self._held_bytes + nbytes <= self.max_bytes

    def _append(self, item: T, nbytes: int) -> None:
        self._items.append(item)
        self._held_items += 1
        self._held_bytes += nbytes
        self._cond.notify_all()
