"""Alarms: what an operator must hear about while the gateway keeps running.

Raising one gives an ERROR log line saying what happened and what was done, a counter (`raised`
here at once; `alarm.<code>` in the store), a retained MQTT message on `<prefix>/gateway/alarm`, and
a row in the store's `alarms` table, which `meetkit-gateway check` lists. When an alarm is over
(space is back), the same goes out with `"active":false` and a WARNING line. While the store cannot
be written (a full disk), its rows wait here and go in with the first commit that succeeds.

    {"v":1,"alarm":"disk_full","active":true,"at":1795510800,"reason":"..."}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from .store import Store

log = logging.getLogger(__name__)

VERSION = 1

CORRUPT_DB = "corrupt_db"  # the database was unreadable at start: moved aside, a fresh one started
DISK_FULL = "disk_full"  # commits fail for want of space: new data is refused, the nodes keep it
DISK_ERROR = "disk_error"  # commits fail with an I/O error or a read-only file: refused likewise
DROPPED_UNFORWARDED = "dropped_unforwarded"  # the store's bounds dropped records a target had not taken yet
DEAD_LETTER_FLOOD = "dead_letter_flood"  # a node sends what is refused faster than its dead-letter budget keeps
ROLLOUT_HALTED = "rollout_halted"  # a rollout stopped by itself: a node rolled back, refused, or did not prove in time


@dataclass(frozen=True)
class Alarm:
    code: str
    active: bool
    at: float
    reason: str

    def payload(self) -> bytes:
        doc = {"v": VERSION, "alarm": self.code, "active": self.active, "at": int(self.at), "reason": self.reason}
        return json.dumps(doc, separators=(",", ":")).encode()


class Alarms:
    """Raises and clears alarms from any thread. `publish` sends one retained message (set it once
    the MQTT client exists; paho keeps what is published before it connects)."""

    def __init__(self, publish: Callable[[bytes], object] | None = None) -> None:
        self.publish = publish
        self.raised: Counter[str] = Counter()
        self._unsaved: list[Alarm] = []
        self._lock = threading.Lock()

    def raise_(self, code: str, reason: str, at: float | None = None) -> Alarm:
        alarm = Alarm(code, True, time.time() if at is None else at, reason)
        log.error("ALARM %s: %s", code, reason)
        self._emit(alarm)
        return alarm

    def clear(self, code: str, reason: str) -> Alarm:
        alarm = Alarm(code, False, time.time(), reason)
        log.warning("alarm %s over: %s", code, reason)
        self._emit(alarm)
        return alarm

    def _emit(self, alarm: Alarm) -> None:
        with self._lock:
            if alarm.active:
                self.raised[alarm.code] += 1
            self._unsaved.append(alarm)
        if self.publish is not None:
            try:
                self.publish(alarm.payload())
            except Exception:
                log.exception("could not publish the alarm")

    # -- into the store --------------------------------------------------------------------------

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    def write(self, store: Store) -> int:
        """Inside the caller's transaction: write the rows not yet in the store. Pass the number
        returned to `written` once that transaction committed."""
        with self._lock:
            unsaved = list(self._unsaved)
        for a in unsaved:
            store.add_alarm(a.at, a.code, a.active, a.reason)
        return len(unsaved)

    def written(self, n: int) -> None:
        with self._lock:
            del self._unsaved[:n]

    def save(self, store: Store) -> None:
        """Write the waiting rows in a transaction of their own."""
        with store.transaction():
            n = self.write(store)
        self.written(n)
