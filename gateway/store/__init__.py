"""The store: one SQLite file (WAL mode), the gateway's system of record, and the one home of every
SQL statement on it (tests/gateway/test_store_home.py checks that no other module holds one).

`Store` is one class made of a part per concern, each a module here:

    schema        the tables (described there), their migrations, auto-vacuum
    compact       migration 11: schema 9's records and readings moved into `recs`, slice by slice
    values        a record's readings in one BLOB (`recs.vals`) and its shape: exact, compact
    keys          the node ids, boots (envelopes) and shapes a record's row refers to, cached
    base          the connection: open (and migrate), transactions, read snapshots, counters, meta
    rows          what readers get: `Reading` (one type for the CLI, the page, export and the
                  forwarders) and the rows of the other tables
    writes        ingest's writes: batches, status, alarms, retained messages seen, replayed values
    envelopes     payload v2: each node boot's envelope, sent once per session
    dead_letters  what was refused: kept, listed, replayed, and their own budgets
    pruning       dropping the oldest records, the file's pages (what the bound compares)
    readers       queries for the CLI, the status page and /metrics, export
    public        the public page's reads: a node's intervals of a few quantities (gateway/public/)
    cursors       forwarding: each target's cursor, its next readings, its dead letters, its state
    safe          a region of gateways: each node's safe pair, its records not yet safe
    sensorthings  the SensorThings targets' entity ids
    integrity     is the file sound (quick_check), for recovery.py
    fleet         the fleet over the air: the nodes' events, the configuration each is sent, commands
    rollouts      staged rollouts of signed releases: a rollout, its nodes by stage

Times are UTC Unix seconds. A `Store` object is used by one thread at a time; open another `Store`
on the same file for reading from another thread or process (WAL lets readers run beside the
writer)."""

from __future__ import annotations

from .cursors import Cursors
from .dead_letters import DEAD_LETTER_MAX
from .envelopes import Envelopes
from .fleet import FleetState
from .pruning import Pruning
from .public import Public
from .readers import Readers
from .rollouts import Rollouts
from .safe import Safe
from .rows import (AlarmRow, Added, CommandRow, Counts, DeadLetter, EventRow, Latest, Node, NodeConfigRow, Pruned,
                   Reading, RolloutNodeRow, RolloutRow, TargetState)
from .schema import MIGRATIONS, SCHEMA_VERSION, VACUUM_AT_UPGRADE_MAX, StoreError
from .sensorthings import SensorThingsIds
from .writes import Writes


class Store(Writes, Envelopes, Pruning, Readers, Cursors, Safe, SensorThingsIds, FleetState, Rollouts, Public):
    """The store at `path`, opened for writing (made and migrated as needed) or `readonly`."""


__all__ = ["DEAD_LETTER_MAX", "MIGRATIONS", "SCHEMA_VERSION", "VACUUM_AT_UPGRADE_MAX", "Added", "AlarmRow",
           "CommandRow", "Counts", "DeadLetter", "EventRow", "Latest", "Node", "NodeConfigRow", "Pruned", "Reading",
           "RolloutNodeRow", "RolloutRow", "Store", "StoreError", "TargetState"]
