"""The gateway's own small web server: `/healthz`, `/metrics` (Prometheus) and the status page.

Standard library only (`http.server.ThreadingHTTPServer`): a Raspberry Pi installs nothing more.
Every request opens the store READ-ONLY on its own connection (WAL lets it read beside the writer),
so a slow client never holds up ingest, and a store moved aside and started afresh is simply
what the next request sees.

Endpoints (all GET; HEAD works too):

    /healthz        200 {"status": "ok", "db_id", "schema", "nodes", "alarms": [...]} when the
                    store opens read-only and answers a query; 503 {"status": "error", "reason"}
                    otherwise. Active alarms (disk full, ...) are listed but do not make it 503:
                    alert on `meetkit_alarm_active` instead.
    /metrics        Prometheus text exposition format 0.0.4 (see `metrics_text`).
    /api/nodes      {"now", "nodes": [...], "targets": [...], "alarms": [...], "counts": {...},
                    "fleet": {"path", "errors", "registered", "never_seen", "unregistered"}}:
                    the fleet table of the status page. Each node has "register": what the
                    fleet register says of it (name, board, installed, lat, lon, height_m, ...;
                    never its notes) or null; nodes of the register the store never heard of
                    are listed too, flagged "never seen"; with a readable register, nodes not
                    in it are flagged "not in the register".
    /api/series?node=ID&hours=24[&until=UNIX_S]
                    {"node", "since", "until", "now", "start": [unix s...], "pm25": [...], "pm10": [...],
                    "LAeq": [...], "LA10": [...], "LA90": [...], "temp": [...], "rh": [...],
                    "press": [...], "units": {...}}: one column per quantity aligned with
                    "start" (the record's interval start), null where a record had no value.
                    hours: 0 < hours <= 168 (default 24). Without `until`, the window
                    ends now, or at the node's newest record when it has none in the last
                    `hours` (a node long silent still shows its last day of data).
    /api/targets    {"now", "targets": [...]}: the forwarding targets as `targets()` gives them.
    /               the status page: gateway/static/index.html, app.js, style.css and uPlot
                    (gateway/static/vendor/, MIT), all served from here: it works offline.

The forwarding side reports its targets through the `targets` callable given to `StatusServer`:
it is called once per /metrics, /api/nodes or /api/targets request, from a request thread, and
must return a list of dicts (missing keys are left out of the output; it must not block long):

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

The fleet register (gateway/fleet.py) is read, when it changed, at each /metrics and /api/nodes
request; a register that cannot be read shows its problems there and fails nothing.

Wiring (gateway/service.py): build it next to the writer and start/stop it with the gateway,
stopping it first:

    self.http = StatusServer(config.store.path, config.http.host, config.http.port,
                             targets=lambda: [t.status() for t in self.forwarders],
                             fleet=Fleet(config.fleet))
    ... start(): self.http.start()       stop(): self.http.stop() before self.writer.close()
"""

from __future__ import annotations

import json
import logging
import math
import mimetypes
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from .fleet import Fleet
from .fleet_view import FleetView, view
from .payload import QUANTITIES
from .store import SCHEMA_VERSION, Store

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"

#: the quantities the status page plots, in its order
SERIES = ("pm25", "pm10", "LAeq", "LA10", "LA90", "temp", "rh", "press")
UNITS = {q: QUANTITIES[q].unit for q in SERIES}
#: a node not heard from for this long is flagged `stale` on the page (records are 1 min apart,
#: batches a few minutes)
STALE_S = 15 * 60

Targets = Callable[[], Iterable[dict[str, Any]]]


# -- Prometheus text format ------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Metric families in the text format: each family's HELP and TYPE once, then its samples."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help: str, value: float | int | None,
            labels: dict[str, str] | None = None) -> None:
        """One sample; a None value declares the family without a sample."""
        fam = self._families.setdefault(name, (kind, help, []))
        assert fam[0] == kind, f"{name} declared {fam[0]}, then {kind}"
        if value is None:
            return
        lab = ""
        if labels:
            lab = "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"
        fam[2].append(f"{name}{lab} {_number(value)}")

    def text(self) -> str:
        out = []
        for name, (kind, help, samples) in self._families.items():
            out.append(f"# HELP {name} {_escape_help(help)}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


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
                              "Dead letters the store's bounds dropped, by bound (age, bytes).", "reason"),
}


def gaps(boots: Iterable[tuple[str, int, int, int, int]]) -> dict[str, int]:
    """Records missing between the lowest and highest seq of each boot, summed per node."""
    out: dict[str, int] = {}
    for node, _boot, lo, hi, n in boots:
        out[node] = out.get(node, 0) + (hi - lo + 1 - n)
    return out


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


def _fleet_metrics(m: Exposition, fleet: FleetView, heard: set[str]) -> None:
    fams = (
        ("meetkit_fleet_error", "1 while the fleet register cannot be read (its problems are on the status page)."),
        ("meetkit_fleet_nodes_registered", "Nodes in the fleet register."),
        ("meetkit_fleet_nodes_never_seen", "Nodes in the fleet register the gateway never heard of."),
        ("meetkit_fleet_nodes_unregistered", "Nodes the gateway heard of that are not in the fleet register."),
    )
    for name, help in fams:
        m.add(name, "gauge", help, None)
    if not fleet.configured:
        return  # no register: nothing to say
    m.add(fams[0][0], "gauge", "", int(fleet.errors is not None))
    if fleet.usable:
        m.add(fams[1][0], "gauge", "", len(fleet.nodes))
        m.add(fams[2][0], "gauge", "", len(set(fleet.nodes) - heard))
        m.add(fams[3][0], "gauge", "", len(heard - set(fleet.nodes)))


def metrics_text(store: Store, targets: Targets, now: float | None = None, fleet: Fleet | None = None) -> str:
    """All metrics of the gateway: the store's counters, per node, per forwarding target, the fleet register."""
    now = time.time() if now is None else now
    m = Exposition()
    m.add("meetkit_store_up", "gauge", "1 when the store opened read-only and answered.", 1)
    counters = store.counters()
    for key, (name, help, label) in _COUNTERS.items():
        m.add(name, "counter", help, None)
        if label is None:
            m.add(name, "counter", help, counters.get(key, 0))
    other = "meetkit_store_counter_total"
    for key, value in counters.items():
        if key in _COUNTERS:
            continue
        for prefix, (name, help, label) in _COUNTERS.items():
            if label is not None and key.startswith(prefix):
                m.add(name, "counter", help, value, {label: key[len(prefix):]})
                break
        else:
            m.add(other, "counter", "Other counters of the store, by name.", value, {"name": key})
    counts = store.counts()
    m.add("meetkit_records", "gauge", "Records in the store.", counts.records)
    m.add("meetkit_readings", "gauge", "Readings (one per quantity of a record) in the store.", counts.readings)
    m.add("meetkit_dead_letters", "gauge", "Dead-lettered messages kept in the store.", counts.dead_letters)
    m.add("meetkit_nodes", "gauge", "Nodes ever heard of.", counts.nodes)
    size = 0
    for suffix in ("", "-wal"):
        p = Path(str(store.path) + suffix)
        if p.exists():
            size += p.stat().st_size
    m.add("meetkit_store_bytes", "gauge", "Size of the store's database and WAL files.", size)
    m.add("meetkit_store_used_bytes", "gauge",
          "Bytes of the store's pages in use (free pages not counted): what [store] max_bytes bounds.",
          store.used_bytes())
    m.add("meetkit_alarm_active", "gauge", "1 while an alarm is raised, by code.", None)
    for a in store.active_alarms():
        m.add("meetkit_alarm_active", "gauge", "", 1, {"code": a.code})

    boots = store.boots()
    per_node_gaps = gaps(boots)
    records: dict[str, int] = {}
    last_boot: dict[str, int] = {}
    for node, boot, _lo, _hi, n in boots:
        records[node] = records.get(node, 0) + n
        last_boot[node] = max(boot, last_boot.get(node, boot))
    fams = (
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
    )
    for name, kind, help in fams:
        m.add(name, kind, help, None)
    heard: set[str] = set()
    for n in store.nodes():
        heard.add(n.node)
        lab = {"node": n.node}
        if n.last_seen is not None:
            m.add(fams[0][0], "gauge", "", n.last_seen, lab)
        boot = n.boot if n.boot is not None else last_boot.get(n.node)
        if boot is not None:
            m.add(fams[1][0], "gauge", "", boot, lab)
        if n.online is not None:
            m.add(fams[2][0], "gauge", "", n.online, lab)
        if n.rssi is not None:
            m.add(fams[3][0], "gauge", "", n.rssi, lab)
        m.add(fams[4][0], "gauge", "", records.get(n.node, 0), lab)
        m.add(fams[5][0], "gauge", "", per_node_gaps.get(n.node, 0), lab)
        if n.dropped is not None:
            m.add(fams[6][0], "counter", "", n.dropped, lab)

    _fleet_metrics(m, view(fleet), heard)

    rows, error = _targets(targets)
    m.add("meetkit_forward_status_error", "gauge",
          "1 when the forwarding side could not report its targets.", int(error is not None))
    tfams = (
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
    )
    for _key, name, kind, help in tfams:
        m.add(name, kind, help, None)
    for t in rows:
        lab = {"target": t["name"], "kind": str(t.get("kind") or "")}
        for key, name, kind, _help in tfams:
            v = t.get(key)
            if isinstance(v, (int, float)):
                m.add(name, kind, "", v, lab)
    return m.text()


# -- JSON for the page -----------------------------------------------------------------------------


NEVER_SEEN = "never seen"  # in the register, never heard of
UNREGISTERED = "not in the register"  # heard of, not in a readable register


def nodes_doc(store: Store, targets: Targets, now: float | None = None, fleet: Fleet | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    reg = view(fleet)
    boots = store.boots()
    per_node_gaps = gaps(boots)
    records: dict[str, int] = {}
    for node, _boot, _lo, _hi, n in boots:
        records[node] = records.get(node, 0) + n
    latest = {l.node: l for l in store.latest()}
    out = []
    for n in store.nodes():
        l = latest.get(n.node)
        flags: set[str] = set()
        if l is not None:
            for r in l.readings.values():
                flags.update(r.flags)
        health = sorted(flags)
        if n.online is False:
            health.insert(0, "offline")
        if n.last_seen is None or now - n.last_seen > STALE_S:
            health.insert(0, "stale")
        if reg.usable and n.node not in reg.nodes:
            health.append(UNREGISTERED)
        out.append({
            "node": n.node, "online": n.online, "last_seen": n.last_seen, "rssi": n.rssi,
            "boot": n.boot if n.boot is not None else (l.boot if l else None), "fw": n.fw, "up": n.up,
            "dropped": n.dropped, "records": records.get(n.node, 0), "gaps": per_node_gaps.get(n.node, 0),
            "last_start": l.start if l else None, "flags": health, "register": reg.nodes.get(n.node),
        })
    heard = {n["node"] for n in out}
    never = [node for node in reg.nodes if node not in heard]
    for node in never:
        out.append({
            "node": node, "online": None, "last_seen": None, "rssi": None, "boot": None, "fw": None, "up": None,
            "dropped": None, "records": 0, "gaps": 0, "last_start": None, "flags": [NEVER_SEEN],
            "register": reg.nodes[node],
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
    }


def series_doc(store: Store, node: str, hours: float, now: float | None = None,
               until: float | None = None) -> dict[str, Any]:
    """The node's records of the `hours` before `until` (default: now). When the node has no
    record in that window (silent for longer, or a clock far off), the window ends at its newest
    record instead: the page then shows the node's last hours of data, dated."""
    now = time.time() if now is None else now
    end = now if until is None else until
    newest = store.newest_start(node)
    if until is None and newest is not None and not end - hours * 3600 <= newest <= end:
        end = newest + 60
    since = int(end - hours * 3600)
    starts: list[int] = []
    cols: dict[str, list[float | None]] = {q: [] for q in SERIES}
    for start, quantity, avg in store.series(node, since, SERIES):
        if start > end:
            break
        if not starts or starts[-1] != start:  # a second record of the same start: the later wins
            starts.append(start)
            for col in cols.values():
                col.append(None)
        cols[quantity][-1] = avg
    return {"node": node, "since": since, "until": end, "now": now, "hours": hours, "start": starts, **cols,
            "units": UNITS}


# -- the server ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "meetkit-gateway"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._handle(head=False)

    def _send(self, status: int, body: bytes, ctype: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, head: bool) -> None:
        self._send(status, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(),
                   "application/json", head)

    def _handle(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = url.path
        query = parse_qs(url.query)
        owner = self.server.owner
        try:
            if path == "/healthz":
                self._healthz(head)
            elif path == "/metrics":
                with owner.open() as store:
                    body = metrics_text(store, owner.targets, fleet=owner.fleet).encode()
                self._send(200, body, "text/plain; version=0.0.4; charset=utf-8", head)
            elif path == "/api/nodes":
                with owner.open() as store:
                    self._json(200, nodes_doc(store, owner.targets, fleet=owner.fleet), head)
            elif path == "/api/targets":
                rows, error = _targets(owner.targets)
                self._json(200, {"now": time.time(), "targets": rows, "targets_error": error}, head)
            elif path == "/api/series":
                node = query.get("node", [""])[0]
                try:
                    hours = float(query.get("hours", ["24"])[0])
                    if not 0 < hours <= 168:
                        raise ValueError
                except ValueError:
                    return self._json(400, {"error": "hours: a number, 0 < hours <= 168"}, head)
                try:
                    until = float(query["until"][0]) if "until" in query else None
                except ValueError:
                    return self._json(400, {"error": "until: unix seconds"}, head)
                if not node:
                    return self._json(400, {"error": "node: required"}, head)
                with owner.open() as store:
                    self._json(200, series_doc(store, node, hours, until=until), head)
            else:
                self._static(path, head)
        except Exception as e:
            log.exception("%s failed", self.path)
            self._json(503 if path != "/" else 500, {"error": f"{type(e).__name__}: {e}"}, head)

    def _healthz(self, head: bool) -> None:
        try:
            with self.server.owner.open() as store:
                nodes = store.db.execute("SELECT count(*) FROM nodes").fetchone()[0]
                alarms = [{"code": a.code, "at": a.at, "reason": a.reason} for a in store.active_alarms()]
                doc = {"status": "ok", "db_id": store.db_id, "schema": SCHEMA_VERSION, "nodes": nodes,
                       "alarms": alarms}
        except Exception as e:
            return self._json(503, {"status": "error", "reason": f"{type(e).__name__}: {e}"}, head)
        self._json(200, doc, head)

    def _static(self, path: str, head: bool) -> None:
        root = self.server.owner.static
        rel = "index.html" if path in ("/", "/index.html") else path.lstrip("/")
        target = (root / rel).resolve()
        if root not in target.parents or not target.is_file():
            return self._send(404, b"not found\n", "text/plain; charset=utf-8", head)
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
            ctype += "; charset=utf-8"
        self._send(200, target.read_bytes(), ctype, head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "StatusServer"


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """`/healthz`, `/metrics`, the JSON API and the status page over `store_path`, read-only.

    `port` 0 picks a free one (see `.port` after `start()`)."""

    def __init__(self, store_path: str | Path, host: str = "127.0.0.1", port: int = 8080,
                 targets: Targets = lambda: [], static: Path = STATIC, fleet: Fleet | None = None) -> None:
        self.store_path = Path(store_path)
        self.fleet = fleet  # the fleet register, shared by the request threads (it locks itself)
        self.host = host
        self.requested_port = port
        self.targets = targets
        self.static = Path(static).resolve()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def open(self) -> Store:
        return Store(self.store_path, readonly=True)

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"

    def start(self) -> "StatusServer":
        if self._server is not None:
            raise RuntimeError("the status server is running already")
        server_class = _Server6 if ":" in self.host else _Server
        self._server = server_class((self.host, self.requested_port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()
        log.info("status page and /metrics on %s", self.url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> "StatusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
