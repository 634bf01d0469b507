"""The store: one SQLite file (WAL mode), the gateway's system of record.

Times are UTC Unix seconds. The schema's version is kept in ``PRAGMA user_version``; opening a
store for writing applies the missing steps of `MIGRATIONS` in order, opening one read-only refuses
a version this code does not know.

Schema, version 5 (version 1 lacked `meta`, `alarms` and `nodes.dropped`; version 2 the
`forward_*` tables; version 3 lacked `meta.pruned_upto` and incremental auto-vacuum; version 4
`dead_letters.node` and `.size` and `retained_seen`)::

    records        one row per interval record a node measured; (node, boot, seq) is unique
      id           INTEGER PRIMARY KEY
      node         TEXT     node id
      boot         INTEGER  the node's boot counter
      seq          INTEGER  sequence number within the boot
      ts           INTEGER  interval start as the node sent it; NULL while its clock was not known
      start        INTEGER  interval start: `ts`, or, when that is NULL, derived from the next (else
                            the previous) record of the same boot that has a `ts`:
                            start = ts' + up - up'; NULL until such a record arrives
      up           INTEGER  seconds since boot at the interval start
      dur          INTEGER  interval length, seconds
      received_at  REAL     when the gateway received the batch
      fw, board    TEXT     firmware version and board file of the batch
      sensors      TEXT     JSON object: sensor type per role (for per-type corrections)
      err          TEXT     JSON object: role -> failed reads in the interval; NULL when none

    readings       one row per quantity of a record
      record_id    INTEGER  -> records.id
      quantity     TEXT     pm1, pm25, pm10, temp, rh, press, LAeq, LA10, LA50, LA90, LZeq, cov
      avg, min, max REAL    the node's [avg, min, max, n]; for a quantity sent as a plain number
                            (LA10, LA50, LA90, cov, LZeq since the noise pipeline) avg is that
                            number and min, max and n are NULL; all NULL when the node had no
                            valid sample (`flags` says why)
      n            INTEGER  samples that went into the value (for LAeq: whole seconds of audio);
                            NULL with the value and for a plain number
      unit         TEXT     unit the batch gave for the quantity
      flags        TEXT     quality flags, comma-separated; '' when none
      PRIMARY KEY (record_id, quantity)

    dead_letters   what the gateway refused, kept to be looked at and replayed (replay.py): a
                   message rejected whole (up to DEAD_LETTER_MAX bytes of it), or the records of
                   one batch that were refused (that batch's envelope with those records)
      id, received_at REAL, topic TEXT, payload BLOB,
      code         TEXT     kind of problem, as in the counters `rejected.<code>` (whole messages)
                            and `refused_records.<code>`, `refused_values.<code>`
      reason       TEXT     the problem, naming the field
      node         TEXT     the node of the topic; NULL for another topic (and dead letters kept
                            by a gateway before schema 5)
      size         INTEGER  bytes of `payload`: what the dead-letter budgets count (retention.py)

    retained_seen  retained messages already handled, so that the copy the broker hands over again
                   at every new subscription is taken once
      topic TEXT PRIMARY KEY, digest BLOB (sha256 of the payload), at REAL

    nodes          one row per node ever heard of
      node         TEXT PRIMARY KEY
      online       INTEGER  1/0 from the last status message (0 after its last will); NULL if none
      boot, fw, up, rssi    from the last status message that carried them
      status_at    REAL     when the last status message was received
      last_seen    REAL     when the node last published (a batch or a live status; a retained
                            status replayed by the broker does not count)
      dropped      INTEGER  records the node's spool dropped by policy (full), ever: the `dropped`
                            of the last batch that carried it; NULL if none did

    counters       name TEXT PRIMARY KEY, value INTEGER
      batches      valid batches        records     records stored      duplicates  records seen again
      status       valid status messages              rejected.<code>  messages dead-lettered
      refused      messages refused because the store could not commit (disk full, I/O error)
      refused_records.<code>   records refused on their own (the rest of their batch stored)
      refused_values.<code>    values refused (their record stored without them, flagged `refused`)
      flagged.range            values outside their sensor's rated range, kept and flagged `range`
      retained_again           retained messages the broker handed over again, taken once before
      alarm.<code> alarms raised

    meta           key TEXT PRIMARY KEY, value TEXT
      db_id        16 hex digits, random, made with the database: the nodes' acknowledgements carry
                   it, and a node that sees a new one sends again all it still holds
      created_at   Unix seconds
      pruned_upto  the highest records.id ever pruned (retention.py): new records get ids above it,
                   so ids only grow even when every record was pruned (forward cursors are ids)

    alarms         what went wrong with the store, newest last (see alarms.py)
      id, at REAL, code TEXT (corrupt_db, disk_full, disk_error), active INTEGER (1 raised,
      0 over), reason TEXT

    forward_cursors   one row per upstream target (gateway/forward/), made on its first run
      target       TEXT PRIMARY KEY  the target's name in gateway.toml
      last_id      INTEGER  records.id of the last record handed on (sent or dead-lettered)
      last_success REAL     when the target last accepted a batch; NULL if never
      last_error   TEXT     the last failure (cleared by a success); NULL if none
      updated_at   REAL

    forward_dead_letters  batches a target refused for good (a 4xx), with the reason
      id, target TEXT, first_id, last_id INTEGER (records.id range of the batch), readings
      INTEGER, at REAL, status INTEGER (HTTP status), reason TEXT

    counters of forwarding, per target <t>: forward.<t>.sent (readings accepted), .retries,
      .dead (readings dead-lettered), .untimed (records passed over without a known start),
      .implausible (records passed over: an older gateway stored them with an implausible interval
      or counters, plausible.py)

    counters of the bounds (retention.py): dropped.age, dropped.bytes (records pruned, by the bound
      that pruned them), dropped.unforwarded (of those, records not yet forwarded to every enabled
      target), dead_letters_dropped.age, .bytes (the dead letters' own budget), .flood (a node's
      budget); dead_letters_replayed, dead_letters_deleted (by the operator)

Space: new stores use `auto_vacuum = INCREMENTAL`, so pages freed by pruning can be given back to
the file system (`reclaim`); a store upgraded from schema 3 or older is converted by one VACUUM
when it is small enough (`VACUUM_AT_UPGRADE_MAX`), else it keeps its size and reuses freed pages.
`used_bytes` (pages in use, free pages not counted) is what the bound compares.

A `Store` object is used by one thread at a time; open another `Store` on the same file for
reading from another thread or process (WAL lets readers run beside the writer).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import quote

from .payload import (BOOT_MAX, DUR_MAX, FUTURE_MARGIN_S, MAX_MESSAGE_BYTES, QUANTITIES, REFUSED, SCALAR, SEQ_MAX,
                      TS_MIN, Batch, Status)

log = logging.getLogger(__name__)

#: Payloads larger than this are kept truncated in the dead-letter table: a message over the
#: contract's size is kept as evidence, not whole (docs/payload.md).
DEAD_LETTER_MAX = MAX_MESSAGE_BYTES

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE records (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        boot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER,
        start INTEGER,
        up INTEGER NOT NULL,
        dur INTEGER NOT NULL,
        received_at REAL NOT NULL,
        fw TEXT NOT NULL,
        board TEXT NOT NULL,
        sensors TEXT NOT NULL,
        err TEXT,
        UNIQUE (node, boot, seq)
    );
    CREATE INDEX records_start ON records (start);
    CREATE INDEX records_node_start ON records (node, start);
    CREATE INDEX records_untimed ON records (node, boot) WHERE start IS NULL;
    CREATE TABLE readings (
        record_id INTEGER NOT NULL REFERENCES records (id),
        quantity TEXT NOT NULL,
        avg REAL,
        min REAL,
        max REAL,
        n INTEGER,
        unit TEXT NOT NULL,
        flags TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (record_id, quantity)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        code TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE nodes (
        node TEXT PRIMARY KEY,
        online INTEGER,
        boot INTEGER,
        fw TEXT,
        up INTEGER,
        rssi INTEGER,
        status_at REAL,
        last_seen REAL
    );
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    """,
    # 2: the database's id (acknowledgements carry it), the nodes' dropped count, alarms
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('db_id', lower(hex(randomblob(8))));
    INSERT INTO meta (key, value) VALUES ('created_at', strftime('%s', 'now'));
    ALTER TABLE nodes ADD COLUMN dropped INTEGER;
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        code TEXT NOT NULL,
        active INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    """,
    # 3: forwarding upstream: a cursor per target, the batches a target refused
    """
    CREATE TABLE forward_cursors (
        target TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL DEFAULT 0,
        last_success REAL,
        last_error TEXT,
        updated_at REAL
    );
    CREATE TABLE forward_dead_letters (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        at REAL NOT NULL,
        status INTEGER,
        reason TEXT NOT NULL
    );
    CREATE INDEX forward_dead_letters_target ON forward_dead_letters (target, id);
    """,
    # 4: the bounded store (retention.py): the record id high-water mark of pruning; the switch to
    # incremental auto-vacuum is done outside the transaction (`_convert_to_incremental`)
    """
    INSERT OR IGNORE INTO meta (key, value) VALUES ('pruned_upto', '0');
    """,
    # 5: dead letters by node with their size (their own budgets, retention.py); retained messages
    # handled once. Older dead letters keep node NULL: they count in the total budget and age out.
    """
    ALTER TABLE dead_letters ADD COLUMN node TEXT;
    ALTER TABLE dead_letters ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE dead_letters SET size = length(payload);
    CREATE INDEX dead_letters_node ON dead_letters (node, id);
    CREATE TABLE retained_seen (
        topic TEXT PRIMARY KEY,
        digest BLOB NOT NULL,
        at REAL NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: An older store at most this big is converted to incremental auto-vacuum by one VACUUM when it is
#: upgraded. VACUUM writes the whole file twice (a copy, then back through the WAL): bench/store.py
#: measures it at about 3 times the quick_check every start does. At the 10 MB/s an SD card of
#: speed class 10 writes at least, 256 MB take under a minute, inside systemd's 90 s for a start.
VACUUM_AT_UPGRADE_MAX = 256 * 1024 * 1024


class StoreError(Exception):
    pass


@dataclass(frozen=True)
class Reading:
    """One quantity of one record."""

    node: str
    boot: int
    seq: int
    start: int | None
    dur: int
    quantity: str
    avg: float | None
    min: float | None
    max: float | None
    n: int | None
    unit: str
    flags: tuple[str, ...]

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


_UNITS = {q.key: q.unit for q in QUANTITIES.values()}
_NO_VALUE = (None, None, None, None)  # avg, min, max, n of a quantity without a value
#: Rows in one INSERT: at most 999 parameters (SQLite builds before 3.32), and few statements
#: to prepare (a last, shorter statement has each count up to this one).
_ROWS_PER_INSERT = 32
#: Multi-row INSERT statements by (insert, rows).
_MULTI_ROW_SQL: dict[tuple[str, int], str] = {}


def _order(quantity: str) -> int:
    return list(QUANTITIES).index(quantity) if quantity in QUANTITIES else len(QUANTITIES)


class Store:
    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        #: counter increments made inside `transaction()`, written once just before its COMMIT
        #: (a group of hundreds of messages bumps the same few counters hundreds of times)
        self._counts: dict[str, int] | None = None
        #: nodes that got dead letters since the pruner last looked at their budgets
        self.dead_letter_nodes: set[str | None] = set()
        if readonly:
            if not self.path.exists():
                raise StoreError(f"{self.path}: no store there (has the gateway run yet?)")
            uri = f"file:{quote(str(self.path.absolute()))}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            if not self.path.parent.is_dir():
                raise StoreError(f"{self.path}: the folder {self.path.parent} does not exist")
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA busy_timeout = 5000")
            self.db.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                # Only possible before the first table (and before WAL mode writes the header): a
                # new store can give the pages that pruning frees back to the file system.
                self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.db.execute("PRAGMA journal_mode = WAL")
                # A commit is on disk when it returns: the gateway may acknowledge what it committed.
                self.db.execute("PRAGMA synchronous = FULL")
            self._migrate()
            if not readonly and self._meta("db_id") is None:  # only if someone deleted it
                self.db.execute("INSERT INTO meta (key, value) VALUES ('db_id', lower(hex(randomblob(8))))")
            self.db_id: str = self._meta("db_id") or ""
        except BaseException:
            self.db.close()  # a corrupt file is moved aside next: let go of it
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this gateway's {SCHEMA_VERSION}"
            )
        if version == SCHEMA_VERSION:
            return
        if self.readonly:
            raise StoreError(f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}")
        with self.transaction():
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {step + 1}")
        if version > 0:
            self._convert_to_incremental()

    @property
    def incremental(self) -> bool:
        """Freed pages can be given back to the file system (auto_vacuum = INCREMENTAL)."""
        return self.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2

    def _convert_to_incremental(self) -> None:
        """Part of migration 4 for an older store: switch it to incremental auto-vacuum, which only
        a VACUUM (a rewrite of the whole file) can do. Skipped for a big file (it would hold up the
        start for minutes) or without room for the copy; such a store stays as big as it is, reuses
        the pages pruning frees, and can be converted by hand (docs/operator.md)."""
        if self.incremental:
            return
        size = self.path.stat().st_size
        free = shutil.disk_usage(self.path.parent).free
        if size > VACUUM_AT_UPGRADE_MAX or free < 2 * size:
            log.warning(
                "%s: not converted to incremental auto-vacuum (%d MB, %d MB free): the file keeps its "
                "size and reuses freed pages; to let it shrink, stop the gateway and run "
                "sqlite3 %s 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;'",
                self.path, size // 10**6, free // 10**6, self.path,
            )
            return
        started = time.monotonic()
        try:
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.db.execute("VACUUM")
        except sqlite3.OperationalError as e:  # a full disk: VACUUM rolls back, nothing is lost
            log.warning("%s: VACUUM to convert to incremental auto-vacuum failed: %s", self.path, e)
            return
        log.info("%s: converted to incremental auto-vacuum in %.1f s (%d MB)",
                 self.path, time.monotonic() - started, size // 10**6)

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: committed (and fsynced) at the end, rolled back on an exception, also
        when the COMMIT itself fails (disk full, I/O error): then nothing of it is in the file."""
        self.db.execute("BEGIN IMMEDIATE")
        self._counts = {}
        try:
            yield
            self._write_counts()
            self._counts = None
            self.db.execute("COMMIT")
        except BaseException:
            self._counts = None  # the increments go with the rest
            if self.db.in_transaction:  # SQLite may have rolled back by itself already
                self.db.execute("ROLLBACK")
            raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo only this block's writes if it raises."""
        counts = None if self._counts is None else dict(self._counts)
        self.db.execute("SAVEPOINT one")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO one")
            self.db.execute("RELEASE one")
            self._counts = counts  # its counter increments too (also any written meanwhile: rolled back)
            raise
        self.db.execute("RELEASE one")

    def _write_counts(self) -> None:
        if self._counts:
            self.db.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                self._counts.items(),
            )
            self._counts.clear()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        if self.db.in_transaction:
            yield
        else:
            with self.transaction():
                yield

    # -- writing ---------------------------------------------------------------------------------

    def bump(self, name: str, by: int = 1) -> None:
        if not by:
            return
        if self._counts is not None:  # inside transaction(): written at its commit
            self._counts[name] = self._counts.get(name, 0) + by
            return
        with self._writing():
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def add_batch(self, batch: Batch, received_at: float | None = None) -> Added:
        """Store a valid batch's records; records already stored count as duplicates."""
        return self.add_batches([(batch, time.time() if received_at is None else received_at)])[0]

    def add_batches(self, batches: Sequence[tuple[Batch, float]]) -> list[Added]:
        """Store valid batches (each with when it was received), in order, as `add_batch` one
        after the other would; what each did with its records.

        A few statements for all of them (the writer passes a whole group): one look per node and
        boot for the seqs already held, one INSERT per `_ROWS_PER_INSERT` rows. A statement per
        batch and per row was most of the time a batch took, also because SQLite lets go of the
        GIL at every statement, to the MQTT thread, and waits to get it back."""
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for batch, _ in batches:
            seqs = [rec.seq for rec in batch.records]
            if not seqs:
                continue
            span = spans.get((batch.node, batch.boot))
            lo, hi = min(seqs), max(seqs)
            spans[batch.node, batch.boot] = (lo, hi) if span is None else (min(span[0], lo), max(span[1], hi))
        out: list[Added] = []
        with self._writing():
            held = {
                key: {seq for (seq,) in self.db.execute(
                    "SELECT seq FROM records WHERE node = ? AND boot = ? AND seq BETWEEN ? AND ?", (*key, lo, hi))}
                for key, (lo, hi) in spans.items()
            }
            next_id = self._next_record_id()
            # The rows go flat, one parameter after the other, as a multi-row INSERT takes them.
            records: list[object] = []
            readings: list[object] = []
            stored_to: set[tuple[str, int]] = set()  # (node, boot) with records stored now
            seen: dict[str, tuple[float, int | None]] = {}  # node -> (last received, last `dropped` said)
            for batch, received_at in batches:
                node, boot, held_now = batch.node, batch.boot, held.setdefault((batch.node, batch.boot), set())
                sensors = json.dumps(dict(batch.sensors), separators=(",", ":"), sort_keys=True)
                units = {**_UNITS, **batch.units}  # as `batch.unit(q)`, looked up once
                stored = 0
                for rec in batch.records:
                    if rec.seq in held_now:
                        continue
                    held_now.add(rec.seq)  # a seq twice: the second is a duplicate
                    err = json.dumps(dict(rec.err), separators=(",", ":"), sort_keys=True) if rec.err else None
                    records += (next_id, node, boot, rec.seq, rec.ts, rec.ts, rec.up, rec.dur,
                                received_at, batch.fw, batch.board, sensors, err)
                    values, flags = rec.values, rec.flags
                    for q, v in values.items():  # a plain number has only avg: min, max, n stay NULL
                        if q in QUANTITIES:
                            fl = flags.get(q)
                            readings += (next_id, q, *(v or _NO_VALUE), units[q], ",".join(fl) if fl else "")
                    for q, fl in flags.items():  # flags without a value
                        if q not in values and q in QUANTITIES:
                            readings += (next_id, q, *_NO_VALUE, units[q], ",".join(fl))
                    next_id += 1
                    stored += 1
                if stored:
                    stored_to.add((node, boot))
                last = seen.get(node)
                seen[node] = (received_at if last is None else max(last[0], received_at),
                              batch.dropped if batch.dropped is not None or last is None else last[1])
                out.append(Added(stored, len(batch.records) - stored))
            self._insert_rows(
                "INSERT INTO records (id, node, boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err)",
                13, records,
            )
            self._insert_rows("INSERT INTO readings (record_id, quantity, avg, min, max, n, unit, flags)", 8, readings)
            for node, boot in stored_to:
                self._derive_start(node, boot)
            self.db.executemany(
                "INSERT INTO nodes (node, last_seen, dropped) VALUES (?, ?, ?)"
                " ON CONFLICT (node) DO UPDATE SET"
                " last_seen = coalesce(max(last_seen, excluded.last_seen), excluded.last_seen),"
                " dropped = coalesce(excluded.dropped, dropped)",
                [(node, at, dropped) for node, (at, dropped) in seen.items()],
            )
            self.bump("batches", len(batches))
            self.bump("records", sum(a.stored for a in out))
            self.bump("duplicates", sum(a.duplicates for a in out))
        return out

    def _insert_rows(self, insert: str, width: int, flat: list[object]) -> None:
        """`insert` ("INSERT INTO t (a, b)") of the rows in `flat` (`width` values each, one row
        after the other), `_ROWS_PER_INSERT` rows per statement: a statement per row costs a third
        more in SQLite. Fixed-size statements: SQLite prepares each once (the connection caches them)."""
        step = _ROWS_PER_INSERT * width
        for i in range(0, len(flat), step):
            part = flat[i:i + step] if len(flat) > step else flat
            rows = len(part) // width
            sql = _MULTI_ROW_SQL.get((insert, rows))
            if sql is None:
                marks = "(" + ", ".join("?" * width) + ")"
                sql = _MULTI_ROW_SQL[insert, rows] = f"{insert} VALUES {', '.join([marks] * rows)}"
            self.db.execute(sql, part)

    def _next_record_id(self) -> int:
        # Above every id there is and every id ever pruned: SQLite alone would start again at 1
        # once all records were pruned, behind the forward cursors, which would then skip them.
        return self.db.execute(
            "SELECT max(coalesce((SELECT max(id) FROM records), 0),"
            " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pruned_upto'), 0)) + 1"
        ).fetchone()[0]

    def _derive_start(self, node: str, boot: int) -> None:
        # Records of a boot without `ts` get their start from a record of the same boot that has
        # one (payload.md: "with one record of the same boot that has ts, any ts of that boot
        # follows"): the next such record, else the previous one. Runs whenever records of that
        # boot arrive, so a later batch with a clock fills in the earlier records.
        ref = """(SELECT ref.ts + (r.up - ref.up) FROM records AS ref
                  WHERE ref.node = r.node AND ref.boot = r.boot AND ref.ts IS NOT NULL
                  AND ref.seq {op} r.seq ORDER BY ref.seq {order} LIMIT 1)"""
        self.db.execute(
            f"UPDATE records AS r SET start = coalesce({ref.format(op='>', order='ASC')}, "
            f"{ref.format(op='<', order='DESC')}) WHERE r.node = ? AND r.boot = ? AND r.start IS NULL",
            (node, boot),
        )

    def add_dead_letter(
        self, topic: str, payload: bytes, code: str, reason: str, received_at: float | None = None,
        node: str | None = None, *, count: bool = True, size: int | None = None,
    ) -> int:
        """Keep a rejected message (or a batch's refused records) with its reason; counted as
        `rejected.<code>` unless `count` is False (the caller counts refused records itself).
        `size`: the message's size when `payload` is already only its first bytes."""
        received_at = time.time() if received_at is None else received_at
        size = max(len(payload), size or 0)
        if size > DEAD_LETTER_MAX:
            reason += f" (kept the first {DEAD_LETTER_MAX} of {size} bytes)"
            payload = payload[:DEAD_LETTER_MAX]
        with self._writing():
            cur = self.db.execute(
                "INSERT INTO dead_letters (received_at, topic, payload, code, reason, node, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (received_at, topic, payload, code, reason, node, len(payload)),
            )
            if count:
                self.bump(f"rejected.{code}")
        self.dead_letter_nodes.add(node)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def dead_letter(self, id: int) -> "DeadLetter | None":
        row = self.db.execute(
            f"SELECT {self._DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (id,)).fetchone()
        return None if row is None else DeadLetter(*row)

    def update_dead_letter(self, id: int, payload: bytes, code: str, reason: str) -> None:
        """What a dead letter still holds after a replay, and why."""
        with self._writing():
            self.db.execute("UPDATE dead_letters SET payload = ?, code = ?, reason = ?, size = ? WHERE id = ?",
                            (payload, code, reason, len(payload), id))

    def delete_dead_letter(self, id: int) -> bool:
        with self._writing():
            return self.db.execute("DELETE FROM dead_letters WHERE id = ?", (id,)).rowcount > 0

    def retained_seen(self, topic: str, digest: bytes) -> bool:
        """This retained message was handled before (the broker hands it over at every subscription)."""
        row = self.db.execute("SELECT digest FROM retained_seen WHERE topic = ?", (topic,)).fetchone()
        return row is not None and row[0] == digest

    def set_retained_seen(self, topic: str, digest: bytes, at: float) -> None:
        with self._writing():
            self.db.execute(
                "INSERT INTO retained_seen (topic, digest, at) VALUES (?, ?, ?) ON CONFLICT (topic)"
                " DO UPDATE SET digest = excluded.digest, at = excluded.at", (topic, digest, at))

    def restore_values(self, batch: Batch) -> int:
        """For records of `batch` that are stored already: write the values the store lacks or
        holds as refused (flag `refused`), as a replayed dead letter brings them after a fix; the
        values it holds are left as they are. Returns how many were written."""
        units = {**_UNITS, **batch.units}
        restored = 0
        with self._writing():
            for rec in batch.records:
                row = self.db.execute("SELECT id FROM records WHERE node = ? AND boot = ? AND seq = ?",
                                      (batch.node, batch.boot, rec.seq)).fetchone()
                if row is None:
                    continue
                have = dict(self.db.execute("SELECT quantity, flags FROM readings WHERE record_id = ?", (row[0],)))
                for q in rec.quantities():
                    fl = rec.flags.get(q, ())
                    if q not in QUANTITIES or REFUSED in fl:
                        continue
                    if q in have and REFUSED not in have[q].split(","):
                        continue
                    v = rec.values.get(q)
                    self.db.execute(
                        "INSERT OR REPLACE INTO readings (record_id, quantity, avg, min, max, n, unit, flags)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (row[0], q, *(v or _NO_VALUE), units[q], ",".join(fl)))
                    restored += 1
        return restored

    def set_status(self, status: Status, received_at: float | None = None, *, live: bool = True) -> None:
        """Record a node's status. `live` is False for a retained message the broker replayed:
        it says what the node last reported, not that the node is there now."""
        received_at = time.time() if received_at is None else received_at
        with self._writing():
            self.db.execute(
                """
                INSERT INTO nodes (node, online, boot, fw, up, rssi, status_at, last_seen)
                VALUES (:node, :online, :boot, :fw, :up, :rssi, :at, :seen)
                ON CONFLICT (node) DO UPDATE SET
                    online = excluded.online,
                    boot = coalesce(excluded.boot, boot),
                    fw = coalesce(excluded.fw, fw),
                    up = coalesce(excluded.up, up),
                    rssi = coalesce(excluded.rssi, rssi),
                    status_at = excluded.status_at,
                    last_seen = coalesce(max(last_seen, excluded.last_seen), last_seen, excluded.last_seen)
                """,
                {
                    "node": status.node, "online": int(status.online), "boot": status.boot,
                    "fw": status.fw, "up": status.up, "rssi": status.rssi, "at": received_at,
                    "seen": received_at if live else None,
                },
            )
            self.bump("status")

    def add_alarm(self, at: float, code: str, active: bool, reason: str) -> None:
        """Keep an alarm; a raised one (`active`) is counted as `alarm.<code>`."""
        with self._writing():
            self.db.execute(
                "INSERT INTO alarms (at, code, active, reason) VALUES (?, ?, ?, ?)",
                (at, code, int(active), reason),
            )
            if active:
                self.bump(f"alarm.{code}")

    # -- pruning (retention.py decides what; these do it, inside the caller's transaction) --------

    def oldest_records(self, limit: int) -> list[tuple[int, float]]:
        """(id, received_at) of the `limit` records with the lowest ids: the next to prune."""
        return self.db.execute("SELECT id, received_at FROM records ORDER BY id LIMIT ?", (limit,)).fetchall()

    def oldest_dead_letters(self, limit: int) -> list[tuple[int, float]]:
        """(id, received_at) of the `limit` oldest dead letters."""
        return self.db.execute("SELECT id, received_at FROM dead_letters ORDER BY id LIMIT ?", (limit,)).fetchall()

    def record_id_span(self) -> tuple[int, int] | None:
        """(lowest, highest) record id, None when there are no records."""
        lo, hi = self.db.execute("SELECT min(id), max(id) FROM records").fetchone()
        return None if lo is None else (lo, hi)

    def drop_records(self, upto: int, after: int = 0) -> Pruned:
        """Delete the records with ids up to `upto` and their readings; `after` is a forward cursor
        (the lowest of the enabled targets'): records above it count as not yet forwarded
        everywhere. Ids stay monotonic: see `pruned_upto`."""
        with self._writing():
            n, unforwarded, first = self.db.execute(
                "SELECT count(*), count(*) FILTER (WHERE id > ?), min(id) FROM records WHERE id <= ?",
                (after, upto),
            ).fetchone()
            self.db.execute("DELETE FROM readings WHERE record_id <= ?", (upto,))
            self.db.execute("DELETE FROM records WHERE id <= ?", (upto,))
            self.db.execute(
                "INSERT INTO meta (key, value) VALUES ('pruned_upto', ?) ON CONFLICT (key) DO UPDATE"
                " SET value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                (str(upto),),
            )
        return Pruned(n, unforwarded, first)

    def drop_dead_letters(self, upto: int) -> int:
        """Delete the dead letters with ids up to `upto`; returns how many."""
        with self._writing():
            return self.db.execute("DELETE FROM dead_letters WHERE id <= ?", (upto,)).rowcount

    def forward_cursor_min(self, targets: tuple[str, ...]) -> int | None:
        """The lowest `last_id` of these targets (0 for one that has not run yet); None without
        targets: then nothing waits to be forwarded."""
        if not targets:
            return None
        marks = ",".join("?" * len(targets))
        cursors = dict(self.db.execute(
            f"SELECT target, last_id FROM forward_cursors WHERE target IN ({marks})", targets))
        return min(cursors.get(t, 0) for t in targets)

    @property
    def pruned_upto(self) -> int:
        return int(self._meta("pruned_upto") or 0)

    def pages(self) -> tuple[int, int, int]:
        """(page size, pages in the file, free pages)."""
        size = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return size, count, free

    def used_bytes(self) -> int:
        """Bytes of the pages in use: the file without its free pages (what the bound compares;
        the write-ahead log, at most a few MB between checkpoints, is not counted)."""
        size, count, free = self.pages()
        return (count - free) * size

    def bounded_bytes(self) -> int:
        """What `[store] max_bytes` bounds: the pages in use without the dead letters' (they have
        budgets of their own, retention.py)."""
        return self.used_bytes() - self.dead_letter_pages_bytes()

    def reclaim(self, pages: int) -> int:
        """Give up to `pages` free pages back to the file system (the file shrinks), outside a
        transaction; only an incremental auto-vacuum store can. Returns the pages given back."""
        if pages <= 0 or not self.incremental:
            return 0
        before = self.pages()[2]
        # executescript steps the pragma to its end; execute() would free one page per call
        self.db.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
        return before - self.pages()[2]

    # -- reading ---------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        if self._counts:  # inside a transaction: what it has counted so far, too
            self._write_counts()
        return dict(self.db.execute("SELECT name, value FROM counters ORDER BY name"))

    def counts(self) -> Counts:
        c = self.counters()
        one = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        return Counts(
            records=one("SELECT count(*) FROM records"),
            readings=one("SELECT count(*) FROM readings"),
            dead_letters=one("SELECT count(*) FROM dead_letters"),
            nodes=one("SELECT count(*) FROM nodes"),
            duplicates=c.get("duplicates", 0),
            rejected={k.removeprefix("rejected."): v for k, v in c.items() if k.startswith("rejected.")},
        )

    _READING_SQL = """
        SELECT r.node, r.boot, r.seq, r.start, r.dur, g.quantity, g.avg, g.min, g.max, g.n, g.unit, g.flags
        FROM readings AS g JOIN records AS r ON r.id = g.record_id
    """

    @staticmethod
    def _reading(row: tuple) -> Reading:
        node, boot, seq, start, dur, quantity, avg, lo, hi, n, unit, flags = row
        return Reading(node, boot, seq, start, dur, quantity, avg, lo, hi, n, unit,
                       tuple(f for f in flags.split(",") if f))

    def readings(
        self, node: str | None = None, since: float | None = None, quantity: str | None = None
    ) -> list[Reading]:
        """Readings of records whose interval starts at or after `since` (records without a known
        start are left out), by node, start, then quantity in the contract's order."""
        where, args = ["r.start IS NOT NULL"], list[object]()
        if since is not None:
            where.append("r.start >= ?")
            args.append(since)
        if node is not None:
            where.append("r.node = ?")
            args.append(node)
        if quantity is not None:
            where.append("g.quantity = ?")
            args.append(quantity)
        rows = self.db.execute(self._READING_SQL + " WHERE " + " AND ".join(where), args)
        out = [self._reading(row) for row in rows]
        out.sort(key=lambda g: (g.node, g.start, g.boot, g.seq, _order(g.quantity)))
        return out

    def untimed(self, node: str | None = None, since: float | None = None) -> int:
        """Records with no known start yet (received at or after `since`)."""
        sql, args = "SELECT count(*) FROM records WHERE start IS NULL", list[object]()
        if node is not None:
            sql += " AND node = ?"
            args.append(node)
        if since is not None:
            sql += " AND received_at >= ?"
            args.append(since)
        return self.db.execute(sql, args).fetchone()[0]

    def implausible(self, nodes: Sequence[str], since: float | None, until: float | None, now: float) -> int:
        """Records of `nodes` received in [since, until) (None: open) whose start is known but whose
        interval or counters an older gateway stored outside the contract's plausible values: the
        rule of plausible.record, in SQL (a TEXT or an infinity fails every BETWEEN, as there)."""
        if not nodes:
            return 0
        where, args = [f"node IN ({','.join('?' * len(nodes))})"], list[object](nodes)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        if until is not None:
            where.append("received_at < ?")
            args.append(until)
        return self.db.execute(
            "SELECT count(*) FROM records WHERE start IS NOT NULL AND " + " AND ".join(where) +
            " AND NOT (start BETWEEN ? AND ? AND dur BETWEEN 1 AND ? AND boot BETWEEN 0 AND ?"
            " AND seq BETWEEN 0 AND ?)",
            (*args, TS_MIN, now + FUTURE_MARGIN_S, DUR_MAX, BOOT_MAX, SEQ_MAX),
        ).fetchone()[0]

    def latest(self) -> list[Latest]:
        """The newest record of every node that has one, by node id: what a live table shows."""
        # Driven from `nodes` (every node that sent a batch has a row): one index lookup on
        # UNIQUE (node, boot, seq) per node, instead of a walk over all records.
        recs = self.db.execute(
            """
            SELECT r.id, r.node, r.boot, r.seq, r.start, r.dur, r.received_at
            FROM nodes AS n JOIN records AS r
              ON r.id = (SELECT id FROM records WHERE node = n.node ORDER BY boot DESC, seq DESC LIMIT 1)
            ORDER BY n.node
            """
        ).fetchall()
        out = []
        for rid, node, boot, seq, start, dur, received_at in recs:
            rows = self.db.execute(self._READING_SQL + " WHERE g.record_id = ?", (rid,))
            readings = sorted((self._reading(row) for row in rows), key=lambda g: _order(g.quantity))
            out.append(Latest(node, boot, seq, start, dur, received_at, {g.quantity: g for g in readings}))
        return out

    def nodes(self) -> list[Node]:
        rows = self.db.execute(
            "SELECT node, online, boot, fw, up, rssi, status_at, last_seen, dropped FROM nodes ORDER BY node"
        )
        return [Node(r[0], None if r[1] is None else bool(r[1]), *r[2:]) for r in rows]

    def alarms(self, limit: int = 100) -> list[AlarmRow]:
        """The newest alarms, oldest first."""
        rows = self.db.execute(
            "SELECT id, at, code, active, reason FROM alarms ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [AlarmRow(i, at, code, bool(active), reason) for i, at, code, active, reason in reversed(rows)]

    @property
    def created_at(self) -> float | None:
        value = self._meta("created_at")
        return None if value is None else float(value)

    _DEAD_LETTER_COLUMNS = "id, received_at, topic, payload, code, reason, node, size"

    def dead_letters(self, limit: int = 100, node: str | None = None, code: str | None = None,
                     before: int | None = None) -> list[DeadLetter]:
        """The newest dead letters first (of `node`, with `code`, with ids below `before`)."""
        where, args = [], list[object]()
        for cond, value in (("node = ?", node), ("code = ?", code), ("id < ?", before)):
            if value is not None:
                where.append(cond)
                args.append(value)
        sql = f"SELECT {self._DEAD_LETTER_COLUMNS} FROM dead_letters"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [DeadLetter(*r) for r in rows]

    # -- the dead letters' own budgets (retention.py) --------------------------------------------

    def dead_letter_usage(self, node: str | None = None, *, every: bool = False) -> tuple[int, int]:
        """(dead letters, bytes of their payloads) of `node` (None: those of no node), or of all
        with `every`."""
        sql = "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters"
        row = self.db.execute(sql if every else sql + " WHERE node IS ?", () if every else (node,)).fetchone()
        return row[0], row[1]

    def dead_letter_sizes(self, node: str | None = None, *, every: bool = False,
                          limit: int = 100_000) -> list[tuple[int, int]]:
        """(id, size) of the oldest dead letters of `node` (or of all), oldest first."""
        if every:
            return self.db.execute("SELECT id, size FROM dead_letters ORDER BY id LIMIT ?", (limit,)).fetchall()
        return self.db.execute("SELECT id, size FROM dead_letters WHERE node IS ? ORDER BY id LIMIT ?",
                               (node, limit)).fetchall()

    def drop_dead_letters_of(self, node: str | None, upto: int) -> int:
        """Delete `node`'s dead letters with ids up to `upto`; returns how many."""
        with self._writing():
            return self.db.execute("DELETE FROM dead_letters WHERE node IS ? AND id <= ?", (node, upto)).rowcount

    def dead_letter_pages_bytes(self) -> int:
        """Bytes of the pages the dead letters (table and index) take in the file: what the
        readings' bound leaves out. From SQLite's dbstat table where it is built in (Debian's and
        Raspberry Pi OS's library); else estimated from their sizes (a payload near a page's size
        takes two)."""
        try:
            row = self.db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('dead_letters', 'dead_letters_node')"
                " AND aggregate = TRUE").fetchone()
            return int(row[0] or 0)
        except sqlite3.OperationalError:  # no dbstat in this SQLite
            count, size = self.dead_letter_usage(every=True)
            return 2 * size + 64 * count

    def drop_retained_seen(self, before: float) -> int:
        with self._writing():
            return self.db.execute("DELETE FROM retained_seen WHERE at < ?", (before,)).rowcount

    # -- reading for the status page and /metrics (gateway/http.py) ---------------------------------

    def boots(self) -> list[tuple[str, int, int, int, int]]:
        """(node, boot, min seq, max seq, records) per boot of every node, by node then boot: the
        records missing inside a boot are max - min + 1 - records. One pass over the (node, boot,
        seq) index, no table rows read."""
        return self.db.execute(
            "SELECT node, boot, min(seq), max(seq), count(*) FROM records GROUP BY node, boot ORDER BY node, boot"
        ).fetchall()

    def readings_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM readings").fetchone()[0]

    def active_alarms(self) -> list[AlarmRow]:
        """The newest row of each alarm code whose newest row says raised."""
        rows = self.db.execute(
            "SELECT id, at, code, active, reason FROM alarms AS a"
            " WHERE id = (SELECT max(id) FROM alarms WHERE code = a.code) AND active = 1 ORDER BY code"
        ).fetchall()
        return [AlarmRow(i, at, code, bool(active), reason) for i, at, code, active, reason in rows]

    def series(self, node: str, since: float, quantities: tuple[str, ...]) -> list[tuple[int, str, float | None]]:
        """(start, quantity, avg) of a node's records starting at or after `since`, by start:
        what a plot of the node's last hours draws. Uses the (node, start) index."""
        marks = ",".join("?" * len(quantities))
        return self.db.execute(
            "SELECT r.start, g.quantity, g.avg FROM records AS r JOIN readings AS g ON g.record_id = r.id"
            f" WHERE r.node = ? AND r.start >= ? AND g.quantity IN ({marks}) ORDER BY r.start, r.boot, r.seq",
            (node, since, *quantities),
        ).fetchall()

    def newest_start(self, node: str, upto: float | None = None) -> int | None:
        """The latest interval start of a node's records (None: no timed record), of those
        starting at or before `upto` when given (an older store may hold starts far in the future)."""
        if upto is None:
            return self.db.execute("SELECT max(start) FROM records WHERE node = ?", (node,)).fetchone()[0]
        return self.db.execute("SELECT max(start) FROM records WHERE node = ? AND start <= ?",
                               (node, upto)).fetchone()[0]
