"""Keeping the store within its bounds: at most `max_bytes` of pages, nothing older than
`max_age_days` (`[store]` in gateway.toml).

The writer thread calls `Pruner.step()` between its groups: each step is ONE small transaction
(at most `slice` records), so ingest waits at most that long. A step prunes WHOLE records, readings
with them, always the oldest first (lowest ids, a prefix): ids stay monotonic and forward cursors
stay meaningful.

- Age: records received more than `max_age_days` ago (the gateway's clock, `received_at`). A record
  with an odd `received_at` among newer ones waits for those before it (only a prefix is pruned).
- Bytes: once the pages in use (`Store.used_bytes`) without the dead letters' exceed `max_bytes`,
  the oldest records go until they are under `LOW_WATER` of it (so that pruning does not run at
  every commit).
- Dead letters (what was refused) have budgets of their own, so that a node spewing garbage can
  never displace a reading: at most `dead_letters_node_max` of them and `dead_letters_node_max_bytes`
  of payload per node, and `dead_letters_max_bytes` in all; the oldest go first. A node over its
  budget raises the `dead_letter_flood` alarm (over when no node went over for `FLOOD_QUIET_S`).
  They are pruned by age as well, like the retained messages already seen.

Counted per reason: `dropped.age`, `dropped.bytes` (records), `dropped.unforwarded` (of those, the
records not yet forwarded to every enabled target: above the lowest cursor), `dead_letters_dropped.
<reason>` (age, bytes, flood). Dropping data not yet forwarded raises the `dropped_unforwarded`
alarm, over once every target has forwarded the oldest record left.

Pages freed are reused by new records; with incremental auto-vacuum (new stores) what is free
beyond `SLACK` of `max_bytes` is given back to the file system, a chunk per step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

from .alarms import DEAD_LETTER_FLOOD, DROPPED_UNFORWARDED, Alarms
from .config import Config
from .store import Store

log = logging.getLogger(__name__)

DAY_S = 86400.0
#: once over max_bytes, prune down to this fraction of it
LOW_WATER = 0.98
#: free pages kept for reuse, as a fraction of max_bytes; more is given back to the file system
SLACK = 0.02
#: records per pruning transaction: a few ms of ingest held up (bench/store.py measures it)
SLICE = 500
#: free pages given back per step
RECLAIM_PAGES = 1024
#: the dead_letter_flood alarm is over once no node went over its budget for this long
FLOOD_QUIET_S = 600.0


@dataclass(frozen=True)
class Bounds:
    max_bytes: int
    max_age_days: float  # 0: no age bound
    targets: tuple[str, ...] = ()  # the enabled forwarding targets
    # the dead letters' own budgets (defaults as in config.StoreConfig)
    dead_letters_max_bytes: int = 64_000_000
    dead_letters_node_max_bytes: int = 2_000_000
    dead_letters_node_max: int = 2000

    @classmethod
    def of(cls, config: Config) -> "Bounds":
        st = config.store
        return cls(st.max_bytes, st.max_age_days, tuple(f.name for f in config.forward if f.enabled),
                   st.dead_letters_max_bytes, st.dead_letters_node_max_bytes, st.dead_letters_node_max)


@dataclass
class Dropped:
    """What one pruning run dropped: the steps from the first that found work to the first that did not."""

    records: dict[str, int] = field(default_factory=dict)  # reason -> records
    unforwarded: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    first_id: int | None = None
    last_id: int | None = None

    def __bool__(self) -> bool:
        return bool(self.records or self.dead_letters)


class Pruner:
    """Prunes one store from the writer thread; `step()` does one transaction at most."""

    def __init__(self, store: Store, bounds: Bounds, alarms: Alarms, *, slice: int = SLICE,
                 check_every_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.bounds = bounds
        self.alarms = alarms
        self.slice = slice
        self.check_every_s = check_every_s
        self.clock = clock
        self._checked_at = -math.inf
        self._over_bytes = False  # pruning down to LOW_WATER
        self._busy = False  # a run is under way: the next step goes at once
        self._run = Dropped()
        active = {a.code for a in store.active_alarms()}
        self._unforwarded_alarm = DROPPED_UNFORWARDED in active
        self._stuck_logged = False
        #: node -> when it last went over its dead-letter budget (the pruner's clock); the alarm
        #: is up while this is not empty
        self._flooding: dict[str | None, float] = {}
        self._flood_alarm = DEAD_LETTER_FLOOD in active

    def step(self) -> bool:
        """One step if one is due: True when there is more to do at once."""
        now = time.monotonic()
        if not self._busy and now - self._checked_at < self.check_every_s:
            return False
        self._checked_at = now
        self._busy = False  # an exception below (a full disk) leaves the next look for the next second
        self._busy = self._prune_once() or self._reclaim_once()
        if not self._busy:
            self._finish_run()
        return self._busy

    # -- one transaction -----------------------------------------------------------------------------

    def _prune_once(self) -> bool:
        b = self.bounds
        if b.max_age_days > 0:
            cutoff = self.clock() - b.max_age_days * DAY_S
            if self._drop_expired_records(cutoff) or self._drop_expired_dead_letters(cutoff):
                return True
        if self._keep_dead_letter_budgets():
            return True
        used = self.store.used_bytes()
        if used > b.max_bytes * LOW_WATER:  # only then is it worth leaving the dead letters out
            used = self.store.bounded_bytes()
        if used > b.max_bytes:
            self._over_bytes = True
        if not self._over_bytes:
            return False
        if used <= b.max_bytes * LOW_WATER:
            self._over_bytes = self._stuck_logged = False
            return False
        if self._drop_for_bytes(used):
            return True
        if not self._stuck_logged:  # over the bound with nothing left to drop: the schema alone
            log.warning("store %s: %d bytes in use by readings, over its bound of %d, with no records "
                        "left to drop", self.store.path, used, b.max_bytes)
            self._stuck_logged = True
        self._over_bytes = False
        return False

    def _keep_dead_letter_budgets(self) -> bool:
        """Drop the oldest dead letters of each node over its budget, then of all when they are
        over theirs; one transaction at most."""
        b = self.bounds
        nodes, self.store.dead_letter_nodes = self.store.dead_letter_nodes, set()
        for node in nodes:
            count, size = self.store.dead_letter_usage(node)
            if count > b.dead_letters_node_max or size > b.dead_letters_node_max_bytes:
                upto = _oldest_over(self.store.dead_letter_sizes(node), count - b.dead_letters_node_max,
                                    size - b.dead_letters_node_max_bytes)
                with self.store.transaction():
                    n = self.store.drop_dead_letters_of(node, upto)
                    self.store.bump("dead_letters_dropped.flood", n)
                self._run.dead_letters["flood"] = self._run.dead_letters.get("flood", 0) + n
                self.store.dead_letter_nodes |= nodes - {node}  # the others at the next step
                self._flood(node, count, size)
                return True
        count, size = self.store.dead_letter_usage(every=True)
        if size > b.dead_letters_max_bytes:
            upto = _oldest_over(self.store.dead_letter_sizes(every=True), 0, size - b.dead_letters_max_bytes)
            self._drop_dead_letters(upto, "bytes")
            return True
        if self._flood_alarm and self._flooding and self.clock() - max(self._flooding.values()) >= FLOOD_QUIET_S:
            quiet = ", ".join(sorted(n or "(no node)" for n in self._flooding))
            self._flooding.clear()
            self._flood_alarm = False
            self.alarms.clear(DEAD_LETTER_FLOOD, f"no node went over its dead-letter budget for "
                                                 f"{FLOOD_QUIET_S:.0f} s (last: {quiet})")
        return False

    def _flood(self, node: str | None, count: int, size: int) -> None:
        new = node not in self._flooding
        self._flooding[node] = self.clock()
        b = self.bounds
        if new or not self._flood_alarm:
            self._flood_alarm = True
            self.alarms.raise_(
                DEAD_LETTER_FLOOD,
                f"node {node or '(no node: another topic)'} sends what the gateway refuses faster than its "
                f"dead-letter budget keeps ({count} dead letters, {size} bytes; at most "
                f"{b.dead_letters_node_max} and {b.dead_letters_node_max_bytes} bytes): its oldest are "
                "dropped (`dead_letters_dropped.flood`); readings are not affected. See "
                "`meetkit-gateway dead-letters list --node` for what it sends",
            )

    def _drop_expired_records(self, cutoff: float) -> bool:
        if not _prefix(self.store.oldest_records(1), cutoff):  # the usual case, once a second: one row
            return False
        expired = _prefix(self.store.oldest_records(self.slice), cutoff)
        self._drop_records(expired[-1][0], "age")
        return True

    def _drop_expired_dead_letters(self, cutoff: float) -> bool:
        if not _prefix(self.store.oldest_dead_letters(1), cutoff):
            if self.store.drop_retained_seen(cutoff):  # the retained messages seen: a few rows
                return True
            return False
        expired = _prefix(self.store.oldest_dead_letters(self.slice), cutoff)
        self._drop_dead_letters(expired[-1][0], "age")
        return True

    def _drop_for_bytes(self, used: int) -> bool:
        span = self.store.record_id_span()
        if span is None:
            return False
        lo, hi = span
        per_record = used / (hi - lo + 1)  # ids are (nearly) contiguous: no count(*) over the table
        need = math.ceil((used - self.bounds.max_bytes * LOW_WATER) / per_record)
        self._drop_records(lo + max(1, min(self.slice, need)) - 1, "bytes")
        return True

    def _drop_records(self, upto: int, reason: str) -> None:
        with self.store.transaction():
            after = self.store.forward_cursor_min(self.bounds.targets)
            p = self.store.drop_records(upto, after if after is not None else upto)
            self.store.bump(f"dropped.{reason}", p.records)
            self.store.bump("dropped.unforwarded", p.unforwarded)
        r = self._run
        r.records[reason] = r.records.get(reason, 0) + p.records
        r.unforwarded += p.unforwarded
        if r.first_id is None:
            r.first_id = p.first_id
        r.last_id = upto
        log.debug("pruned %d records up to id %d (%s), %d not yet forwarded", p.records, upto, reason,
                  p.unforwarded)
        if p.unforwarded and not self._unforwarded_alarm:
            self._unforwarded_alarm = True
            self.alarms.raise_(
                DROPPED_UNFORWARDED,
                f"the store dropped records not yet forwarded to every target ({reason} bound: "
                f"{self._describe()}): they are lost for the targets behind; records up to id {upto} "
                f"are gone; see `dropped.unforwarded`",
            )

    def _drop_dead_letters(self, upto: int, reason: str) -> None:
        with self.store.transaction():
            n = self.store.drop_dead_letters(upto)
            self.store.bump(f"dead_letters_dropped.{reason}", n)
        self._run.dead_letters[reason] = self._run.dead_letters.get(reason, 0) + n

    def _reclaim_once(self) -> bool:
        """Give free pages beyond the slack back to the file system, a chunk at a time."""
        if not self.store.incremental:
            return False
        size, _count, free = self.store.pages()
        excess = free - int(self.bounds.max_bytes * SLACK) // size
        if excess <= 0:
            return False
        return self.store.reclaim(min(excess, RECLAIM_PAGES)) > 0

    # -- the end of a run ----------------------------------------------------------------------------

    def _finish_run(self) -> None:
        r, self._run = self._run, Dropped()
        if r:
            parts = [f"{n} records ({reason} bound)" for reason, n in sorted(r.records.items())]
            parts += [f"{n} dead letters ({reason} bound)" for reason, n in sorted(r.dead_letters.items())]
            ids = f", ids {r.first_id}..{r.last_id}" if r.last_id is not None else ""
            if r.unforwarded:
                log.warning("store bounds (%s): dropped %s%s; %d of those records had not been "
                            "forwarded to every target", self._describe(), ", ".join(parts), ids, r.unforwarded)
            else:
                log.info("store bounds (%s): dropped %s%s", self._describe(), ", ".join(parts), ids)
        if self._unforwarded_alarm:
            self._maybe_clear_alarm()

    def _maybe_clear_alarm(self) -> None:
        after = self.store.forward_cursor_min(self.bounds.targets)
        span = self.store.record_id_span()
        if after is None or span is None or after >= span[0]:
            self._unforwarded_alarm = False
            self.alarms.clear(
                DROPPED_UNFORWARDED,
                "every target has forwarded the oldest record the store keeps: what the bounds drop "
                "from now on was forwarded",
            )

    def _describe(self) -> str:
        b = self.bounds
        age = f", {b.max_age_days:g} day{'' if b.max_age_days == 1 else 's'}" if b.max_age_days > 0 else ""
        size = f"{b.max_bytes / 1e9:.1f} GB" if b.max_bytes >= 1e9 else f"{b.max_bytes / 1e6:.1f} MB"
        return f"{size}{age}"


def _oldest_over(rows: list[tuple[int, int]], count: int, size: int) -> int:
    """The id up to which the oldest of `rows` ((id, size), oldest first) go, so that at least
    `count` of them and `size` bytes go."""
    gone = 0
    for i, (id_, n) in enumerate(rows):
        gone += n
        if i + 1 >= count and gone >= size:
            return id_
    return rows[-1][0]


def _prefix(rows: list[tuple[int, float]], cutoff: float) -> list[tuple[int, float]]:
    """The leading rows received before `cutoff`."""
    out = []
    for row in rows:
        if row[1] >= cutoff:
            break
        out.append(row)
    return out
