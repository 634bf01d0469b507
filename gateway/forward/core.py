"""The forwarding loop of one target, its cursor in the store, and the set of targets.

Each attempt (`Forwarder.step`) reads up to `batch` readings of the records after the target's
cursor, in record order, never splitting a record (unless one record is bigger than a batch), and
gives them to the target's `Sender`. The answer decides:

- taken (2xx): the cursor moves past the batch, `forward.<t>.sent` counts its readings, the next
  batch goes at once; a target that takes a batch in several requests, or answers per reading
  (SensorThings), may also say which readings it passed over on purpose (counted as
  `forward.<t>.<why>`, e.g. `stale`) and which parts it refused for good (`Result.refused`:
  dead-lettered each on its own, counted in `forward.<t>.dead`, the rest taken);
- refused for good (a 4xx other than 401, 403, 404, 408, 429): the batch's record range, the
  status and the target's reason go to `forward_dead_letters`, the cursor moves on, counted in
  `forward.<t>.dead`; nothing else holds the queue back;
- anything else (5xx, 408, 429, 401/403/404 which are the target's configuration and not the
  batch's fault, no connection, a timeout): the same batch is tried again after a jittered
  exponential backoff (0.5 s doubling up to 30 s, times a random factor in [0.5, 1]) or, when the
  target says `Retry-After`, after that long (up to 10 minutes); counted in `forward.<t>.retries`.

Records without a known start (a node whose clock is not set yet; the store fills `start` in when
a record of the same boot with a time arrives) hold the cursor back for `hold_untimed_s` after
they were received; after that they are passed over and counted in `forward.<t>.untimed`. A boot
that has gone without a clock for longer than that holds nothing back any more (a node that never
gets one must not delay the others).

Records an older gateway stored with an implausible interval or counters (plausible.py: a start
before 2026 or more than a day past the forwarder's clock, a length outside 1..3900 s, a boot or seq
above 2**30-1) are passed over and counted in `forward.<t>.implausible`, for every target alike: no
target is sent a time it would refuse (InfluxDB's nanosecond timestamps end in 2262) or file in the
wrong year, and the cursor moves past them like past any other record.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from .. import plausible
from ..config import ForwardConfig, RegionConfig
from ..store import Reading, Store
from ..visitors import Visitors

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 600.0


#: One reading to forward: the store's `Reading` (one type for every reader of readings), under
#: the name the senders have always used.
Row = Reading


@dataclass(frozen=True)
class Refused:
    """Part of a batch the target refused for good while it took the rest: dead-lettered on its
    own. `refused_readings` makes these from readings refused one by one."""

    first_id: int
    last_id: int
    readings: int
    status: int | None
    reason: str


@dataclass(frozen=True)
class Result:
    """A target's answer to one batch."""

    ok: bool
    reason: str = ""
    status: int | None = None  # HTTP status, None without an answer
    permanent: bool = False  # refused for good: dead-letter the batch, do not retry
    retry_after: float | None = None  # seconds the target asked to wait
    # With ok: readings deliberately not sent, by counter (`forward.<t>.<key>`), e.g. {"stale": 3},
    # and parts refused for good; `sent` counts the rest.
    passed_over: Mapping[str, int] = field(default_factory=dict)
    refused: Sequence[Refused] = ()


def refused_readings(refusals: Iterable[tuple[Row, int | None, str]]) -> tuple[Refused, ...]:
    """Readings refused one by one (row, status, reason): a part per record and reason, its reason
    naming the quantities."""
    groups: dict[tuple[int, int | None, str], list[str]] = {}
    for row, status, reason in refusals:
        groups.setdefault((row.record_id, status, reason), []).append(row.quantity)
    return tuple(Refused(rid, rid, len(q), status, f"{','.join(q)}: {reason}") for (rid, status, reason), q in groups.items())


def auth_header(cfg: ForwardConfig, token_scheme: str) -> dict[str, str]:
    """The Authorization header of an HTTP target, its secret read now (a fixed file is picked up on
    the next attempt; OSError if unreadable): `<token_scheme> <token>` from token_file, else basic
    auth from username and password_file, else none."""
    if cfg.token_file is not None:
        return {"Authorization": f"{token_scheme} " + cfg.token_file.read_text().strip()}
    if cfg.username is not None and cfg.password_file is not None:
        pw = cfg.password_file.read_text().strip()
        return {"Authorization": "Basic " + base64.b64encode(f"{cfg.username}:{pw}".encode()).decode()}
    return {}


class Sender(Protocol):
    kind: str  # for /metrics: influxdb, mqtt, sensorthings, ...

    def send(self, rows: Sequence[Row]) -> Result: ...

    def close(self) -> None: ...


def backoff(failures: int, rng: Callable[[], float] = random.random, base: float = BACKOFF_BASE_S,
            cap: float = BACKOFF_CAP_S) -> float:
    """Seconds to wait after `failures` failures in a row (>= 1): base * 2^(failures-1), at most
    `cap`, times a random factor in [0.5, 1] so that targets and gateways do not retry in step."""
    return min(cap, base * 2 ** min(failures - 1, 30)) * (0.5 + rng() / 2)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header in seconds: delta-seconds or an HTTP date; None if absent or odd."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _plausible(rows: list[Row], now: float) -> tuple[list[Row], int]:
    """The rows of plausible records (plausible.record), and how many records were not."""
    kept: list[Row] = []
    bad = 0
    last, ok = None, True
    for r in rows:
        if r.record_id != last:  # rows come by record: one check each
            last, ok = r.record_id, plausible.record(r.start, r.dur, r.boot, r.seq, now)
            bad += not ok
        if ok:
            kept.append(r)
    return kept, bad


@dataclass(frozen=True)
class Pending:
    """The next batch: `rows` of the records in (`after`, `upto`]; `untimed` records of that range
    and `implausible` ones (plausible.record) are passed over."""

    after: int
    upto: int
    rows: list[Row]
    untimed: int
    implausible: int = 0


class Forwarder:
    """One target: its cursor, its loop, its counters. `clock`, `sleep` and `rng` are injectable
    for tests; `step()` is one attempt and says how long to wait before the next."""

    def __init__(
        self,
        name: str,
        store_path: str | Path,
        sender: Sender,
        *,
        batch: int = 5000,
        poll_s: float = 1.0,
        hold_untimed_s: float = 600.0,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.store_path = Path(store_path)
        self.sender = sender
        self.batch = batch
        self.poll_s = poll_s
        self.hold_untimed_s = hold_untimed_s
        self.clock = clock
        self.rng = rng
        self.failures = 0  # in a row
        self.up: bool | None = None
        self.last_error: str | None = None
        self._store: Store | None = None
        self._status_store: Store | None = None
        self._status_lock = threading.Lock()
        self.wake = threading.Event()  # set to look for new records before poll_s is over

    # -- the store -----------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.store_path)
            self._store.add_cursor(self.name, self.clock())
        return self._store

    def cursor(self) -> int:
        return self.store.cursor(self.name)

    def reset(self, last_id: int = 0) -> None:
        """Set the cursor (an operator's replay): what follows is sent again."""
        self.store.set_cursor(self.name, last_id, self.clock())

    def pending(self) -> Pending:
        """The next batch after the cursor (one read snapshot)."""
        s = self.store
        with s.snapshot():
            after = s.cursor(self.name)
            newest = s.newest_record_id()
            # The first recent record still waiting for its node's clock holds the batch back,
            # unless its boot has gone without a clock for longer than the hold already: a node
            # that never gets one must not keep every other node hold_untimed_s behind. Nor may a
            # record an older gateway stamped far in the future (its clock wrong): "recent" ends
            # hold_untimed_s past now.
            now = self.clock()
            held = s.first_held_untimed(after, now - self.hold_untimed_s, now + self.hold_untimed_s)
            limit = newest if held is None else held - 1
            rows: list[Reading] = []
            upto = limit
            if limit > after:
                rows = s.forward_readings(after, limit, self.batch + 1)
                if len(rows) > self.batch:  # full: end at a record boundary
                    last = rows[-1].record_id
                    whole = [r for r in rows if r.record_id != last]
                    if whole:
                        rows, upto = whole, whole[-1].record_id
                    else:  # one record bigger than a batch: send it whole
                        rows = s.forward_readings(after, last)
                        upto = last
            untimed = s.untimed_between(after, upto) if upto > after else 0
        rows, implausible = _plausible(rows, self.clock())
        return Pending(after, max(upto, after), rows, untimed, implausible)

    def _advance(self, p: Pending, **fields: Any) -> None:
        self.store.advance_cursor(self.name, p.after, p.upto, self.clock(), **fields)
        self.store.bump(f"forward.{self.name}.untimed", p.untimed)
        self.store.bump(f"forward.{self.name}.implausible", p.implausible)

    # -- one attempt ----------------------------------------------------------------------------------

    def step(self) -> float:
        """Send the next batch if there is one; seconds to wait before the next step."""
        p = self.pending()
        if not p.rows:
            if p.upto > p.after:  # only records passed over (untimed, implausible): on to the next at once
                with self.store.transaction():
                    self._advance(p)
                return 0.0
            return self.poll_s
        try:
            result = self.sender.send(p.rows)
        except Exception as e:  # a bug in a sender: retried, never the end of the thread
            log.exception("forward %s: sending failed", self.name)
            result = Result(False, f"{type(e).__name__}: {e}")
        now = self.clock()
        if result.ok:
            refused = result.refused
            note = f"{sum(r.readings for r in refused)} readings refused: {refused[0].reason}" if refused else None
            with self.store.transaction():
                self._advance(p, last_success=now, last_error=note)
                self._refused(refused, now)
                for key, n in result.passed_over.items():
                    self.store.bump(f"forward.{self.name}.{key}", n)
                not_sent = sum(result.passed_over.values()) + sum(r.readings for r in refused)
                self.store.bump(f"forward.{self.name}.sent", len(p.rows) - not_sent)
            if self.failures:
                log.info("forward %s: delivering again after %d failures", self.name, self.failures)
            self.failures, self.up, self.last_error = 0, True, note
            return 0.0
        reason = result.reason or (f"HTTP {result.status}" if result.status else "failed")
        self.up, self.last_error = False, reason
        if result.permanent:
            with self.store.transaction():
                self.store.add_forward_dead_letter(self.name, p.rows[0].record_id, p.upto, len(p.rows), now,
                                                   result.status, reason)
                self._advance(p, last_error=reason)
                self.store.bump(f"forward.{self.name}.dead", len(p.rows))
            log.error("forward %s: records %d..%d refused for good (dead letter): %s",
                      self.name, p.rows[0].record_id, p.upto, reason)
            self.failures = 0
            return 0.0
        self.failures += 1
        with self.store.transaction():
            self.store.cursor_error(self.name, reason, now)
            self.store.bump(f"forward.{self.name}.retries")
        delay = (min(result.retry_after, RETRY_AFTER_CAP_S) if result.retry_after is not None
                 else backoff(self.failures, self.rng))
        (log.warning if self.failures <= 3 else log.debug)(
            "forward %s: %s; trying again in %.1f s (failure %d)", self.name, reason, delay, self.failures)
        return delay

    def _refused(self, parts: Sequence[Refused], now: float) -> None:
        for r in parts:
            self.store.add_forward_dead_letter(self.name, r.first_id, r.last_id, r.readings, now, r.status, r.reason)
            self.store.bump(f"forward.{self.name}.dead", r.readings)
            log.error("forward %s: records %d..%d refused for good (dead letter): %s",
                      self.name, r.first_id, r.last_id, r.reason)

    def run(self, stop: threading.Event) -> None:
        """Step until `stop` is set (the thread's body)."""
        try:
            while not stop.is_set():
                self.wake.clear()  # before the step: a wake() during it means records it may not have seen
                try:
                    delay = self.step()
                except Exception:  # the store locked or failing: try again later, never die
                    log.exception("forward %s: store error", self.name)
                    delay = BACKOFF_CAP_S
                if delay > 0:
                    deadline = time.monotonic() + delay
                    while not stop.is_set() and not (delay == self.poll_s and self.wake.is_set()):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        stop.wait(min(left, 0.2))
        finally:
            self.close()

    def close(self) -> None:
        self.sender.close()
        if self._store is not None:
            self._store.close()
            self._store = None
        with self._status_lock:
            if self._status_store is not None:
                self._status_store.close()
                self._status_store = None

    # -- for /metrics and the status page ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The target as gateway/http.py's `targets` callable reports it (any thread)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.sender.kind, "up": self.up,
                               "last_error": self.last_error}
        with self._status_lock:
            if self._status_store is None:
                if not self.store_path.exists():
                    return out
                self._status_store = Store(self.store_path, readonly=True)
            state = self._status_store.target_state(self.name)
        out["queue_rows"] = state.queue_rows
        out["oldest_age_s"] = (None if state.oldest_received_at is None
                               else max(0.0, self.clock() - state.oldest_received_at))
        out["last_success"] = state.last_success
        counters, prefix = state.counters, f"forward.{self.name}."
        for key in ("sent", "retries", "dead", "untimed"):
            out["dead_letters" if key == "dead" else key] = counters.get(f"forward.{self.name}.{key}", 0)
        for counter, value in counters.items():  # a target's own, e.g. stale (sensor.community)
            key = counter[len(prefix):]  # "v2.sent" is target "<name>.v2"'s, not ours
            if "." not in key and key not in out and key != "dead":
                out[key] = value
        if out["last_error"] is None and self.up is None:
            out["last_error"] = state.last_error
        return out


def make_sender(cfg: ForwardConfig, store_path: str | Path, region: RegionConfig | None = None,
                visitors: Visitors | None = None) -> Sender:
    """The target's sender; in a `region` every series carries the node's home town (influx; a
    visitor's from `visitors`, default the table [region] visitors names), the central MQTT topics
    name the gateway's town and each message the node's home town, and SensorThings looks each
    Observation up before it creates it."""
    if region is not None and visitors is None:
        visitors = Visitors(region.visitors, region.town)
    if cfg.type == "influx":
        from .influx import InfluxSender

        return InfluxSender(cfg, town=region.town if region else None, visitors=visitors)
    if cfg.type == "sensorthings":
        from .sensorthings import SensorThingsSender

        return SensorThingsSender(cfg, store_path, region=region is not None)
    if cfg.type == "mqtt":
        from .mqtt_upstream import MqttSender

        return MqttSender(cfg, region, visitors)
    if cfg.type == "sensor.community":
        from .sensor_community import SensorCommunitySender

        return SensorCommunitySender(cfg)
    raise ValueError(f"forward {cfg.name}: unknown type {cfg.type!r}")


class Forwarders:
    """The configured targets, a thread each."""

    def __init__(self, forwarders: Sequence[Forwarder], stop: threading.Event | None = None) -> None:
        self.forwarders = list(forwarders)
        self._stop = stop or threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def start(cls, store_path: str | Path, targets: Sequence[ForwardConfig],
              stop: threading.Event | None = None, region: RegionConfig | None = None,
              visitors: Visitors | None = None, **options: Any) -> "Forwarders":
        """A thread per enabled target, started. `options` go to each `Forwarder` (tests)."""
        fw = [Forwarder(t.name, store_path, make_sender(t, store_path, region, visitors), batch=t.batch, **options)
              for t in targets if t.enabled]
        return cls(fw, stop).run()

    def run(self) -> "Forwarders":
        for f in self.forwarders:
            t = threading.Thread(target=f.run, args=(self._stop,), name=f"forward-{f.name}", daemon=True)
            t.start()
            self._threads.append(t)
            log.info("forwarding to %s (%s)", f.name, f.sender.kind)
        return self

    def wake(self) -> None:
        """New records are committed: idle targets look now instead of at their next poll."""
        for f in self.forwarders:
            f.wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every thread (a request in flight ends within its timeout; its batch is sent again
        next time: the cursor had not moved)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            log.warning("forwarding threads still running: %s", ", ".join(t.name for t in self._threads))

    def status(self) -> list[dict[str, Any]]:
        return [f.status() for f in self.forwarders]

    def __iter__(self) -> Iterator[Forwarder]:
        return iter(self.forwarders)

    def __len__(self) -> int:
        return len(self.forwarders)
