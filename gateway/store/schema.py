"""The store's schema: the tables, their migrations, the file's auto-vacuum mode.

Times are UTC Unix seconds. The schema's version is kept in ``PRAGMA user_version``; opening a
store for writing applies the missing steps of `MIGRATIONS` in order, opening one read-only refuses
a version this code does not know.

Schema, version 11 (version 1 lacked `meta`, `alarms` and `nodes.dropped`; version 2 the
`forward_*` tables; version 3 lacked `meta.pruned_upto` and incremental auto-vacuum; version 4
`dead_letters.node` and `.size` and `retained_seen`; version 5 `nodes.mode` and `.cfg`, `events`,
`node_config` and `commands`; version 6 `rollouts` and `rollout_nodes`; version 7
`rollout_nodes.first_offered_at`; version 8 the index `records_node_id` and `nodes.via`, `.held`;
version 9 `envelopes`; up to version 10 a record was a row of a `records` table with its envelope,
and each of its readings a row of `readings`: migration 11 moves them into `recs`, store/compact.py)::

    recs           one row per interval record a node measured, its readings in it; (node, boot,
                   seq) is unique. About 140 bytes with the 12 quantities, indexes included
                   (bench/store.py), against about 680 in version 9.
      id           INTEGER PRIMARY KEY  the record's id: forward cursors and pruning follow it
      node         INTEGER  -> nodes.id
      boot         INTEGER  the node's boot counter
      seq          INTEGER  sequence number within the boot
      ts           INTEGER  interval start as the node sent it; NULL while its clock was not known
      start        INTEGER  interval start: `ts`, or, when that is NULL, derived from the next (else
                            the previous) record of the same boot that has a `ts`:
                            start = ts' + up - up'; NULL until such a record arrives
      up           INTEGER  seconds since boot at the interval start
      dur          INTEGER  interval length, seconds
      received_at  REAL     when the gateway received the batch
      env          INTEGER  -> boots.id: the envelope of the record's batch (fw, board, sensors, units)
      err          TEXT     JSON object: role -> failed reads in the interval; NULL when none
      nv           INTEGER  how many readings `vals` holds (counts without reading them)
      shape        INTEGER  -> shapes.id: which quantities the record has and how each is kept
      vals         BLOB     the readings' fields (store/values.py): per quantity the node's
                            [avg, min, max, n] (a plain number: avg only; LA10, LA50, LA90, cov,
                            LZeq since the noise pipeline), or no value (the node had no valid
                            sample: its flags say why); its quality flags. Every value comes back
                            as exactly the float it was: a decimal as fixed point (M / 10**k), any
                            other float as its 8 bytes; what the shape cannot say (a quantity not
                            in the contract, a unit other than the boot's) as JSON after the fields
      a reading's unit is its boot's (`boots.units`), else the contract's

    records        a VIEW: version 10's table, for a person's SQL: id, node (the node id as TEXT),
                   boot, seq, ts, start, up, dur, received_at, fw, board, sensors, err. The
                   readings are only in `recs.vals`: `meetkit-gateway readings` and `export` show them

    boots          the envelopes of the nodes' batches: one row per node boot (one more whenever a
                   batch of the same boot carried another envelope), kept while a record of that
                   boot is (`Store.envelope_of` reads it)
      id           INTEGER PRIMARY KEY AUTOINCREMENT (never used again: readers cache rows by id)
      node         INTEGER  -> nodes.id
      boot         INTEGER
      fw, board    TEXT     firmware version and board file of the batch
      sensors      TEXT     JSON object: sensor type per role (for per-type corrections)
      units        TEXT     JSON object: unit per quantity, as the batch gave them

    shapes         the shapes of records' `vals` (store/values.py): few, as a node sends the same
                   quantities in the same ranges
      id INTEGER PRIMARY KEY, heads BLOB UNIQUE (a bit mask of the quantities, then one byte per
      quantity: how its fields are kept, its decimals, whether flags follow)

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
      id           INTEGER PRIMARY KEY  what `recs` and `boots` refer to (version 11)
      node         TEXT UNIQUE  the node id
      online       INTEGER  1/0 from the last status message (0 after its last will); NULL if none
      boot, fw, up, rssi    from the last status message that carried them
      status_at    REAL     when the last status message was received
      last_seen    REAL     when the node last published (a batch or a live status; a retained
                            status replayed by the broker does not count)
      dropped      INTEGER  records the node's spool dropped by policy (full), ever: the `dropped`
                            of the last batch that carried it; NULL if none did
      mode         TEXT     normal, trial or safe: from the last status that said it; NULL if none
      cfg          INTEGER  the configuration version the node runs: from the last status (`cfg`)
                            or config event (`version`) that said it; NULL if none
      via, held    INTEGER  from the last status that said them (a region, docs/payload.md "Safe in
                            the region"): the index in its broker list of the broker it is on (0:
                            its own gateway's), the records its spool holds not yet safe; NULL if none

    events         what the nodes reported on <prefix>/<node>/event (docs/payload.md, "Events"),
                   as received and checked; the newest `EVENTS_KEPT` per node and kind are kept
                   (store/fleet.py), crash reports `CRASHES_KEPT`
      id, node TEXT, kind TEXT (config, ota, cmd, crash, safe_mode, selftest),
      state        TEXT     the event's `state` (ota: accepted, refused, installed, proved,
                            rolled_back; config, cmd, selftest: refused), NULL when it has none
      at           REAL     when the gateway received it
      body         TEXT     the event, JSON, as the node sent it

    node_config    the configuration each node is sent (gateway/configpub.py), one row per node
                   the register has configuration for
      node         TEXT PRIMARY KEY
      version      INTEGER  the version of the wanted configuration; counts up per node; 0 while
                            none could be made
      digest       TEXT     HMAC-SHA256 (node key) of the configuration: tells a change without
                            keeping a secret (a Wi-Fi or broker password) in the store
      shown        TEXT     JSON: the configuration with every password left out, for the page,
                            /api/nodes and the CLI
      made_at      REAL     when this version was made
      published_at REAL     when the broker took it (retained); NULL until it did
      problem      TEXT     why the node's configuration cannot be made or sent now (a missing
                            secret or node key, a register that cannot be read); NULL when none

    commands       commands asked of a node (`meetkit-gateway fleet selftest`): the gateway
                   sends each once; the node answers with an event carrying the same id
      id INTEGER PRIMARY KEY (the command's `id`), node TEXT, cmd TEXT (selftest), at REAL
      (asked), sent_at REAL (the broker took it; NULL until then), problem TEXT (why it cannot be
      sent: no node key)

    envelopes      payload v2 (docs/payload.md): a node boot's envelope, which the node sends with the
                   first batch of the boot in each session, for the boot's later batches
      node TEXT, boot INTEGER, PRIMARY KEY (node, boot)
      body         TEXT     JSON: fw, board, sensors, units, keys (the order of the records' values),
                            dec (their decimals)
      at           REAL     when the gateway last received it

    rollouts       staged rollouts of a signed release (`meetkit-gateway fleet update`, gateway/rollouts.py)
      id INTEGER PRIMARY KEY, release TEXT (its version), force INTEGER (1: a downgrade allowed),
      canary INTEGER, wave INTEGER (nodes per stage), created_at REAL, updated_at REAL,
      state        TEXT     running, done, halted (by itself: `reason` says why) or stopped (by
                            the operator)
      stage        INTEGER  the stage being rolled out: 0 the canaries, 1 the first wave, ...
      reason       TEXT     why it halted or stopped; NULL otherwise
      events_seen  INTEGER  events.id of the last event the rollout manager took

    rollout_nodes  one row per node of a rollout
      rollout INTEGER, node TEXT, PRIMARY KEY (rollout, node); stage INTEGER (0 canary, 1.. wave)
      state        TEXT     waiting (its stage has not come), offered, accepted, installed, proved
                            (the event), done (proved, and its status says the release), failed
                            (rolled back, refused, not proved in time: `reason`), skipped (no
                            answer within [ota] answer_within_s: `reason`; not a failure)
      reason       TEXT     the node's reason, or how it ended ("already runs it")
      offers       INTEGER  offers sent (repeated until the node answers)
      offered_at   REAL     the last offer; accepted_at REAL: its "accepted" (the clock of
                            [ota] prove_within_s); updated_at REAL
      first_offered_at REAL the first offer (the clock of [ota] answer_within_s); NULL until then

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
      pruned_upto  the highest record id ever pruned (retention.py): new records get ids above it,
                   so ids only grow even when every record was pruned (forward cursors are ids)
      compact_upto while migration 11 moves the older layout's records: the last id moved (compact.py)

    alarms         what went wrong with the store, newest last (see alarms.py)
      id, at REAL, code TEXT (corrupt_db, disk_full, disk_error), active INTEGER (1 raised,
      0 over), reason TEXT

    forward_cursors   one row per upstream target (gateway/forward/), made on its first run
      target       TEXT PRIMARY KEY  the target's name in gateway.toml
      last_id      INTEGER  id of the last record handed on (sent or dead-lettered)
      last_success REAL     when the target last accepted a batch; NULL if never
      last_error   TEXT     the last failure (cleared by a success); NULL if none
      updated_at   REAL

    forward_dead_letters  batches a target refused for good (a 4xx), with the reason
      id, target TEXT, first_id, last_id INTEGER (record id range of the batch), readings
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

Outside the schema's version: `sensorthings_entities`, the ids a SensorThings target's service
gave its entities, made with CREATE TABLE IF NOT EXISTS when such a target first runs
(store/sensorthings.py says what it holds).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)


class StoreError(Exception):
    pass


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
    # 6: the fleet over the air (issue 15): what a node runs (mode, configuration version), its
    # events, the configuration it is sent (versions), the commands asked of it
    """
    ALTER TABLE nodes ADD COLUMN mode TEXT;
    ALTER TABLE nodes ADD COLUMN cfg INTEGER;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,
        at REAL NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX events_node_kind ON events (node, kind, id);
    CREATE INDEX events_kind ON events (kind, id);
    CREATE TABLE node_config (
        node TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        digest TEXT NOT NULL,
        shown TEXT NOT NULL,
        made_at REAL NOT NULL,
        published_at REAL,
        problem TEXT
    );
    CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        cmd TEXT NOT NULL,
        at REAL NOT NULL,
        sent_at REAL,
        problem TEXT
    );
    """,
    # 7: staged rollouts of signed releases (issue 15): a rollout, its nodes by stage
    """
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        release TEXT NOT NULL,
        force INTEGER NOT NULL,
        canary INTEGER NOT NULL,
        wave INTEGER NOT NULL,
        state TEXT NOT NULL,
        stage INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        events_seen INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE rollout_nodes (
        rollout INTEGER NOT NULL REFERENCES rollouts (id),
        node TEXT NOT NULL,
        stage INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        offers INTEGER NOT NULL DEFAULT 0,
        offered_at REAL,
        accepted_at REAL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (rollout, node)
    ) WITHOUT ROWID;
    """,
    # 8: when a node was first offered the release: one that answers none of the offers within
    # [ota] answer_within_s of it is skipped. A rollout under way at the upgrade counts from its
    # last offer (later than the first: such a node only gets more time).
    """
    ALTER TABLE rollout_nodes ADD COLUMN first_offered_at REAL;
    UPDATE rollout_nodes SET first_offered_at = offered_at WHERE offered_at IS NOT NULL;
    """,
    # 9: a region of gateways (issue 16): a node's records by id, so that its records not yet safe
    # (after the region targets' cursors) are found without reading those already forwarded
    # (store/safe.py); what its status says of failover: `via` and `held`
    """
    CREATE INDEX records_node_id ON records (node, id);
    ALTER TABLE nodes ADD COLUMN via INTEGER;
    ALTER TABLE nodes ADD COLUMN held INTEGER;
    """,
    # 10: payload v2 (issue 17): a node boot's envelope, sent once per session, kept for the boot's
    # later batches (store/envelopes.py)
    """
    CREATE TABLE envelopes (
        node TEXT NOT NULL,
        boot INTEGER NOT NULL,
        body TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (node, boot)
    ) WITHOUT ROWID;
    """,
    # 11: the compact layout (issue 17): a record's readings in one row (`recs.vals`, values.py),
    # its batch's envelope once per boot (`boots`), nodes by a small integer (`nodes.id`). The
    # records of `records` and `readings` are moved into `recs` afterwards, in slices that survive
    # a power cut (compact.py), which then drops them and makes `records` a view.
    """
    CREATE TABLE nodes_new (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL UNIQUE,
        online INTEGER,
        boot INTEGER,
        fw TEXT,
        up INTEGER,
        rssi INTEGER,
        status_at REAL,
        last_seen REAL,
        dropped INTEGER,
        mode TEXT,
        cfg INTEGER,
        via INTEGER,
        held INTEGER
    );
    INSERT INTO nodes_new (node, online, boot, fw, up, rssi, status_at, last_seen, dropped, mode, cfg, via, held)
        SELECT node, online, boot, fw, up, rssi, status_at, last_seen, dropped, mode, cfg, via, held
        FROM nodes ORDER BY node;
    DROP TABLE nodes;
    ALTER TABLE nodes_new RENAME TO nodes;
    CREATE TABLE boots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        node INTEGER NOT NULL REFERENCES nodes (id),
        boot INTEGER NOT NULL,
        fw TEXT NOT NULL,
        board TEXT NOT NULL,
        sensors TEXT NOT NULL,
        units TEXT NOT NULL
    );
    CREATE INDEX boots_node_boot ON boots (node, boot);
    CREATE TABLE shapes (
        id INTEGER PRIMARY KEY,
        heads BLOB NOT NULL UNIQUE
    );
    CREATE TABLE recs (
        id INTEGER PRIMARY KEY,
        node INTEGER NOT NULL,
        boot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER,
        start INTEGER,
        up INTEGER NOT NULL,
        dur INTEGER NOT NULL,
        received_at REAL NOT NULL,
        env INTEGER NOT NULL,
        err TEXT,
        nv INTEGER NOT NULL,
        shape INTEGER NOT NULL,
        vals BLOB NOT NULL,
        UNIQUE (node, boot, seq)
    );
    CREATE INDEX recs_node_start ON recs (node, start);
    CREATE INDEX recs_node_id ON recs (node, id);
    CREATE INDEX recs_untimed ON recs (node, boot) WHERE start IS NULL;
    """,
]
#: what `records` is once the records are in `recs` (compact.py makes it): the older layout's table as a
#: view, for a person's (and a test's) SQL
RECORDS_VIEW = """
    CREATE VIEW records AS
    SELECT r.id AS id, n.node AS node, r.boot AS boot, r.seq AS seq, r.ts AS ts, r.start AS start, r.up AS up,
           r.dur AS dur, r.received_at AS received_at, b.fw AS fw, b.board AS board, b.sensors AS sensors,
           r.err AS err
    FROM recs AS r JOIN nodes AS n ON n.id = r.node JOIN boots AS b ON b.id = r.env
"""
SCHEMA_VERSION = len(MIGRATIONS)

#: An older store at most this big is converted to incremental auto-vacuum by one VACUUM when it is
#: upgraded. VACUUM writes the whole file twice (a copy, then back through the WAL): bench/store.py
#: measures it at about 3 times the quick_check every start does. At the 10 MB/s an SD card of
#: speed class 10 writes at least, 256 MB take under a minute, inside systemd's 90 s for a start.
VACUUM_AT_UPGRADE_MAX = 256 * 1024 * 1024


def migrate(db: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Apply the missing steps of `MIGRATIONS` (in one transaction), or refuse a version this code
    does not know; a store opened read-only must be at `SCHEMA_VERSION` already."""
    from . import compact  # it reads and writes records by the codec, which needs payload's

    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path}: schema version {version} is newer than this gateway's {SCHEMA_VERSION}")
    if version == SCHEMA_VERSION:
        if compact.pending(db):
            if readonly:
                raise StoreError(f"{path}: its records are being moved to the compact layout of schema "
                                 f"{SCHEMA_VERSION} (the gateway does it as it starts); try again when it runs")
            compact.convert(db, path)
        return
    if readonly:
        raise StoreError(f"{path}: schema version {version}, expected {SCHEMA_VERSION}")
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {step + 1}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    compact.convert(db, path)
    if version > 0:
        convert_to_incremental(db, path)


def incremental(db: sqlite3.Connection) -> bool:
    """Freed pages can be given back to the file system (auto_vacuum = INCREMENTAL)."""
    return db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def convert_to_incremental(db: sqlite3.Connection, path: Path) -> None:
    """Part of migration 4 for an older store: switch it to incremental auto-vacuum, which only
    a VACUUM (a rewrite of the whole file) can do. Skipped for a big file (it would hold up the
    start for minutes) or without room for the copy; such a store stays as big as it is, reuses
    the pages pruning frees, and can be converted by hand (docs/operator.md)."""
    if incremental(db):
        return
    size = path.stat().st_size
    free = shutil.disk_usage(path.parent).free
    if size > VACUUM_AT_UPGRADE_MAX or free < 2 * size:
        log.warning(
            "%s: not converted to incremental auto-vacuum (%d MB, %d MB free): the file keeps its "
            "size and reuses freed pages; to let it shrink, stop the gateway and run "
            "sqlite3 %s 'PRAGMA auto_vacuum = INCREMENTAL; VACUUM;'",
            path, size // 10**6, free // 10**6, path,
        )
        return
    started = time.monotonic()
    try:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")
    except sqlite3.OperationalError as e:  # a full disk: VACUUM rolls back, nothing is lost
        log.warning("%s: VACUUM to convert to incremental auto-vacuum failed: %s", path, e)
        return
    log.info("%s: converted to incremental auto-vacuum in %.1f s (%d MB)",
             path, time.monotonic() - started, size // 10**6)
