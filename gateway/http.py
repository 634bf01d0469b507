"""The gateway's own small web server: `/healthz`, `/metrics` (Prometheus) and the status page.

Standard library, and prometheus-client for the text format of /metrics. The server itself
(gateway/http_server.py) is one asyncio loop with limits a hostile client cannot get around:
a cap on connections, timeouts for idle connections and slow request heads, a request rate and a
share of the CPU it may use, so that the status page never costs ingest more than that share. Answers from the
store are computed on at most two worker threads, each on its own READ-ONLY connection (WAL lets
it read beside the writer), and served again for `cache_s` (5 s): sixteen pages refreshing as fast
as they can cost the store one computation per answer every 5 s. A store moved aside and started
afresh is simply what the next computation sees.

Endpoints (GET; HEAD works too). Every query string is checked: a key an endpoint does not take,
a key given twice, or a value outside its range (NaN, infinity, a sign, an exponent, anything not
a plain decimal) is a 400 {"error": "..."} that names the parameter.

    /healthz        200 {"status": "ok", "db_id", "schema", "nodes", "alarms": [...]} when the
                    store opens read-only and answers a query; 503 {"status": "error", "reason"}
                    otherwise. Active alarms (disk full, ...) are listed but do not make it 503:
                    alert on `meetkit_alarm_active` instead. Served again for 1 s.
    /metrics        Prometheus text exposition format 0.0.4, written by prometheus-client from
                    `StoreCollector` (cached like the rest), then from `ServerCollector`: the status
                    server's own counters (meetkit_http_*, live).
    /api/nodes      {"now", "tz", "nodes": [...], "targets": [...], "alarms": [...], "counts": {...},
                    "fleet": {"path", "errors", "registered", "never_seen", "unregistered"}}:
                    the fleet table of the status page. Each node has "register": what the
                    fleet register says of it (name, board, installed, lat, lon, height_m, ...;
                    never its notes) or null; nodes of the register the store never heard of
                    are listed too, flagged "never seen"; with a readable register, nodes not
                    in it are flagged "not in the register". Over the air (fleet_status.py): its
                    "mode", "config" {"wanted", "running", "behind", "published", "problem",
                    "shown" (without passwords), "last" (its latest config event but a proof),
                    "trial" (the wanted version's, while on trial), "reverted" (the node put
                    its previous configuration back instead of the wanted one)}, "crash",
                    "crashes", "safe_mode", "selftest", "cmd_refused"; what a node wrote is shown
                    with every password the gateway knows replaced by ***. "rollout": the
                    newest rollout of a release ({"id", "release", "state", "stage", "reason", ...,
                    "nodes": [{"node", "stage", "state", "reason", "offers", ...}]},
                    gateway/rollouts.py) or null.
    /api/series?node=ID&hours=24[&until=UNIX_S][&q=pm25,pm10,...]
                    {"node", "since", "until", "now", "step", "first", "last", "tz", "start": [unix s...],
                    "pm25": [...], "pm10": [...], "LAeq": [...], "LA10": [...], "LA90": [...],
                    "temp": [...], "rh": [...], "press": [...], "units": {...}}: one column per
                    quantity (q: these quantities of the contract instead) aligned with "start"
                    (the record's interval start), null where a record had no value. Up to 24 h
                    every record ("step" 0); beyond, means over buckets of "step" s (10 min up to
                    7 days, 1 h up to 30: sound levels averaged as energy), computed by the store
                    and, being a pass over up to a month of records, served again for 5 minutes.
                    node: 1 to 64 printable characters; hours: 0 < hours <= 720 (default 24);
                    until: from TS_MIN (2026-01-01) to a day from now. Without `until`, the window
                    ends now, or at the node's newest record when it has none in the last
                    `hours` (a node long silent still shows its last day of data).
    /api/node?node=ID
                    {"now", "tz", "node": {its row of /api/nodes}, "record": the newest record whole
                    ({"start", "dur", "boot", "seq", "board", "fw", "sensors", "readings": [{"quantity",
                    "avg", "min", "max", "n", "unit", "flags"}]}) or null, "boots": [{"boot",
                    "first_seq", "last_seq", "records", "missing"}]}: the page's node view; 404 for a
                    node neither heard of nor in the register.
    /api/targets    {"now", "targets": [...]}: the forwarding targets as `targets()` gives them.
    /               the status page: gateway/static/index.html, app.js, style.css and uPlot
                    (gateway/static/vendor/, MIT), all served from memory (read at start, with an
                    ETag): it works offline.

Values of an older store: a store written by an older gateway may hold records the contract now
refuses (a start of 0 or 2**62, a seq or boot of 2**63-1). The page and /metrics leave such values
out (null, no sample), count no sequence gap for such a boot, and flag the node "implausible
values" (see `_finite`, `_start`, `_boot_ok`).

The forwarding side reports its targets through the `targets` callable given to `StatusServer`:
it is called when /metrics, /api/nodes or /api/targets is computed, from a store worker thread,
and must return a list of dicts (missing keys are left out of the output; it must not block long):

    {
        "name": "city-influx",        # str, required: the target's name in gateway.toml
        "kind": "influxdb",           # str: influxdb | mqtt | sensorthings | sensor.community ...
        "queue_rows": 1234,           # int: rows stored and not yet forwarded to this target
        "oldest_age_s": 81.5,         # float | None: age of the oldest row not yet forwarded, s
        "last_success": 1795510800.2, # float | None: unix s of the last successful delivery
        "retries": 17,                # int, ever (counter): attempts that failed and were retried
        "dead_letters": 2,            # int, ever (counter): rows given up on (4xx), with reason
        "sent": 120000,               # int, ever (counter): rows delivered
        "up": True,                   # bool | None: did the last attempt succeed
        "last_error": "HTTP 503",     # str | None: the last failure, for the page (not a metric)
    }

The fleet register (gateway/fleet.py) is read, when it changed, whenever /metrics or /api/nodes is
computed; a register that cannot be read shows its problems there and fails nothing.

Wiring (gateway/service.py): build it next to the writer and start/stop it with the gateway,
stopping it first:

    self.http = StatusServer(config.store.path, config.http.host, config.http.port,
                             targets=lambda: [t.status() for t in self.forwarders],
                             fleet=self.fleet, secrets=self.secrets)
    ... start(): self.http.start()       stop(): self.http.stop() before self.writer.close()
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import mimetypes
import re
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator
from urllib.parse import parse_qsl

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from .config import RegionConfig
from .fleet import Fleet
from .fleet_secrets import FleetSecrets
from .fleet_status import NodeState, as_json, states
from .fleet_view import FleetView, view
from .http_server import HttpServer, Limits, Request, Response
from .rollouts import NODE_STATES, ROLLOUT_STATES
from .payload import BOOT_MAX, FUTURE_MARGIN_S, QUANTITIES, SEQ_MAX, TS_MIN, UP_MAX, VIA_MAX, plausible_ts
from .store import SCHEMA_VERSION, Store, StoreError
from .visitors import UNKNOWN_VISITOR, Visitors

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

#: the quantities the status page plots, in its order
SERIES = ("pm25", "pm10", "LAeq", "LA10", "LA90", "temp", "rh", "press")
#: a node not heard from for this long is flagged `stale` on the page (records are 1 min apart,
#: batches a few minutes)
STALE_S = 15 * 60

Targets = Callable[[], Iterable[dict[str, Any]]]
#: the serving side of releases (ota.Pieces.status): {"served", "bytes", "refused": {reason: n}, ...}
OtaStatus = Callable[[], dict[str, Any]]


# -- /metrics ---------------------------------------------------------------------------------------
# prometheus-client writes the text format (names, label escaping, numbers, HELP and TYPE lines);
# what is here only says which families there are and reads their values at scrape time.


def _family(kind: str, name: str, help: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily | CounterMetricFamily:
    """An empty family. CounterMetricFamily drops a name's `_total` and writes it back: every counter
    here ends in `_total`, so each is exposed under the name written here."""
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, help, labels=labels)


#: counters of the store's `counters` table with a metric of their own: exact name, or a prefix
#: whose rest becomes the label
_COUNTERS = {
    "batches": ("meetkit_batches_total", "Valid batches received.", None),
    "records": ("meetkit_records_stored_total", "Records stored (duplicates not counted).", None),
    "duplicates": ("meetkit_records_duplicate_total", "Records received again and not stored.", None),
    "status": ("meetkit_status_messages_total", "Valid node status messages received.", None),
    "refused": ("meetkit_messages_refused_total",
                "Messages refused because the store could not commit (disk full, I/O error).", None),
    "rejected.": ("meetkit_messages_rejected_total", "Messages dead-lettered, by problem.", "code"),
    "alarm.": ("meetkit_alarms_raised_total", "Alarms raised, by code.", "code"),
    # whole records pruned by the store's bounds; reason age or bytes (retention.py)
    "dropped.unforwarded": ("meetkit_store_dropped_unforwarded_total",
                            "Of the records the bounds dropped, those not yet forwarded to every enabled target.",
                            None),
    "dropped.": ("meetkit_store_dropped_total", "Records the store's bounds dropped, by bound (age, bytes).",
                 "reason"),
    "dead_letters_dropped.": ("meetkit_dead_letters_dropped_total",
                              "Dead letters the store's bounds dropped, by bound (age, bytes: their budget in "
                              "all; flood: a node's budget).", "reason"),
    # per-record judgement (payload.py): what was refused on its own while the rest was stored
    "refused_records.": ("meetkit_records_refused_total",
                         "Records refused on their own (kept as dead letters), by problem.", "code"),
    "refused_values.": ("meetkit_values_refused_total",
                        "Values refused on their own (stored as null, flagged refused), by problem.", "code"),
    "flagged.": ("meetkit_values_flagged_total",
                 "Values the gateway flagged, by flag (range: outside the sensor's rated range, kept).", "flag"),
    "retained_again": ("meetkit_retained_again_total",
                       "Retained messages the broker handed over again, taken once before.", None),
    "dead_letters_replayed": ("meetkit_dead_letters_replayed_total",
                              "Dead letters that went through on a replay (meetkit-gateway dead-letters replay).",
                              None),
    "events.": ("meetkit_events_total", "Events the nodes reported (config, ota, crash, safe_mode, selftest), by kind.",
                "kind"),
}


# -- values of an older store ----------------------------------------------------------------------
# The gateway refuses records outside the contract's plausible values (payload.py), but a store
# written by an older gateway may hold anything, of any SQLite type. What the page and /metrics
# show of it is checked here: a value outside the contract is left out (null on the page, no
# sample on /metrics) and the node flagged IMPLAUSIBLE, rather than printed as if it meant something.

IMPLAUSIBLE = "implausible values"  # a node's flag: some of its values in the store are outside the contract
JS_INT_MAX = 2**53 - 1  # the largest integer a browser reads exactly


def _int_in(v: object, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _finite(v: object) -> float | int | None:
    """A number the page and /metrics can show, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, int) and not -JS_INT_MAX <= v <= JS_INT_MAX:
        return None
    return v


def _start(v: object, now: float) -> float | int | None:
    """A record's interval start, if it can be one (payload.plausible_ts)."""
    f = _finite(v)
    return f if f is not None and plausible_ts(f, now) else None


def _boot_ok(boot: object, lo: object, hi: object) -> bool:
    """A boot's number and its sequence numbers are what a node can have sent."""
    return _int_in(boot, 0, BOOT_MAX) and _int_in(lo, 0, SEQ_MAX) and _int_in(hi, 0, SEQ_MAX)


def _boot(status_boot: object, record_boot: int | None) -> int | None:
    """The node's boot: from its status if that is plausible, else its highest plausible record boot."""
    return status_boot if _int_in(status_boot, 0, BOOT_MAX) else record_boot  # type: ignore[return-value]


def gaps(boots: Iterable[tuple[str, int, int, int, int]]) -> dict[str, int]:
    """Records missing between the lowest and highest seq of each boot, summed per node. A boot
    whose number or seqs lie outside the contract counts no gap: those are no node's counters."""
    out: dict[str, int] = {}
    for node, boot, lo, hi, n in boots:
        gap = hi - lo + 1 - n if _boot_ok(boot, lo, hi) else 0
        out[node] = out.get(node, 0) + max(0, gap)
    return out


def _boots(boots: Iterable[tuple[str, int, int, int, int]]) -> tuple[dict[str, int], dict[str, int], set[str]]:
    """Per node: its records, its highest plausible boot, and whether any boot or seq was not."""
    records: dict[str, int] = {}
    last_boot: dict[str, int] = {}
    odd: set[str] = set()
    for node, boot, lo, hi, n in boots:
        records[node] = records.get(node, 0) + n
        if _boot_ok(boot, lo, hi):
            last_boot[node] = max(boot, last_boot.get(node, boot))
        else:
            odd.add(node)
    return records, last_boot, odd


def _targets(targets: Targets) -> tuple[list[dict[str, Any]], str | None]:
    try:
        rows = [dict(t) for t in targets()]
        for t in rows:
            if not isinstance(t.get("name"), str):
                raise ValueError(f"a target without a name: {t!r}")
        return rows, None
    except Exception as e:  # the page and /metrics must not fail with the forwarding side
        log.exception("targets() failed")
        return [], f"{type(e).__name__}: {e}"


def _fleet_metrics(fleet: FleetView, heard: set[str]) -> Iterator[Metric]:
    fams = [_family("gauge", name, help) for name, help in (
        ("meetkit_fleet_error", "1 while the fleet register cannot be read (its problems are on the status page)."),
        ("meetkit_fleet_nodes_registered", "Nodes in the fleet register."),
        ("meetkit_fleet_nodes_never_seen", "Nodes in the fleet register the gateway never heard of."),
        ("meetkit_fleet_nodes_unregistered", "Nodes the gateway heard of that are not in the fleet register."),
    )]
    if fleet.configured:  # no register: the families, with nothing to say
        fams[0].add_metric([], int(fleet.errors is not None))
        if fleet.usable:
            fams[1].add_metric([], len(fleet.nodes))
            fams[2].add_metric([], len(set(fleet.nodes) - heard))
            fams[3].add_metric([], len(heard - set(fleet.nodes)))
    yield from fams


def rollout_doc(store: Store) -> dict[str, Any] | None:
    """The newest rollout (gateway/rollouts.py) and its nodes, for the page; None if there was none."""
    rows = store.rollouts(limit=1)
    if not rows:
        return None
    r = rows[0]
    return {"id": r.id, "release": r.release, "state": r.state, "stage": r.stage, "reason": r.reason,
            "force": r.force, "canary": r.canary, "wave": r.wave, "created_at": r.created_at,
            "updated_at": r.updated_at,
            "nodes": [{"node": n.node, "stage": n.stage, "state": n.state, "reason": n.reason, "offers": n.offers,
                       "offered_at": n.offered_at, "first_offered_at": n.first_offered_at, "updated_at": n.updated_at}
                      for n in store.rollout_nodes(r.id)]}


def _rollout_metrics(store: Store, ota: OtaStatus | None) -> Iterator[Metric]:
    state = _family("gauge", "meetkit_rollout_state",
                    "The newest rollout: 1 for the state it is in (running, done, halted, stopped), 0 for the others.",
                    ("rollout", "release", "state"))
    stage = _family("gauge", "meetkit_rollout_stage", "The newest rollout's stage under way: 0 canaries, 1.. waves.",
                    ("rollout", "release"))
    nodes = _family("gauge", "meetkit_rollout_nodes", "Nodes of the newest rollout, by state.",
                    ("rollout", "release", "state"))
    offers = _family("counter", "meetkit_rollout_offers_total", "Offers sent in the newest rollout (repeated until a "
                     "node answers).", ("rollout", "release"))
    doc = rollout_doc(store)
    if doc is not None:
        lab = [str(doc["id"]), str(doc["release"])]
        for s in ROLLOUT_STATES:
            state.add_metric([*lab, s], int(doc["state"] == s))
        stage.add_metric(lab, doc["stage"])
        for s in NODE_STATES:
            nodes.add_metric([*lab, s], sum(n["state"] == s for n in doc["nodes"]))
        offers.add_metric(lab, sum(n["offers"] for n in doc["nodes"]))
    yield from (state, stage, nodes, offers)
    if ota is None:
        return
    try:
        st = ota()
    except Exception:  # the page and /metrics must not fail with the serving side
        log.exception("ota() failed")
        return
    yield CounterMetricFamily("meetkit_ota_pieces_served_total", "Pieces of releases served to nodes (ota/chunk).",
                              st["served"])
    yield CounterMetricFamily("meetkit_ota_bytes_served_total", "Bytes of releases served to nodes.", st["bytes"])
    refused = CounterMetricFamily("meetkit_ota_requests_refused_total",
                                  "Requests for pieces (ota/get) not answered, by reason: not_offered (no such release "
                                  "offered to that node), bad_request, beyond_end, rate (over [ota] pieces_per_s).",
                                  labels=("reason",))
    for reason, n in st["refused"].items():
        refused.add_metric([reason], n)
    yield refused


class StoreCollector:
    """All metrics of the gateway, read when collected: the store's counters, per node, the fleet
    register, per forwarding target, the newest rollout and the pieces served. A prometheus-client
    custom collector over one open store (a read-only connection lives for one computation: see
    `_App._answer`)."""

    def __init__(self, store: Store, targets: Targets, fleet: Fleet | None = None,
                 secrets: FleetSecrets | None = None, ota: OtaStatus | None = None,
                 region: RegionConfig | None = None, visitors: Visitors | None = None,
                 store_max_bytes: int | None = None) -> None:
        self.region = region
        self.visitors = visitors
        self.store_max_bytes = store_max_bytes
        self.store = store
        self.targets = targets
        self.fleet = fleet
        self.secrets = secrets
        self.ota = ota

    def collect(self) -> Iterator[Metric]:
        yield from self._store()
        heard: set[str] = set()
        yield from self._nodes(heard)
        yield from self._region(heard)
        yield from _over_the_air(states(self.store, self.secrets))
        yield from _fleet_metrics(view(self.fleet), heard)
        yield from self._targets()
        yield from _rollout_metrics(self.store, self.ota)

    def _store(self) -> Iterator[Metric]:
        store = self.store
        yield GaugeMetricFamily("meetkit_store_up", "1 when the store opened read-only and answered.", 1)
        counters = {k: v for k, v in store.counters().items() if isinstance(k, str) and _finite(v) is not None}
        fams = {key: CounterMetricFamily(name, help, labels=(label,) if label else ())
                for key, (name, help, label) in _COUNTERS.items()}
        other = CounterMetricFamily("meetkit_store_counter_total", "Other counters of the store, by name.",
                                    labels=("name",))
        for key, (_name, _help, label) in _COUNTERS.items():
            if label is None:
                fams[key].add_metric([], counters.get(key, 0))
        for key, value in counters.items():
            if key in _COUNTERS or key == UNKNOWN_VISITOR:  # that one with the region's (_region)
                continue
            for prefix, (_name, _help, label) in _COUNTERS.items():
                if label is not None and key.startswith(prefix):
                    fams[prefix].add_metric([key[len(prefix):]], value)
                    break
            else:
                other.add_metric([key], value)
        yield from fams.values()
        yield other
        counts = store.counts()
        for name, help, value in (
            ("meetkit_records", "Records in the store.", counts.records),
            ("meetkit_readings", "Readings (one per quantity of a record) in the store.", counts.readings),
            ("meetkit_dead_letters", "Dead letters (what was refused) kept in the store.", counts.dead_letters),
            ("meetkit_dead_letter_payload_bytes",
             "Bytes of the dead letters' payloads: what [store] dead_letters_max_bytes bounds.",
             store.dead_letter_usage(every=True)[1]),
            ("meetkit_nodes", "Nodes ever heard of.", counts.nodes),
            ("meetkit_store_bytes", "Size of the store's database and WAL files.", _files_size(store.path)),
            ("meetkit_store_used_bytes", "Bytes of the store's pages in use (free pages not counted).",
             store.used_bytes()),
            ("meetkit_store_bounded_bytes",
             "Bytes of the store's pages in use without the dead letters': what [store] max_bytes bounds.",
             store.bounded_bytes()),
        ):
            yield GaugeMetricFamily(name, help, value)
        if self.store_max_bytes is not None:  # what the region's MeetkitStoreNearBound divides by
            yield GaugeMetricFamily("meetkit_store_max_bytes",
                                    "The store's bound, [store] max_bytes: what meetkit_store_bounded_bytes is held to.",
                                    self.store_max_bytes)
        alarms = _family("gauge", "meetkit_alarm_active", "1 while an alarm is raised, by code.", ("code",))
        for a in store.active_alarms():
            alarms.add_metric([a.code], 1)
        yield alarms

    def _nodes(self, heard: set[str]) -> Iterator[Metric]:
        boots = self.store.boots()
        per_node_gaps = gaps(boots)
        records, last_boot, _odd = _boots(boots)
        fams = [_family(kind, name, help, ("node",)) for name, kind, help in (
            ("meetkit_node_last_seen_timestamp_seconds", "gauge",
             "When the node last published (a batch or a live status), unix seconds."),
            ("meetkit_node_boot", "gauge", "The node's boot counter: from its status, else its newest records."),
            ("meetkit_node_online", "gauge", "1 online, 0 offline (last will), per the node's last status."),
            ("meetkit_node_rssi_dbm", "gauge", "Wi-Fi signal the node last reported, dBm."),
            ("meetkit_node_records", "gauge", "Records of the node in the store."),
            ("meetkit_node_sequence_gaps", "gauge",
             "Records missing between the lowest and highest sequence number of each boot, summed."),
            ("meetkit_node_spool_dropped_total", "counter",
             "Records the node's spool dropped by policy (full), as the node last reported."),
            ("meetkit_node_via", "gauge",
             "The index in the node's broker list of the broker it is on, per its last status (0: its own "
             "gateway's; above 0: failed over, visiting a neighbour)."),
            ("meetkit_node_held_records", "gauge",
             "Records the node's spool holds that are not yet safe, per its last status."),
        )]
        for n in self.store.nodes():
            heard.add(n.node)
            lab = [str(n.node)]
            for fam, value in zip(fams, (_finite(n.last_seen), _boot(n.boot, last_boot.get(n.node)), n.online,
                                         _finite(n.rssi), records.get(n.node, 0), per_node_gaps.get(n.node, 0),
                                         _finite(n.dropped), _finite(n.via), _finite(n.held))):
                if value is not None:
                    fam.add_metric(lab, value)
        yield from fams

    def _region(self, heard: set[str]) -> Iterator[Metric]:
        """With [region]: per node, the records this store holds that the region's store does not
        have yet, and the age of the oldest (0 and 0 for a node with none)."""
        if self.region is None:
            return
        count = _family("gauge", "meetkit_node_unsafe_records",
                        "Records of the node held in this store that the region's store has not taken yet.", ("node",))
        oldest = _family("gauge", "meetkit_node_unsafe_oldest_seconds",
                         "Seconds since the oldest of the node's records not yet safe was received (0: none).",
                         ("node",))
        unsafe = self.store.unsafe_records(self.region.safe_targets)
        now = time.time()
        for node in sorted(heard | set(unsafe)):
            n, first = unsafe.get(node, (0, None))
            count.add_metric([node], n)
            oldest.add_metric([node], 0 if first is None else max(0.0, now - first))
        yield count
        yield oldest
        # the visiting nodes' home towns (visitors.py): records of a node the table does not know are
        # forwarded under this gateway's town, and counted
        yield CounterMetricFamily("meetkit_region_unknown_visitor_records_total",
                                  "Records stored of nodes neither this gateway's nor visitors the region plan gave "
                                  "an account here ([region] visitors): forwarded under this gateway's town, not "
                                  "their home town.", self.store.counters().get(UNKNOWN_VISITOR, 0))
        if self.visitors is not None and self.visitors.path is not None:
            st = self.visitors.state()
            yield GaugeMetricFamily("meetkit_region_visitors_error",
                                    "1 while the visitors' table ([region] visitors) cannot be read or has an entry "
                                    "without a town.", int(st.error is not None or bool(st.problems)))
            yield GaugeMetricFamily("meetkit_region_visitors", "Visiting nodes the visitors' table gives a home town.",
                                    st.visitors)

    def _targets(self) -> Iterator[Metric]:
        rows, error = _targets(self.targets)
        yield GaugeMetricFamily("meetkit_forward_status_error",
                                "1 when the forwarding side could not report its targets.", int(error is not None))
        fams = [(key, _family(kind, name, help, ("target", "kind"))) for key, name, kind, help in (
            ("queue_rows", "meetkit_forward_queue_rows", "gauge", "Rows stored and not yet forwarded to the target."),
            ("oldest_age_s", "meetkit_forward_oldest_age_seconds", "gauge",
             "Age of the oldest row not yet forwarded to the target, seconds."),
            ("last_success", "meetkit_forward_last_success_timestamp_seconds", "gauge",
             "Last successful delivery to the target, unix seconds."),
            ("retries", "meetkit_forward_retries_total", "counter", "Failed attempts that were retried."),
            ("dead_letters", "meetkit_forward_dead_letters_total", "counter",
             "Rows the target refused for good (client errors), dead-lettered with the reason."),
            ("sent", "meetkit_forward_sent_rows_total", "counter", "Rows delivered to the target."),
            ("up", "meetkit_forward_up", "gauge", "1 when the last attempt to deliver to the target succeeded."),
        )]
        for t in rows:
            lab = [t["name"], str(t.get("kind") or "")]
            for key, fam in fams:
                v = t.get(key)
                if isinstance(v, (int, float)):
                    fam.add_metric(lab, v)
        yield from (fam for _key, fam in fams)


def _over_the_air(nodes: dict[str, NodeState]) -> Iterator[Metric]:
    """Per node: its mode, its configuration wanted versus running, its crashes and self-test."""
    mode = _family("gauge", "meetkit_node_mode", "1 for the mode the node last reported (normal, trial, safe).",
                   ("node", "mode"))
    fams = {key: _family("gauge", name, help, ("node",)) for key, name, help in (
        ("wanted", "meetkit_node_config_wanted_version", "The configuration version the gateway sends the node."),
        ("running", "meetkit_node_config_running_version", "The configuration version the node says it runs."),
        ("behind", "meetkit_node_config_behind",
         "1 while the node does not run the configuration version it is sent."),
        ("reverted", "meetkit_node_config_reverted",
         "1 while the node runs its previous configuration, having reverted the version it is sent."),
        ("problem", "meetkit_node_config_problem",
         "1 while the node's configuration is held back (a secret or key missing, the register unreadable)."),
        ("refused", "meetkit_node_config_refused_keys",
         "Keys the node refused in its latest configuration event (0: it took them all)."),
        ("crash_at", "meetkit_node_last_crash_timestamp_seconds", "When the node's latest crash report came, unix s."),
        ("in_a_row", "meetkit_node_crashes_in_a_row", "Crashes in a row, as the node's latest crash report says."),
        ("selftest_at", "meetkit_node_selftest_timestamp_seconds", "When the node's latest self-test came, unix s."),
        ("selftest_failed", "meetkit_node_selftest_failed_items", "Items its latest self-test failed."),
    )}
    for node, st in nodes.items():
        lab = [node]
        if st.mode is not None:
            mode.add_metric([node, st.mode], 1)
        c = st.config
        if c is not None:
            values: dict[str, Any] = {"wanted": c.wanted, "running": c.running, "behind": int(c.behind),
                                      "reverted": int(c.reverted is not None and c.behind),
                                      "problem": int(c.problem is not None)}
            if c.last is not None:
                values["refused"] = len(c.last.get("refused", {}))
            for key, v in values.items():
                if _finite(v) is not None:
                    fams[key].add_metric(lab, v)
        if st.crash is not None:
            fams["crash_at"].add_metric(lab, st.crash["at"])
            fams["in_a_row"].add_metric(lab, st.crash["count"])
        if st.selftest is not None and "checks" in st.selftest:
            fams["selftest_at"].add_metric(lab, st.selftest["at"])
            fams["selftest_failed"].add_metric(lab, sum(r[0] != "pass" for r in st.selftest["checks"].values()))
    yield mode
    yield from fams.values()


def _files_size(path: Path) -> int:
    """The store's database and WAL files, in bytes."""
    size = 0
    for suffix in ("", "-wal"):
        p = Path(str(path) + suffix)
        if p.exists():
            size += p.stat().st_size
    return size


def metrics_text(store: Store, targets: Targets, fleet: Fleet | None = None,
                 secrets: FleetSecrets | None = None, ota: OtaStatus | None = None,
                 region: RegionConfig | None = None, visitors: Visitors | None = None,
                 store_max_bytes: int | None = None) -> str:
    """/metrics but the status server's own counters, in the text format 0.0.4. A registry of its
    own for each render, since its collector reads the store this computation opened."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, targets, fleet, secrets, ota, region, visitors, store_max_bytes))
    return generate_latest(registry).decode()


# -- JSON for the page -----------------------------------------------------------------------------


NEVER_SEEN = "never seen"  # in the register, never heard of
UNREGISTERED = "not in the register"  # heard of, not in a readable register
VISITING = "visiting"  # its status says `via` > 0: it failed over to a neighbour's broker
#: in a region, a node neither this gateway's nor a visitor of the plan: forwarded under this gateway's town
UNKNOWN = "unknown visitor"


def nodes_doc(store: Store, targets: Targets, now: float | None = None, fleet: Fleet | None = None,
              secrets: FleetSecrets | None = None, visitors: Visitors | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    reg = view(fleet)
    air = states(store, secrets)
    boots = store.boots()
    per_node_gaps = gaps(boots)
    records, last_boot, odd = _boots(boots)
    latest = {l.node: l for l in store.latest()}
    nodes = store.nodes()
    towns = visitors.towns({n.node for n in nodes}) if visitors is not None else {}
    out = []
    for n in nodes:
        l = latest.get(n.node)
        flags: set[str] = set()
        if l is not None:
            for r in l.readings.values():
                flags.update(r.flag_names)
        health = sorted(flags)
        last_seen = _finite(n.last_seen)
        if n.online is False:
            health.insert(0, "offline")
        if last_seen is None or now - last_seen > STALE_S:
            health.insert(0, "stale")
        if reg.usable and n.node not in reg.nodes:
            health.append(UNREGISTERED)
        via = n.via if _int_in(n.via, 1, VIA_MAX) else None
        if via is not None:  # failed over: on a neighbour's broker (its status says which of its list)
            health.append(VISITING)
        if visitors is not None and visitors.unknown(n.node):
            health.append(UNKNOWN)
        boot = _boot(n.boot, last_boot.get(n.node))
        up = n.up if _int_in(n.up, 0, UP_MAX) else None
        last_start = _start(l.start, now) if l else None
        if (n.node in odd or (n.boot is not None and boot != n.boot) or (n.up is not None and up is None)
                or (l is not None and l.start is not None and last_start is None)):
            health.append(IMPLAUSIBLE)
        out.append({
            "node": n.node, "online": n.online, "last_seen": last_seen, "rssi": _finite(n.rssi),
            "boot": boot, "fw": n.fw if isinstance(n.fw, str) else None, "up": up,
            "dropped": _finite(n.dropped), "records": records.get(n.node, 0), "gaps": per_node_gaps.get(n.node, 0),
            "via": _finite(n.via), "held": _finite(n.held), "last_start": last_start, "flags": health, "register": reg.nodes.get(n.node),
            **({"town": towns[n.node]} if n.node in towns else {}),
            **as_json(air.get(n.node, NodeState(n.node))),
        })
    heard = {n["node"] for n in out}
    never = [node for node in reg.nodes if node not in heard]
    for node in never:
        out.append({
            "node": node, "online": None, "last_seen": None, "rssi": None, "boot": None, "fw": None, "up": None,
            "dropped": None, "records": 0, "gaps": 0, "via": None, "held": None, "last_start": None,
            "flags": [NEVER_SEEN],
            "register": reg.nodes[node], **as_json(air.get(node, NodeState(node))),
        })
    rows, error = _targets(targets)
    c = store.counts()
    return {
        "now": now, "nodes": out, "targets": rows, "targets_error": error,
        "fleet": {"path": reg.path, "errors": reg.errors, "registered": len(reg.nodes) if reg.usable else None,
                  "never_seen": len(never) if reg.usable else None,
                  "unregistered": len(heard - set(reg.nodes)) if reg.usable else None},
        "alarms": [{"code": a.code, "at": a.at, "reason": a.reason} for a in store.active_alarms()],
        "counts": {"records": c.records, "readings": c.readings, "dead_letters": c.dead_letters,
                   "duplicates": c.duplicates},
        "rollout": rollout_doc(store),
        **({"region": _region_doc(visitors)} if visitors is not None else {}),
    }


def _region_doc(visitors: Visitors) -> dict[str, Any]:
    """The visitors' table as the page tells it: where from, what is wrong with it."""
    st = visitors.state()
    return {"town": visitors.own_town, "visitors_file": st.path, "visitors": st.visitors, "error": st.error,
            "problems": list(st.problems), "unknown": visitors.why_unknown() if st.path is not None else None}


#: sound levels, averaged as energy over a bucket
ENERGETIC = frozenset({"LAeq", "LA10", "LA90", "LAmax", "LAmin", "LCeq", "LZeq"})


def bucket_for(hours: float) -> int:
    """The bucket (s) a range of `hours` is drawn at: every record up to a day (at most 1440 points a
    series), 10 min up to a week (1008), an hour beyond (720 for 30 days)."""
    return 0 if hours <= 24 else 600 if hours <= 168 else 3600


def series_doc(store: Store, node: str, hours: float, now: float | None = None,
               until: float | None = None, quantities: tuple[str, ...] = SERIES) -> dict[str, Any]:
    """The node's records of the `hours` before `until` (default: now), every record up to a day
    and means over buckets beyond (`bucket_for`: "step" in the answer, 0 for every record). When
    the node has no record in that window (silent for longer, or a clock far off), the window ends
    at its newest record instead: the page then shows the node's last hours of data, dated.
    "first" and "last": the first and last start shown (None: none), so that the page fits its
    time axis to the data. Records whose start is not plausible (payload.plausible_ts: before the
    project, or far past now) are left out, and so is a value that is not a finite number."""
    now = time.time() if now is None else now
    end = now if until is None else until
    newest = _start(store.newest_start(node, upto=now + FUTURE_MARGIN_S), now)
    if until is None and newest is not None and not end - hours * 3600 <= newest <= end:
        end = newest + 60
    since = int(end - hours * 3600)
    step = bucket_for(hours)
    starts: list[float | int] = []
    cols: dict[str, list[float | int | None]] = {q: [] for q in quantities}
    rows = (store.series(node, since, quantities) if not step
            else store.series_buckets(node, since, end + 1, step, quantities, ENERGETIC))
    for start, quantity, avg in rows:
        start = _start(start, now)  # a bucket's start too: TS_MIN is a multiple of every bucket
        if start is None or quantity not in cols:
            continue
        if start > end:
            break
        if not starts or starts[-1] != start:  # a second record of the same start: the later wins
            starts.append(start)
            for col in cols.values():
                col.append(None)
        cols[quantity][-1] = _finite(avg)
    return {"node": node, "since": since, "until": end, "now": now, "hours": hours, "step": step,
            "first": starts[0] if starts else None, "last": starts[-1] if starts else None,
            "start": starts, **cols, "units": {q: QUANTITIES[q].unit for q in quantities}}


def node_doc(store: Store, node: str, targets: Targets, now: float | None = None, fleet: Fleet | None = None,
             secrets: FleetSecrets | None = None, visitors: Visitors | None = None) -> dict[str, Any] | None:
    """One node for the page's node view: its row of /api/nodes (flags, firmware, configuration,
    register), its newest record whole (every quantity with its min, max, unit and flags, the
    sensors, board and firmware that made it) and each boot's records and sequence gaps; None for a
    node neither heard of nor in the register."""
    now = time.time() if now is None else now
    doc = nodes_doc(store, targets, now=now, fleet=fleet, secrets=secrets, visitors=visitors)
    row = next((n for n in doc["nodes"] if n["node"] == node), None)
    if row is None:
        return None
    latest = next((l for l in store.latest() if l.node == node), None)
    record = None
    if latest is not None:
        some = next(iter(latest.readings.values()), None)
        record = {"start": _start(latest.start, now), "dur": _finite(latest.dur), "boot": _finite(latest.boot),
                  "seq": _finite(latest.seq), "received_at": _finite(latest.received_at),
                  "board": some.board if some else None, "fw": some.fw if some else None,
                  "sensors": _sensors(some.sensors) if some else {},
                  "readings": [{"quantity": r.quantity, "avg": _finite(r.avg), "min": _finite(r.min),
                                "max": _finite(r.max), "n": _finite(r.n), "unit": r.unit,
                                "flags": list(r.flag_names)} for r in latest.readings.values()]}
    boots = [{"boot": b, "first_seq": lo, "last_seq": hi, "records": n,
              "missing": max(0, hi - lo + 1 - n) if _boot_ok(b, lo, hi) else 0}
             for name, b, lo, hi, n in store.boots() if name == node]
    return {"now": now, "node": row, "record": record, "boots": boots}


def _sensors(text: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


# -- query strings -----------------------------------------------------------------------------------


class BadQuery(Exception):
    """A query string an endpoint cannot take; the message says which value and why (400)."""


_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def parse_query(query: str, takes: tuple[str, ...]) -> dict[str, str]:
    """`key=value&...` with each key at most once and only the keys in `takes`, percent-decoded
    as UTF-8; BadQuery otherwise."""
    if not query:
        return {}
    if not takes:
        raise BadQuery("this endpoint takes no query parameters")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True, encoding="utf-8", errors="strict",
                          max_num_fields=len(takes))
    except (ValueError, UnicodeDecodeError):  # UnicodeDecodeError is a ValueError; said for the reader
        raise BadQuery(f"the query string must be at most {len(takes)} key=value pairs joined by &, in UTF-8; "
                       f"this endpoint takes {', '.join(takes)}") from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in takes:
            raise BadQuery(f"unknown parameter {key[:40]!r}; this endpoint takes {', '.join(takes)}")
        if key in out:
            raise BadQuery(f"{key}: given more than once")
        out[key] = value
    return out


def decimal(name: str, text: str, low: float, high: float, what: str, low_open: bool = False) -> float:
    """A plain decimal number (digits, an optional fraction: no sign, exponent, NaN or infinity)
    from `low` to `high`; BadQuery naming `name` and `what` otherwise."""
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not (low < value if low_open else low <= value) or not value <= high:
        raise BadQuery(f"{name}: {what}, got {text[:40]!r}")
    return value


def node_query(query: str) -> str:
    """node of /api/node."""
    node = parse_query(query, ("node",)).get("node", "")
    if not node or len(node) > NODE_MAX or not node.isprintable():
        raise BadQuery(f"node: required, a node id of 1 to {NODE_MAX} printable characters")
    return node


def quantities_query(text: str) -> tuple[str, ...]:
    """`q` of /api/series: quantities of the contract, comma-separated."""
    qs = tuple(text.split(","))
    bad = [q for q in qs if q not in QUANTITIES]
    if not text or bad or len(set(qs)) != len(qs):
        raise BadQuery(f"q: quantities of the contract, comma-separated, each once ({', '.join(QUANTITIES)}); "
                       f"got {text[:80]!r}")
    return qs


def series_query(query: str, now: float) -> tuple[str, float, float | None, tuple[str, ...]]:
    """node, hours, until and q of /api/series."""
    q = parse_query(query, ("node", "hours", "until", "q"))
    node = q.get("node", "")
    if not node or len(node) > NODE_MAX or not node.isprintable():
        raise BadQuery(f"node: required, a node id of 1 to {NODE_MAX} printable characters")
    hours = decimal("hours", q.get("hours", "24"), 0, MAX_HOURS, f"a number of hours, more than 0 and at most {MAX_HOURS}",
                    low_open=True)
    until = None
    if "until" in q:
        until = decimal("until", q["until"], TS_MIN, now + FUTURE_MARGIN_S,
                        f"unix seconds from {TS_MIN} (2026-01-01) to a day from now")
    return node, hours, until, quantities_query(q["q"]) if "q" in q else SERIES


# -- the server ------------------------------------------------------------------------------------

#: how long a computed answer is served again: the page refreshes every minute, Prometheus scrapes
#: every 15 s or more, and every answer from the store costs the writer's interpreter time
CACHE_S = 5.0
HEALTH_CACHE_S = 1.0
LONG_CACHE_S = 300.0  # /api/series beyond a day (means over 10 min or an hour)
CACHED_ANSWERS = 256  # at most this many answers kept (each /api/series query is one)
NODE_MAX = 64
MAX_HOURS = 720  # 30 days: the page's longest range
JSON = "application/json"
METRICS = CONTENT_TYPE_PLAIN_0_0_4
_NO_PARAMS: tuple[str, ...] = ()


def _json(status: int, doc: Any) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(), JSON)


class _Static:
    """The page's files, read once: every other path is a 404 without touching the disk."""

    def __init__(self, root: Path) -> None:
        self.files: dict[str, Response] = {}
        for f in sorted(root.rglob("*")):
            if not f.is_file():
                continue
            ctype = mimetypes.guess_type(f.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
                ctype += "; charset=utf-8"
            body = f.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            self.files["/" + f.relative_to(root).as_posix()] = Response(200, body, ctype, (("ETag", etag),))
        if "/index.html" in self.files:
            self.files["/"] = self.files["/index.html"]

    def get(self, path: str, if_none_match: str | None) -> Response | None:
        r = self.files.get(path)
        if r is not None and if_none_match is not None and dict(r.headers)["ETag"] in if_none_match:
            return Response(304, b"", r.ctype, r.headers)
        return r


class _Answers:
    """Answers computed from the store, kept for a few seconds; one computation per key at a time
    (the others wait for it). The loop thread only."""

    def __init__(self, size: int = CACHED_ANSWERS) -> None:
        self.size = size
        self._kept: OrderedDict[tuple[Any, ...], tuple[float, Response]] = OrderedDict()
        self._pending: dict[tuple[Any, ...], asyncio.Future[Response]] = {}

    async def get(self, key: tuple[Any, ...], ttl: float, make: Callable[[], Awaitable[Response]]) -> Response:
        now = time.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[0] > now:
            self._kept.move_to_end(key)
            return kept[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            answer = await make()  # make() answers errors itself; only a shutdown cancels it
        except BaseException:
            fut.cancel()
            raise
        finally:
            del self._pending[key]
        fut.set_result(answer)
        if ttl > 0:
            self._kept[key] = (time.monotonic() + ttl, answer)
            self._kept.move_to_end(key)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return answer


class _App:
    """The endpoints, on the server's loop thread; what needs the store runs through `compute`."""

    def __init__(self, owner: "StatusServer") -> None:
        self.owner = owner
        self.static = _Static(owner.static)
        self.answers = _Answers()
        self.live = CollectorRegistry()  # the server's own counters: never cached
        self.live.register(ServerCollector(owner))

    async def __call__(self, req: Request) -> Response:
        path, query = req.path, req.query
        try:
            if path == "/api/series":
                node, hours, until, qs = series_query(query, time.time())
                # a long range costs a pass over up to 43,200 records a node (0.7 s: bench/status_page.py)
                # and its buckets change slowly: kept for LONG_CACHE_S
                ttl = self.owner.cache_s
                if ttl and bucket_for(hours):  # (cache_s 0, for tests, is kept)
                    ttl = max(ttl, LONG_CACHE_S)
                return await self._answer(("series", node, hours, until, qs), ttl,
                                          lambda store: _json(200, series_doc(store, node, hours, until=until,
                                                                              quantities=qs)
                                                              | {"tz": self.owner.timezone}))
            if path == "/api/node":
                node = node_query(query)
                return await self._answer(("node", node), self.owner.cache_s, lambda store: self._node(store, node))
            parse_query(query, _NO_PARAMS)
        except BadQuery as e:
            return _json(400, {"error": str(e)})
        owner = self.owner
        if path == "/healthz":
            return await self._answer(("healthz",), min(HEALTH_CACHE_S, owner.cache_s), _healthz, health=True)
        if path == "/metrics":
            r = await self._answer(("metrics",), owner.cache_s, lambda store: Response(
                200, metrics_text(store, owner.targets, fleet=owner.fleet, secrets=owner.secrets,
                                  ota=owner.ota, region=owner.region, visitors=owner.visitors,
                                  store_max_bytes=owner.store_max_bytes).encode(), METRICS))
            # the one hand-made join: two renders of prometheus-client, the cached one and the live one
            # (their families are distinct), so that a cached answer still shows the server's counters now
            return Response(r.status, r.body + generate_latest(self.live), r.ctype) if r.status == 200 else r
        if path == "/api/nodes":
            return await self._answer(("nodes",), owner.cache_s,
                                      lambda store: _json(200, nodes_doc(store, owner.targets, fleet=owner.fleet,
                                                                         secrets=owner.secrets,
                                                                         visitors=owner.visitors)
                                                          | {"tz": owner.timezone}))
        if path == "/api/targets":
            return await self._answer(("targets",), owner.cache_s, self._targets, store=False)
        r = self.static.get(path, req.headers.get("if-none-match"))
        return r if r is not None else Response(404, b"not found\n")

    def _node(self, store: Store, node: str) -> Response:
        o = self.owner
        doc = node_doc(store, node, o.targets, fleet=o.fleet, secrets=o.secrets, visitors=o.visitors)
        if doc is None:
            return _json(404, {"error": f"node: {node[:64]!r} is neither heard of nor in the fleet register"})
        return _json(200, doc | {"tz": o.timezone})

    def _targets(self) -> Response:
        rows, error = _targets(self.owner.targets)
        return _json(200, {"now": time.time(), "targets": rows, "targets_error": error})

    async def _answer(self, key: tuple[Any, ...], ttl: float, make: Callable[..., Response], store: bool = True,
                      health: bool = False) -> Response:
        server = self.owner.server
        assert server is not None

        def compute() -> Response:
            if not store:
                return make()
            try:
                with self.owner.open() as st:
                    return make(st)
            except StoreError as e:  # no store yet, or one this gateway cannot read: said, not a traceback
                return _json(503, {"status": "error", "reason": str(e)} if health else {"error": str(e)})
            except sqlite3.Error as e:
                if health:
                    return _json(503, {"status": "error", "reason": f"{type(e).__name__}: {e}"})
                raise

        async def run() -> Response:
            try:
                return await server.compute(compute)
            except Exception as e:
                server.trouble(key[0], logging.ERROR, "status page: %s failed", key[0], exc_info=True)
                return _json(503, {"error": f"{type(e).__name__}: {e}"})

        return await self.answers.get(key, ttl, run)


class ServerCollector:
    """The status server's own counters (prometheus-client custom collector), read live on the
    loop thread, which alone changes them."""

    def __init__(self, owner: "StatusServer") -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        server = self.owner.server
        if server is None:
            return
        c = server.counters
        yield GaugeMetricFamily("meetkit_http_connections", "Connections to the status server open now.",
                                server.open_connections)
        yield CounterMetricFamily("meetkit_http_connections_total", "Connections the status server accepted.",
                                  c["connections"])
        closed = CounterMetricFamily(
            "meetkit_http_connections_closed_total",
            "Connections the status server closed early, by reason: idle (no request within the head "
            "timeout), slow_head (a request head not whole in time), evicted (for a new connection at the "
            "cap), busy (refused at the cap), write_timeout, client_gone (before its response).", labels=("reason",))
        for reason in ("idle", "slow_head", "evicted", "busy", "write_timeout", "client_gone"):
            closed.add_metric([reason], c[f"closed.{reason}"])
        yield closed
        requests = CounterMetricFamily("meetkit_http_requests_total", "Requests answered, by status code.",
                                       labels=("code",))
        codes: dict[str, int] = {}  # answered by the application, or refused before it (400, 408, 431, ...)
        for key in c:
            if key.startswith(("requests.", "bad_request.")):
                code = key.split(".", 1)[1]
                codes[code] = codes.get(code, 0) + c[key]
        for code in sorted(codes):
            requests.add_metric([code], codes[code])
        yield requests
        for name, help, value in (
            ("meetkit_http_throttled_total",
             "Requests that waited for the status server's request rate or share of the CPU.", c["throttled"]),
            ("meetkit_http_store_reads_total",
             "Answers computed from the store (the others came from the few seconds' cache).", c["store_reads"]),
            ("meetkit_http_accept_errors_total",
             "Connections the status server could not accept for want of descriptors or memory.", c["accept_errors"]),
            ("meetkit_http_cpu_seconds_total", "CPU time the status server's threads used.",
             round(server.budget.charged, 3)),
        ):
            yield CounterMetricFamily(name, help, value)


def _healthz(store: Store) -> Response:
    nodes = store.node_count()
    alarms = [{"code": a.code, "at": a.at, "reason": a.reason} for a in store.active_alarms()]
    return _json(200, {"status": "ok", "db_id": store.db_id, "schema": SCHEMA_VERSION, "nodes": nodes,
                       "alarms": alarms})


class StatusServer:
    """`/healthz`, `/metrics`, the JSON API and the status page over `store_path`, read-only.

    `port` 0 picks a free one (see `.port` after `start()`). `cache_s`: how long an answer from the
    store is served again (0: never, for tests that change the store between requests)."""

    def __init__(self, store_path: str | Path, host: str = "127.0.0.1", port: int = 8080,
                 targets: Targets = lambda: [], static: Path = STATIC, fleet: Fleet | None = None,
                 limits: Limits = Limits(), cache_s: float = CACHE_S, secrets: FleetSecrets | None = None,
                 ota: OtaStatus | None = None, region: RegionConfig | None = None,
                 visitors: Visitors | None = None, store_max_bytes: int | None = None,
                 timezone: str = "Europe/Amsterdam") -> None:
        self.store_path = Path(store_path)
        self.timezone = timezone  # [http] timezone: the page shows every time in it
        self.region = region  # [region]: /metrics has each node's records not yet safe
        self.visitors = visitors  # [region]: each node's home town; the page flags unknown visitors
        self.store_max_bytes = store_max_bytes  # [store] max_bytes: /metrics's meetkit_store_max_bytes
        self.ota = ota  # the pieces served (gateway/ota.py), when [ota] is configured
        self.fleet = fleet  # the fleet register, shared with the forwarders (it locks itself)
        self.secrets = secrets  # what a node reports is shown with every password known taken out
        self.host = host
        self.requested_port = port
        self.targets = targets
        self.static = Path(static).resolve()
        self.limits = limits
        self.cache_s = cache_s
        self.server: HttpServer | None = None

    def open(self) -> Store:
        return Store(self.store_path, readonly=True)

    @property
    def port(self) -> int:
        assert self.server is not None, "not started"
        return self.server.port

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def start(self, announce: bool = True) -> "StatusServer":
        """Listen (OSError when the port cannot be had); `announce`: log where (else `announce()`)."""
        if self.server is not None:
            raise RuntimeError("the status server is running already")
        self.server = HttpServer(_App(self), self.host, self.requested_port, self.limits).start()
        if announce:
            self.announce()
        return self

    def announce(self) -> None:
        log.info("status page and /metrics on %s", self.url)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> "StatusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
