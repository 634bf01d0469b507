"""OGC SensorThings API v1.1 target (`type = "sensorthings"`): readings become Observations of
Datastreams, sent with the dataArray extension, `POST <root>/CreateObservations` (OGC 18-088
clause 14.2 "Create Observations with dataArray"; FROST-Server implements it as documented in its
"DataArray" extension). What each entity holds: sensorthings_model.py. HTTP: sensorthings_client.py.

Entities on first use. Before a reading of a new (node, quantity, sensor model) is sent, its Thing,
Sensor, ObservedProperty and Datastream are looked up on the service (`GET Things?$filter=name eq
'ams-001'`, `GET Things(<id>)/Datastreams?$filter=name eq '...'`; an entity counts as ours when its
`properties.source` is "meetkit") and created only when missing. So a restart, a fresh database
or a second gateway never creates one twice. Ids are kept in memory and in the store's
`sensorthings_entities` (gateway/store/sensorthings.py: per service, kind and key, the @iot.id, a
Datastream's `sent_until`, whether a Thing has a Location, what the service was last `sent` of a
Thing; a Thing cached before the fleet register, without `sent`, is read back from the service once).

Positions. A Thing gets a Location when the fleet register (gateway/fleet.py) knows where the
node is. The service makes each Observation's FeatureOfInterest from the Thing's Location, and
refuses Observations of a Thing without one (FROST: "No FeatureOfInterest provided, and none can
be generated"). So the readings of a node with no known position are refused here, with that
reason, without sending them (the store keeps them; a replay sends them); once the register has
the node, its Thing gets the Location (`POST Things(<id>)/Locations`) before its next readings go.

The register changes. Before a node's readings go, what the register says of it is compared, in
memory, with what the service was last sent (`sent`), so an unchanged register costs no request.
A new position (lat, lon or height_m) is a new Location, `POST Things(<id>)/Locations`: the
service links it in place of the old one and records a HistoricalLocation (18-088 clause 8.2.3),
so the old place stays in the Thing's history, and the readings from then on get a
FeatureOfInterest at the new place. A new name only is `PATCH Locations(<id>)` (same place, same
FeatureOfInterest). Other changes (board, name, installed, serials, calibration) are one `PATCH
Things(<id>)` of its description and properties. A PATCH the service refuses with a 4xx is logged
and not tried again until the register changes: the readings are right without it. A position
the register no longer has leaves the Thing at its last Location. A register that cannot be read
holds the target back (retried, nothing lost) while a batch has a node that needs it (a new
Thing, one without a position); batches of nodes already described go on as last described, and
the status page shows the register's problem.

Per-row results. CreateObservations answers 201 with one entry per dataArray row, in order: the
new Observation's self link, or a string starting with "error" (FROST: "error <message>"). Rows in
error go back as `Result.refused`, so the forwarder dead-letters those readings with the service's
reason and counts the rest as sent; the Datastream of a refused row is looked up again before its
next use (it may have been deleted upstream). A reading the gateway cannot describe (an unknown
sensor model) and the readings of an entity the service refuses with a 4xx (say a Thing it does
not accept) are refused the same way, without holding back the other nodes.

Idempotent replay. SensorThings has no upsert, and client-chosen ids are not portable (FROST
only accepts them when configured to; a server-generated id cannot be known in advance). So this
target keeps, per Datastream, `sent_until`: the latest resultTime (= interval end) of any reading
it has ever POSTed there, written to the store BEFORE the POST. A reading at or before that mark
may be upstream already: after an answer that never came (a timeout, a dropped connection, a
crash between the service's answer and the cursor's commit) or after the operator reset the
cursor. For those readings only, the Observations of the Datastream in their resultTime range are
fetched (`GET Datastreams(<id>)/Observations?$filter=resultTime ge .. and resultTime le ..
&$select=phenomenonTime`) and those whose phenomenonTime interval is already there are not sent
again. A Datastream found on the service (made by an earlier database or another gateway) starts
with its newest Observation's resultTime as mark. New readings, the normal case, cost no lookup.

Across gateways (a region, `[region]` in gateway.toml). Gateways with stores of their own forward
the same record when a node fails over from one to another (each gets it from the node's spool),
and neither one's `sent_until` knows what the other sent. So in a region every Observation carries
its record's `boot` and `seq` in `parameters`, and before any reading is created the service is
asked which of the batch's records its Datastream has already (`GET Datastreams(<id>)/Observations
?$filter=parameters/boot eq 3 and parameters/seq ge 16 and parameters/seq le 17&$select=parameters`,
one request per Datastream and boot of the batch): those are not created again, whichever gateway
made them. It costs that request for every batch, new readings too, and it narrows the race
without closing it: two gateways sending the same record within the same moment (between one's
lookup and its create) can still both create it; after a failover they do not, since the node
sends its spool to one gateway at a time.

Older stores. Records with an implausible time never reach this target (core.py passes them
over). But a gateway before issue 13 may have sent one (a phenomenonTime in 2100) or marked one
(`sent_until` of the year 318857, when formatting it failed after the mark was written): a mark
later than any plausible interval end is taken again from the service, its newest Observation up
to that limit, and a Datastream's newest Observation is looked for only up to it; otherwise every
later reading would be looked up, or fail to be.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..config import ForwardConfig
from ..fleet import Fleet, FleetError
from ..payload import DUR_MAX, FUTURE_MARGIN_S
from ..store import Store
from . import sensorthings_model as model
from .core import Result, Row, auth_header, refused_readings
from .sensorthings_client import Client, Failure, key, literal

log = logging.getLogger(__name__)

TOP = 1000  # entities asked for per page of a lookup


def _latest_end() -> int:
    """The latest interval end a plausible record can have now (plausible.py)."""
    return int(time.time()) + FUTURE_MARGIN_S + DUR_MAX


@dataclass
class Entity:
    kind: str
    key: str
    id: int | str
    sent_until: int | None = None  # Datastreams
    located: bool = False  # Things
    sent: dict[str, Any] | None = None  # Things: what the service has (`_upstream` says what)


def _plain(value: Any) -> Any:
    """`value` as it comes back from JSON (tuples as lists): what is compared with `sent`."""
    return json.loads(json.dumps(value))


def _label(loc: dict[str, Any] | None) -> dict[str, Any] | None:
    return {"name": loc.get("name"), "description": loc.get("description")} if isinstance(loc, dict) else None


class SensorThingsSender:
    """Sends batches to one SensorThings service; entity ids cached in `store_path`."""

    kind = "sensorthings"

    def __init__(self, cfg: ForwardConfig, store_path: str | Path, region: bool = False) -> None:
        self.cfg = cfg
        self.region = region  # look each record up on the service before creating it
        self.store_path = Path(store_path)
        self.service = cfg.url
        self.client = Client(cfg.url, cfg.timeout, self._auth)
        self.fleet = Fleet(cfg.fleet)
        self._store: Store | None = None
        self._known: dict[tuple[str, str], Entity] = {}

    # -- auth, the table -------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return auth_header(self.cfg, "Bearer")

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.store_path)
            self._store.prepare_sensorthings()
        return self._store

    def _cached(self, kind: str, name: str) -> Entity | None:
        e = self._known.get((kind, name))
        if e is None:
            row = self.store.sensorthings_entity(self.service, kind, name)
            if row is not None:
                e = self._known[(kind, name)] = Entity(kind, name, json.loads(row[0]), row[1], bool(row[2]),
                                                       None if row[3] is None else json.loads(row[3]))
        return e

    def _remember(self, e: Entity) -> Entity:
        self.store.save_sensorthings_entity(self.service, e.kind, e.key, json.dumps(e.id), e.sent_until, e.located,
                                            None if e.sent is None else json.dumps(e.sent))
        self._known[(e.kind, e.key)] = e
        return e

    def _forget(self, kind: str, name: str) -> None:
        self._known.pop((kind, name), None)
        self.store.forget_sensorthings_entity(self.service, kind, name)

    def _mark(self, sending: dict[str, tuple[Entity, list[Row]]]) -> None:
        """Move each Datastream's `sent_until` past what is about to be POSTed, on disk first."""
        with self.store.transaction():
            for ds, rows in sending.values():
                until = max(model.end(r) for r in rows)
                ds.sent_until = until if ds.sent_until is None else max(ds.sent_until, until)
                self.store.set_sent_until(self.service, ds.kind, ds.key, ds.sent_until)

    @contextmanager
    def _gone_on_404(self, kind: str, name: str) -> Iterator[None]:
        """A 404 under an entity we know means it was deleted upstream: forget it, so that the
        retry looks it up (and makes it) again instead of failing for ever."""
        try:
            yield
        except Failure as f:
            if f.status == 404:
                self._forget(kind, name)
            raise

    # -- entities ------------------------------------------------------------------------------------

    def _find(self, path: str, name: str, **properties: str) -> dict[str, Any] | None:
        """Our entity named `name` in collection `path` (properties.source is ours, and the other
        `properties` match), None if there is none."""
        for v in self.client.values(path, filter=f"name eq {literal(name)}", select="id,properties", top=str(TOP)):
            props = v.get("properties")
            if isinstance(props, dict) and props.get("source") == model.SOURCE and all(
                    props.get(k) == x for k, x in properties.items()) and "@iot.id" in v:
                return v
        return None

    def _entity(self, kind: str, name: str, collection: str, body: dict[str, Any], **match: str) -> Entity:
        e = self._cached(kind, name)
        if e is not None:
            return e
        found = self._find(f"/{collection}", body["name"], **match)
        if found is not None:
            return self._remember(Entity(kind, name, found["@iot.id"]))
        iot_id = self.client.create(collection, body)
        log.info("sensorthings %s: created %s %r (%s)", self.cfg.name, kind, body["name"], iot_id)
        return self._remember(Entity(kind, name, iot_id))

    def _thing(self, row: Row) -> Entity:
        e = self._cached("Thing", row.node)
        if e is not None:
            return e
        meta = self.fleet.node_metadata(row.node)  # FleetError: held back until the file is fixed
        body = model.thing(row.node, row.board, row.fw, meta)
        found = self._find("/Things", row.node, node=row.node)
        if found is not None:
            e = Entity("Thing", row.node, found["@iot.id"])
            e.sent = self._upstream(e)  # compared with the register before its readings go
            e.located = e.sent["place"] is not None
            return self._remember(e)
        iot_id = self.client.create("Things", body)
        log.info("sensorthings %s: created Thing %r (%s)%s", self.cfg.name, row.node, iot_id,
                 "" if "Locations" in body else " without a Location: its position is not known")
        loc = body.get("Locations", [None])[0]
        sent = {"description": body["description"], "properties": body["properties"], "place": model.place(loc),
                "label": _label(loc), "location_id": None}  # the deep insert's Location id: looked up if needed
        return self._remember(Entity("Thing", row.node, iot_id, located=loc is not None, sent=_plain(sent)))

    def _upstream(self, thing: Entity) -> dict[str, Any]:
        """What the service has of `thing`: its description, properties and current Location."""
        path = f"/Things({key(thing.id)})"
        with self._gone_on_404("Thing", thing.key):
            t = self.client.entity(path, select="id,description,properties")
            locs = self.client.values(f"{path}/Locations", pages=1, top="1",
                                      select="id,name,description,location,properties")
        loc = locs[0] if locs else None
        return _plain({"description": t.get("description"), "properties": t.get("properties") or {},
                       "place": model.place(loc), "label": _label(loc),
                       "location_id": loc.get("@iot.id") if loc else None})

    def _describe(self, thing: Entity, row: Row) -> str | None:
        """Bring the Thing and its Location up to what the register says of the node (requests
        only for what changed); the reason its readings cannot go when it has no position."""
        node = row.node
        try:
            meta = self.fleet.node_metadata(node)
        except FleetError:
            if thing.located:
                return None  # goes on as last described; the status page shows the register's problem
            raise
        if thing.sent is None:  # cached before the register: read back once
            thing.sent = self._upstream(thing)
            self._remember(thing)
        sent = thing.sent
        props = sent["properties"]
        want = _plain(model.thing_update(node, props.get("board", row.board), props.get("fw", row.fw), meta))
        if want != {"description": sent["description"], "properties": props}:
            self._patch("Thing", node, f"/Things({key(thing.id)})", want)
            sent.update(want)
            self._remember(thing)
        loc = model.location(node, meta)
        if loc is None:
            if sent["place"] is not None:
                return None  # no position in the register any more: the Thing stays where it was last put
            where = f"the fleet file {self.cfg.fleet}" if self.cfg.fleet else "a fleet file (none is configured)"
            return (f"node {node} has no known position, and the service makes each Observation's "
                    f"FeatureOfInterest from its Thing's Location: add the node to {where}, then replay")
        if _plain(model.place(loc)) != sent["place"]:
            with self._gone_on_404("Thing", node):
                loc_id = self.client.create(f"Things({key(thing.id)})/Locations", loc)
            log.info("sensorthings %s: Thing %r %s", self.cfg.name, node,
                     "got its Location" if sent["place"] is None else "moved: a new Location")
            sent.update(place=_plain(model.place(loc)), label=_label(loc), location_id=loc_id)
            thing.located = True
            self._remember(thing)
        elif _label(loc) != sent["label"]:
            if sent["location_id"] is None:
                with self._gone_on_404("Thing", node):
                    found = self.client.values(f"/Things({key(thing.id)})/Locations", pages=1, top="1", select="id")
                sent["location_id"] = found[0].get("@iot.id") if found else None
            if sent["location_id"] is not None:
                self._patch("Thing", node, f"/Locations({key(sent['location_id'])})", _label(loc) or {})
            sent["label"] = _label(loc)
            self._remember(thing)
        return None

    def _patch(self, kind: str, name: str, path: str, body: dict[str, Any]) -> None:
        """PATCH `path`; a refusal for good is logged, not retried: the readings are right without it."""
        try:
            with self._gone_on_404(kind, name):
                self.client.update(path, body)
        except Failure as f:
            if not f.permanent:
                raise
            log.warning("sensorthings %s: the service refused to update %s of node %r: %s; not tried again "
                        "until the fleet register changes", self.cfg.name, path, name, f.reason)
            return
        log.info("sensorthings %s: updated %s of node %r from the fleet register", self.cfg.name, path, name)

    def _datastream(self, row: Row, sensor_model: str) -> Entity:
        name = model.datastream_name(row.node, row.quantity, sensor_model)
        e = self._cached("Datastream", name)
        if e is not None:
            if e.sent_until is not None and not e.sent_until <= _latest_end():  # an older gateway's mark
                log.warning("sensorthings %s: Datastream %r was marked as sent up to %s, later than any reading "
                            "can end: taking the mark from the service again", self.cfg.name, name,
                            model.iso(e.sent_until))
                e.sent_until = self._newest(e.id)
                self._remember(e)
            return e
        ids = {"Thing": self._thing(row).id,
               "Sensor": self._entity("Sensor", sensor_model, "Sensors", model.sensor(sensor_model),
                                      model=sensor_model).id,
               "ObservedProperty": self._entity("ObservedProperty", row.quantity, "ObservedProperties",
                                                model.observed_property(row.quantity), quantity=row.quantity).id}
        body = model.datastream(row.node, row.quantity, sensor_model, row.unit, ids)
        with self._gone_on_404("Thing", row.node):
            found = self._find(f"/Things({key(ids['Thing'])})/Datastreams", name)
        if found is not None:
            return self._remember(Entity("Datastream", name, found["@iot.id"], self._newest(found["@iot.id"])))
        try:
            iot_id = self.client.create("Datastreams", body)
        except Failure as f:
            if f.permanent:  # perhaps a Thing, Sensor or ObservedProperty deleted upstream: look again next time
                for kind, k in (("Thing", row.node), ("Sensor", sensor_model), ("ObservedProperty", row.quantity)):
                    self._forget(kind, k)
            raise
        log.info("sensorthings %s: created Datastream %r (%s)", self.cfg.name, name, iot_id)
        return self._remember(Entity("Datastream", name, iot_id))

    def _newest(self, iot_id: int | str) -> int | None:
        """The resultTime (else phenomenonTime end) of the Datastream's newest Observation that
        a plausible reading can have (not one in 2100 an older gateway sent)."""
        path = f"/Datastreams({key(iot_id)})/Observations"
        for v in self.client.values(path, pages=1, orderby="resultTime desc", top="1",
                                    filter=f"resultTime le {model.iso(_latest_end())}",
                                    select="phenomenonTime,resultTime")[:1]:
            if isinstance(v.get("resultTime"), str):
                return model.parse_time(v["resultTime"])
            span = model.interval(v.get("phenomenonTime", ""))
            return span[1] if span else None
        return None

    def _existing(self, ds: Entity, rows: list[Row]) -> set[tuple[int, int]]:
        """(start, end) of the Observations the Datastream already has in the rows' resultTime range."""
        lo, hi = min(model.end(r) for r in rows), max(model.end(r) for r in rows)
        with self._gone_on_404("Datastream", ds.key):
            found = self.client.values(
                f"/Datastreams({key(ds.id)})/Observations",
                filter=f"resultTime ge {model.iso(lo)} and resultTime le {model.iso(hi)}",
                select="phenomenonTime", top=str(TOP))
        return {span for v in found if (span := model.interval(v.get("phenomenonTime", ""))) is not None}

    def _records_there(self, ds: Entity, rows: list[Row]) -> set[tuple[int, int]]:
        """(boot, seq) of the rows' records the Datastream already has an Observation of (a
        region: made by this gateway or another one), one request per boot."""
        seqs: dict[int, list[int]] = {}
        for r in rows:
            seqs.setdefault(r.boot, []).append(r.seq)
        there: set[tuple[int, int]] = set()
        for boot, ss in seqs.items():
            with self._gone_on_404("Datastream", ds.key):
                found = self.client.values(
                    f"/Datastreams({key(ds.id)})/Observations",
                    filter=f"parameters/boot eq {boot} and parameters/seq ge {min(ss)} and parameters/seq le {max(ss)}",
                    select="parameters", top=str(TOP))
            for v in found:
                p = v.get("parameters")
                if isinstance(p, dict) and isinstance(p.get("seq"), int):
                    there.add((boot, p["seq"]))
        return there

    # -- a batch ---------------------------------------------------------------------------------------

    def send(self, rows: Sequence[Row]) -> Result:
        try:
            return self._send(rows)
        except Failure as f:
            return Result(False, f.reason, status=f.status, permanent=f.permanent, retry_after=f.retry_after)
        except FleetError as e:
            return Result(False, str(e))

    def _send(self, rows: Sequence[Row]) -> Result:
        refused: list[tuple[Row, int | None, str]] = []  # (reading, status, reason)
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for r in rows:
            if r.avg is None or not math.isfinite(r.avg):
                continue  # no value: not an OM_Measurement (the store keeps it, with its flags)
            try:
                groups.setdefault((r.node, r.quantity, model.sensor_model(r)), []).append(r)
            except model.Unmapped as e:
                refused.append((r, None, str(e)))
        sending: dict[str, tuple[Entity, list[Row]]] = {}
        described: dict[str, str | None] = {}  # node -> the reason its readings cannot go, once a batch
        for (node, _, sensor_model), group in groups.items():
            try:
                ds = self._datastream(group[0], sensor_model)
                if node not in described:
                    described[node] = self._describe(self._thing(group[0]), group[0])
                unlocated = described[node]
            except (Failure, model.Unmapped) as e:
                if isinstance(e, Failure) and not e.permanent:
                    raise
                status, reason = (e.status, e.reason) if isinstance(e, Failure) else (None, str(e))
                refused.extend((r, status, reason) for r in group)
                continue
            if unlocated is not None:
                refused.extend((r, None, unlocated) for r in group)
                continue
            if ds.sent_until is not None and any(model.end(r) <= ds.sent_until for r in group):
                there = self._existing(ds, [r for r in group if model.end(r) <= ds.sent_until])
                group = [r for r in group if (r.start, model.end(r)) not in there]
            if group and self.region:
                made = self._records_there(ds, group)
                group = [r for r in group if (r.boot, r.seq) not in made]
            if group:
                sending[ds.key] = (ds, group)
        if not sending:
            return Result(True, refused=refused_readings(refused))
        self._mark(sending)
        body = [{"Datastream": {"@iot.id": ds.id}, "components": list(model.COMPONENTS),
                 "dataArray@iot.count": len(group), "dataArray": [model.observation(r, self.region) for r in group]}
                for ds, group in sending.values()]
        status, answers = self.client.create_observations(body)
        order = [(ds, r) for ds, group in sending.values() for r in group]
        if len(answers) != len(order):
            # the service took something but says not what: sent again, the lookup skips what is there
            raise Failure(f"POST /CreateObservations: {len(answers)} answers for {len(order)} observations", status)
        doubtful: set[str] = set()
        for (ds, r), answer in zip(order, answers):
            if not isinstance(answer, str) or answer.startswith("error"):
                refused.append((r, status, f"Datastream {ds.key!r}: {str(answer)[:300]}"))
                doubtful.add(ds.key)
        for name in doubtful:  # perhaps deleted upstream: looked up again before its next use
            self._forget("Datastream", name)
        return Result(True, status=status, refused=refused_readings(refused))

    def close(self) -> None:
        self.client.close()
        if self._store is not None:
            self._store.close()
            self._store = None
