"""A STRICT contract server for the OGC SensorThings API v1.1 subset the gateway uses.

No SensorThings server can be installed here (FROST-Server needs Java, Tomcat and PostGIS), so the
tests (tests/gateway/) and bench/sensorthings.py run against this one. It rejects what a real
service (OGC 18-088; FROST-Server as the reference implementation) would reject, and answers as it
would:

- entity collections Things, Locations, Sensors, ObservedProperties, Datastreams, Observations,
  FeaturesOfInterest: POST creates (201, `Location` header with the self link, the entity as
  body), with 400 for malformed JSON, a missing mandatory property (18-088 clause 8: Thing name,
  description; Location name, description, encodingType application/geo+json or
  application/vnd.geo+json, location; Sensor name, description, encodingType, metadata;
  ObservedProperty name, definition, description; Datastream name, description,
  unitOfMeasurement {name, symbol, definition}, observationType, Thing, Sensor, ObservedProperty),
  a property the entity type does not have, a wrong type, or a link to an entity that does not
  exist. Deep insert: Locations inside a Thing; `POST Things(<id>)/Locations` links the new
  Location to the Thing (replacing its current one, as FROST does). Whenever a Thing gets a
  Location (made with one, a new one POSTed under it, a PATCH of its Locations) the service makes
  a HistoricalLocation {time: now, Thing, Locations} (18-088 clause 8.2.3).
- PATCH of one entity (`Things(<id>)`, `Locations(<id>)`, ...; 18-088 clause 10.3): the given
  properties replace the entity's (a JSON object such as `properties` as a whole), checked as on
  creation (400 for an unknown property, a wrong type, a mandatory one set to null, the id, a
  broken GeoJSON; 404 for no such entity); links to existing entities only. Answer 200, no body.
- GET of a collection, of a navigation path (Things(<id>)/Datastreams, Things(<id>)/Locations,
  Things(<id>)/HistoricalLocations, Datastreams(<id>)/Observations) or of one entity (`$select`
  only), with `$filter` (comparisons eq ne gt ge lt le
  joined by `and`; string literals in single quotes with '' for a quote, numbers, ISO 8601
  instants; paths into JSON like properties/source), `$select`, `$top`, `$skip`, `$orderby`;
  `max_top` entities per page at most, then `@iot.nextLink`. 400 for anything else in the query.
- POST CreateObservations (the dataArray extension, 18-088 clause 14): 400 when the request is
  not an array of {Datastream, components, dataArray}; per row, like FROST, a self link or
  "error <message>": no such Datastream, no result, a result that is not a number for an
  OM_Measurement Datastream, a phenomenonTime that is neither an instant nor an interval, a
  resultTime that is not an instant, parameters that are not an object, and no FeatureOfInterest
  when the Datastream's Thing has no Location to make one from. Answer 201.
- `outage`: answers to give instead of serving (e.g. 503 with Retry-After); `drop_answers`: the
  next N CreateObservations are carried out but the connection is closed without an answer (an
  uncertain failure); `auth`: the Authorization header required (else 401).

Everything that arrives is kept in `requests`; `state` holds the entities (shared with a server
restarted on the same port).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

ROOT = "/FROST-Server/v1.1"
GEOJSON = ("application/geo+json", "application/vnd.geo+json")
SENSOR_ENCODINGS = ("application/pdf", "http://www.opengis.net/doc/IS/SensorML/2.0", "text/html")
OBSERVATION_TYPES = {
    "http://www.opengis.net/def/observationType/OGC-OM/2.0/" + t
    for t in ("OM_Measurement", "OM_CategoryObservation", "OM_CountObservation", "OM_Observation",
              "OM_TruthObservation")
}
OM_MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
COMPONENTS = {"id", "@iot.id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime",
              "parameters", "FeatureOfInterest/id"}

# Per entity type: mandatory properties, optional ones (with their JSON type), links to one entity.
STR, OBJ, ANY = str, dict, object
TYPES: dict[str, dict[str, Any]] = {
    "Things": {"required": {"name": STR, "description": STR}, "optional": {"properties": OBJ},
               "one": {}, "many": {"Locations": "Locations"}},
    "Locations": {"required": {"name": STR, "description": STR, "encodingType": STR, "location": OBJ},
                  "optional": {"properties": OBJ}, "one": {}, "many": {}},
    "Sensors": {"required": {"name": STR, "description": STR, "encodingType": STR, "metadata": STR},
                "optional": {"properties": OBJ}, "one": {}, "many": {}},
    "ObservedProperties": {"required": {"name": STR, "definition": STR, "description": STR},
                           "optional": {"properties": OBJ}, "one": {}, "many": {}},
    "Datastreams": {"required": {"name": STR, "description": STR, "unitOfMeasurement": OBJ, "observationType": STR},
                    "optional": {"properties": OBJ, "observedArea": OBJ, "phenomenonTime": STR, "resultTime": STR},
                    "one": {"Thing": "Things", "Sensor": "Sensors", "ObservedProperty": "ObservedProperties"},
                    "many": {}},
    "FeaturesOfInterest": {"required": {"name": STR, "description": STR, "encodingType": STR, "feature": OBJ},
                           "optional": {"properties": OBJ}, "one": {}, "many": {}},
    "Observations": {"required": {}, "optional": {"phenomenonTime": STR, "result": ANY, "resultTime": STR,
                                                  "resultQuality": ANY, "validTime": STR, "parameters": OBJ},
                     "one": {"Datastream": "Datastreams", "FeatureOfInterest": "FeaturesOfInterest"}, "many": {}},
    "HistoricalLocations": {"required": {"time": STR}, "optional": {}, "one": {"Thing": "Things"},
                            "many": {"Locations": "Locations"}},
}
REQUIRED_LINKS = {"Datastreams": ("Thing", "Sensor", "ObservedProperty"), "HistoricalLocations": ("Thing",)}
NAVIGATION = {("Things", "Datastreams"): "Thing", ("Things", "Locations"): "Things",
              ("Things", "HistoricalLocations"): "Thing", ("Datastreams", "Observations"): "Datastream"}


class Invalid(Exception):
    """400: the request is not what the API accepts."""


def parse_instant(text: Any) -> datetime:
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)",
                                                     text):
        raise ValueError(f"not an ISO 8601 instant with a zone: {text!r}")
    return datetime.fromisoformat(text)


def parse_time(text: Any) -> tuple[datetime, datetime]:
    """An instant (start = end) or an interval `start/end`, as FROST's TimeInstant/TimeInterval."""
    if isinstance(text, str) and "/" in text:
        a, b = text.split("/", 1)
        start, end = parse_instant(a), parse_instant(b)
        if end < start:
            raise ValueError(f"interval ends before it starts: {text!r}")
        return start, end
    t = parse_instant(text)
    return t, t


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class State:
    """The entities and what arrived, kept across a restart of the server."""

    entities: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: {t: {} for t in TYPES})
    next_id: int = 1
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)  # method, path, query, body
    lock: threading.RLock = field(default_factory=threading.RLock)


class SensorThingsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, state: State | None = None, max_top: int = 100) -> None:
        self.state = state or State()
        self.max_top = max_top
        self.outage: list[tuple[int, dict[str, str]]] = []  # next answers instead of serving
        self.drop_answers = 0
        self.auth: str | None = None
        self.connections: set[Any] = set()  # open client sockets: closed by stop(), like a dying server
        super().__init__(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ROOT}"

    def stop(self) -> None:
        """Stop as a crashed server would: no new connections, the open ones cut."""
        self.shutdown()
        self.server_close()
        for c in list(self.connections):
            try:
                c.shutdown(2)
            except OSError:
                pass

    # -- for the tests ---------------------------------------------------------------------------------

    def all(self, collection: str) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(e) for e in self.state.entities[collection].values()]

    def observations(self, datastream: int) -> list[dict[str, Any]]:
        return [o for o in self.all("Observations") if o["Datastream"] == datastream]

    def delete(self, collection: str, iot_id: int) -> None:
        with self.state.lock:
            del self.state.entities[collection][iot_id]
            if collection == "Datastreams":  # its Observations go with it, as in FROST
                obs = self.state.entities["Observations"]
                for k in [k for k, o in obs.items() if o["Datastream"] == iot_id]:
                    del obs[k]

    def requests(self, method: str | None = None, prefix: str = "") -> list[tuple[str, str, dict[str, str], Any]]:
        with self.state.lock:
            return [r for r in self.state.requests if (method is None or r[0] == method) and r[1].startswith(prefix)]

    # -- the API -----------------------------------------------------------------------------------------

    def _new_id(self) -> int:
        self.state.next_id += 1
        return self.state.next_id - 1

    def link(self, collection: str, iot_id: int) -> str:
        return f"{self.url}/{collection}({iot_id})"

    def create(self, collection: str, body: Any, parent: tuple[str, int] | None = None) -> int:
        """Validate and store `body` as a new entity of `collection` (deep inserts included)."""
        if not isinstance(body, dict):
            raise Invalid(f"a {collection[:-1]} must be a JSON object")
        spec = TYPES[collection]
        if "@iot.id" in body or "id" in body:
            raise Invalid("the id is generated by the server (idGenerationMode ServerGeneratedOnly)")
        allowed = set(spec["required"]) | set(spec["optional"]) | set(spec["one"]) | set(spec["many"])
        for k in body:
            if k not in allowed:
                raise Invalid(f"unknown property {k!r} of {collection}")
        for k, kind in spec["required"].items():
            if body.get(k) is None:
                raise Invalid(f"Missing required property '{k}'")
        for k, kind in {**spec["required"], **spec["optional"]}.items():
            if k in body and kind is not ANY and body[k] is not None and not isinstance(body[k], kind):
                raise Invalid(f"property {k!r} must be a {'string' if kind is str else 'JSON object'}")
        entity = {k: body[k] for k in {**spec["required"], **spec["optional"]} if k in body}
        self._check(collection, entity)
        for k, target in spec["one"].items():
            ref = body.get(k)
            if ref is None:
                if k in REQUIRED_LINKS.get(collection, ()) or (
                        collection == "Observations" and k == "Datastream" and not parent):
                    raise Invalid(f"Missing required property '{k}'")
                entity[k] = None
                continue
            entity[k] = self._ref(target, ref)
        if parent is not None:
            entity[parent[0]] = parent[1]
        with self.state.lock:
            links = {}
            for k, target in spec["many"].items():
                refs = body.get(k, [])
                if not isinstance(refs, list):
                    raise Invalid(f"{k} must be an array")
                links[k] = [self._ref(target, r) if isinstance(r, dict) and "@iot.id" in r else
                            self.create(target, r) for r in refs]
            iot_id = self._new_id()
            entity["@iot.id"] = iot_id
            entity.update(links)
            self.state.entities[collection][iot_id] = entity
            if collection == "Things" and links.get("Locations"):
                self.historical(iot_id, links["Locations"])
        return iot_id

    def historical(self, thing: int, locations: list[int]) -> None:
        """The HistoricalLocation the service makes when a Thing gets a Location."""
        with self.state.lock:
            iot_id = self._new_id()
            self.state.entities["HistoricalLocations"][iot_id] = {
                "@iot.id": iot_id, "time": iso(datetime.now(timezone.utc)), "Thing": thing, "Locations": list(locations)}

    def update(self, collection: str, iot_id: int, body: Any) -> None:
        """PATCH: validate `body` and set its properties and links on the entity."""
        if not isinstance(body, dict) or not body:
            raise Invalid("a PATCH takes a JSON object with the properties to change")
        if "@iot.id" in body or "id" in body:
            raise Invalid("the id of an entity cannot be changed")
        spec = TYPES[collection]
        plain = {**spec["required"], **spec["optional"]}
        for k in body:
            if k not in plain and k not in spec["one"] and k not in spec["many"]:
                raise Invalid(f"unknown property {k!r} of {collection}")
        with self.state.lock:
            entity = dict(self.state.entities[collection][iot_id])
            for k, kind in plain.items():
                if k not in body:
                    continue
                if body[k] is None and k in spec["required"]:
                    raise Invalid(f"property {k!r} is mandatory and cannot be null")
                if body[k] is not None and kind is not ANY and not isinstance(body[k], kind):
                    raise Invalid(f"property {k!r} must be a {'string' if kind is str else 'JSON object'}")
                entity[k] = body[k]
            self._check(collection, entity)
            for k, target in spec["one"].items():
                if k in body:
                    entity[k] = self._ref(target, body[k])
            moved = None
            for k, target in spec["many"].items():
                if k in body:
                    if not isinstance(body[k], list):
                        raise Invalid(f"{k} must be an array")
                    entity[k] = [self._ref(target, r) for r in body[k]]
                    if collection == "Things" and k == "Locations" and entity[k]:
                        moved = entity[k]
            self.state.entities[collection][iot_id] = entity
            if moved:
                self.historical(iot_id, moved)

    def _ref(self, collection: str, ref: Any) -> int:
        if not isinstance(ref, dict) or set(ref) != {"@iot.id"}:
            raise Invalid(f"a link to {collection} must be {{\"@iot.id\": ...}} (deep insert of {collection} here "
                          "is not in this contract server's subset)")
        iot_id = ref["@iot.id"]
        if iot_id not in self.state.entities[collection]:
            raise Invalid(f"No such entity '{collection}' with id {iot_id}")
        return iot_id

    def _check(self, collection: str, e: dict[str, Any]) -> None:
        if collection in ("Locations", "FeaturesOfInterest"):
            if e["encodingType"] not in GEOJSON:
                raise Invalid(f"encodingType {e['encodingType']!r} is not GeoJSON")
            geo = e["location" if collection == "Locations" else "feature"]
            if geo.get("type") != "Point" or not isinstance(geo.get("coordinates"), list):
                raise Invalid("only GeoJSON Points in this contract server's subset")
            c = geo["coordinates"]
            if not 2 <= len(c) <= 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in c):
                raise Invalid(f"a Point has 2 or 3 numbers, got {c!r}")
            if not (-180 <= c[0] <= 180 and -90 <= c[1] <= 90):
                raise Invalid(f"Point {c!r} is not [longitude, latitude]")
        if collection == "HistoricalLocations":
            try:
                parse_instant(e["time"])
            except ValueError as x:
                raise Invalid(f"time: {x}") from None
        if collection == "Sensors" and e["encodingType"] not in SENSOR_ENCODINGS:
            raise Invalid(f"Sensor encodingType {e['encodingType']!r} is none of {SENSOR_ENCODINGS}")
        if collection == "Datastreams":
            uom = e["unitOfMeasurement"]
            if set(uom) != {"name", "symbol", "definition"} or not all(isinstance(v, str) for v in uom.values()):
                raise Invalid("unitOfMeasurement must have name, symbol and definition (strings)")
            if e["observationType"] not in OBSERVATION_TYPES:
                raise Invalid(f"unknown observationType {e['observationType']!r}")

    def create_observations(self, body: Any) -> list[str]:
        if not isinstance(body, list):
            raise Invalid("CreateObservations takes a JSON array")
        out: list[str] = []
        for item in body:
            if not isinstance(item, dict) or not set(item) <= {"Datastream", "components", "dataArray",
                                                                "dataArray@iot.count"}:
                raise Invalid(f"not a dataArray object: {str(item)[:100]}")
            comps, rows = item.get("components"), item.get("dataArray")
            if not isinstance(comps, list) or not comps or not all(c in COMPONENTS for c in comps) \
                    or len(set(comps)) != len(comps):
                raise Invalid(f"bad components {comps!r}")
            if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == len(comps) for r in rows):
                raise Invalid("dataArray must be arrays as long as components")
            if "dataArray@iot.count" in item and item["dataArray@iot.count"] != len(rows):
                raise Invalid("dataArray@iot.count does not match dataArray")
            ds_ref = item.get("Datastream")
            if not isinstance(ds_ref, dict) or set(ds_ref) != {"@iot.id"}:
                raise Invalid("Datastream must be {\"@iot.id\": ...}")
            for row in rows:
                out.append(self._observation(ds_ref["@iot.id"], dict(zip(comps, row))))
        return out

    def _observation(self, ds_id: Any, values: dict[str, Any]) -> str:
        with self.state.lock:
            ds = self.state.entities["Datastreams"].get(ds_id)
            if ds is None:
                return f"error No such entity 'Datastream' with id {ds_id}"
            if values.get("result") is None:
                return "error Missing required property 'result'"
            result = values["result"]
            if ds["observationType"] == OM_MEASUREMENT and (isinstance(result, bool) or
                                                             not isinstance(result, (int, float))):
                return f"error result {result!r} is not a number (OM_Measurement)"
            try:
                start, end = parse_time(values["phenomenonTime"]) if "phenomenonTime" in values else (None, None)
            except ValueError:
                return "error phenomenonTime could not be parsed as time instant or time interval."
            try:
                result_time = None if values.get("resultTime") is None else parse_instant(values["resultTime"])
            except ValueError:
                return "error resultTime could not be parsed as time instant."
            if "parameters" in values and not isinstance(values["parameters"], dict):
                return "error parameters has to be a map."
            foi = values.get("FeatureOfInterest/id")
            if foi is None:
                thing = self.state.entities["Things"][ds["Thing"]]
                if not thing.get("Locations"):
                    return "error No FeatureOfInterest provided, and none can be generated."
                foi = self._feature_for(thing["Locations"][0])
            elif foi not in self.state.entities["FeaturesOfInterest"]:
                return f"error No such entity 'FeatureOfInterest' with id {foi}"
            iot_id = self._new_id()
            self.state.entities["Observations"][iot_id] = {
                "@iot.id": iot_id, "Datastream": ds_id, "FeatureOfInterest": foi, "result": result,
                "phenomenonTime": None if start is None else (iso(start) if start == end else f"{iso(start)}/{iso(end)}"),
                "resultTime": None if result_time is None else iso(result_time),
                "parameters": values.get("parameters"), "resultQuality": values.get("resultQuality"),
            }
            return self.link("Observations", iot_id)

    def _feature_for(self, location_id: int) -> int:
        """FROST makes a FeatureOfInterest from the Thing's Location once and reuses it."""
        fois = self.state.entities["FeaturesOfInterest"]
        for k, f in fois.items():
            if f.get("properties", {}).get("fromLocation") == location_id:
                return k
        loc = self.state.entities["Locations"][location_id]
        iot_id = self._new_id()
        fois[iot_id] = {"@iot.id": iot_id, "name": loc["name"], "description": loc["description"],
                        "encodingType": loc["encodingType"], "feature": loc["location"],
                        "properties": {"fromLocation": location_id}}
        return iot_id

    # -- reading -----------------------------------------------------------------------------------------

    def query(self, collection: str, items: list[dict[str, Any]], query: dict[str, str], base: str) -> dict[str, Any]:
        for k in query:
            if k not in ("$filter", "$select", "$top", "$skip", "$orderby"):
                raise Invalid(f"query option {k!r} is not supported")
        props = set(TYPES[collection]["required"]) | set(TYPES[collection]["optional"])
        if "$filter" in query:
            test = compile_filter(query["$filter"], props)
            items = [e for e in items if test(e)]
        items = sorted(items, key=lambda e: e["@iot.id"])
        if "$orderby" in query:
            m = re.fullmatch(r"(\w+)(?: (asc|desc))?", query["$orderby"])
            if not m or m.group(1) not in props | {"id"}:
                raise Invalid(f"$orderby {query['$orderby']!r}")
            name = "@iot.id" if m.group(1) == "id" else m.group(1)
            items = sorted(items, key=lambda e: (e.get(name) is None, e.get(name) or ""),
                           reverse=m.group(2) == "desc")
        skip = _count(query.get("$skip", "0"), "$skip")
        top = min(_count(query.get("$top", str(self.max_top)), "$top"), self.max_top)
        page = items[skip:skip + top]
        select = None
        if "$select" in query:
            select = [s.strip() for s in query["$select"].split(",")]
            for s in select:
                if s not in props | {"id", "@iot.id"}:
                    raise Invalid(f"$select: {collection} has no property {s!r}")
        out: dict[str, Any] = {"value": [self.render(collection, e, select) for e in page]}
        if skip + top < len(items):
            out["@iot.nextLink"] = f"{base}?{urlencode({**query, '$skip': str(skip + top)})}"
        return out

    def render(self, collection: str, e: dict[str, Any], select: list[str] | None = None) -> dict[str, Any]:
        spec = TYPES[collection]
        full = {"@iot.id": e["@iot.id"], "@iot.selfLink": self.link(collection, e["@iot.id"]),
                **{k: e.get(k) for k in {**spec["required"], **spec["optional"]} if k in e}}
        if select is None:
            return full
        return {("@iot.id" if s in ("id", "@iot.id") else s): full.get("@iot.id" if s in ("id", "@iot.id") else s)
                for s in select}


def _count(text: str, what: str) -> int:
    if not text.isdigit():
        raise Invalid(f"{what} must be a non-negative integer, got {text!r}")
    return int(text)


_CLAUSE = re.compile(
    r"\s*([A-Za-z@][\w@]*(?:/[\w@]+)*)\s+(eq|ne|gt|ge|lt|le)\s+"
    r"('(?:[^']|'')*'|\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)|-?\d+(?:\.\d+)?|null|true|false)\s*")


def compile_filter(text: str, props: set[str]) -> Callable[[dict[str, Any]], bool]:
    """A predicate for `text`: comparisons joined by `and` (400 for anything else)."""
    clauses = []
    pos = 0
    while True:
        m = _CLAUSE.match(text, pos)
        if not m:
            raise Invalid(f"$filter: cannot parse at {text[pos:pos + 40]!r}")
        path, op, lit = m.groups()
        if path.split("/")[0] not in props | {"id", "@iot.id"}:
            raise Invalid(f"$filter: unknown property {path!r}")
        clauses.append((path, op, lit))
        pos = m.end()
        if pos == len(text):
            break
        if not text.startswith("and ", pos):
            raise Invalid(f"$filter: expected 'and' at {text[pos:pos + 40]!r}")
        pos += 4

    def value_of(lit: str) -> Any:
        if lit.startswith("'"):
            return lit[1:-1].replace("''", "'")
        if "T" in lit:
            return parse_instant(lit)
        return {"null": None, "true": True, "false": False}.get(lit, None) if lit.isalpha() else float(lit)

    def get(e: dict[str, Any], path: str) -> Any:
        parts = path.split("/")
        v: Any = e.get("@iot.id" if parts[0] in ("id", "@iot.id") else parts[0])
        for p in parts[1:]:
            v = v.get(p) if isinstance(v, dict) else None
        return v

    ops = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "gt": lambda a, b: a > b,
           "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b}

    def test(e: dict[str, Any]) -> bool:
        for path, op, lit in clauses:
            want, have = value_of(lit), get(e, path)
            if isinstance(want, datetime):
                if have is None:
                    return False
                if "/" in str(have):
                    raise Invalid(f"$filter: {path} is an interval; compare an instant (this subset)")
                have = parse_instant(have)
            elif isinstance(want, float) and isinstance(have, (int, float)):
                have = float(have)
            try:
                if not ops[op](have, want):
                    return False
            except TypeError:
                return False
        return True

    return test


_PATH = re.compile(r"/(\w+)(?:\((\d+)\))?(?:/(\w+))?")


class Handler(http.server.BaseHTTPRequestHandler):
    server: SensorThingsServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the real servers
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall between

    def log_message(self, *a: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:  # the connection was cut (stop(), drop_answers)
            pass

    def _answer(self, status: int, doc: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if doc is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._answer(status, {"code": status, "type": "error", "message": message})

    def _route(self) -> tuple[str, dict[str, str], str | None, int | None, str | None] | None:
        parts = urlsplit(self.path)
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
        except ValueError:
            self._error(400, f"malformed query {parts.query!r}")
            return None
        if not parts.path.startswith(ROOT + "/"):
            self._error(404, f"not under {ROOT}")
            return None
        rest = parts.path[len(ROOT):]
        m = _PATH.fullmatch(rest)
        if m is None:
            self._error(404, f"no such path {rest!r}")
            return None
        coll, iot_id, nav = m.group(1), m.group(2), m.group(3)
        return rest, query, coll, int(iot_id) if iot_id else None, nav

    def _gate(self, body: Any) -> bool:
        """Record the request; answer for an outage or missing auth. True if it is to be served."""
        s = self.server
        with s.state.lock:
            s.state.requests.append((self.command, urlsplit(self.path).path[len(ROOT):],
                                     dict(parse_qsl(urlsplit(self.path).query)), body))
            outage = s.outage.pop(0) if s.outage else None
        if outage is not None:
            status, headers = outage
            self._answer(status, {"code": status, "type": "error", "message": "unavailable"}, headers)
            return False
        if s.auth is not None and self.headers.get("Authorization") != s.auth:
            self._answer(401, {"code": 401, "type": "error", "message": "Unauthorized"},
                         {"WWW-Authenticate": 'Basic realm="FROST-Server"'})
            return False
        return True

    def do_GET(self) -> None:
        if not self._gate(None):
            return
        route = self._route()
        if route is None:
            return
        rest, query, coll, iot_id, nav = route
        s = self.server
        if coll not in TYPES:
            return self._error(404, f"no entity set {coll}")
        try:
            with s.state.lock:
                if iot_id is not None and iot_id not in s.state.entities[coll]:
                    return self._error(404, f"No such entity '{coll}' with id {iot_id}")
                if iot_id is None:
                    if nav:
                        return self._error(404, "navigation needs an id")
                    items, target = list(s.state.entities[coll].values()), coll
                elif nav is None:
                    select = None
                    for k, v in query.items():
                        if k != "$select":
                            raise Invalid(f"query option {k!r} is not supported on one entity (this subset)")
                        select = [x.strip() for x in v.split(",")]
                        props = set(TYPES[coll]["required"]) | set(TYPES[coll]["optional"]) | {"id", "@iot.id"}
                        if not set(select) <= props:
                            raise Invalid(f"$select: {coll} has no property {sorted(set(select) - props)[0]!r}")
                    return self._answer(200, s.render(coll, s.state.entities[coll][iot_id], select))
                elif (coll, nav) in NAVIGATION:
                    back = NAVIGATION[(coll, nav)]
                    if (coll, nav) == ("Things", "Locations"):
                        ids = s.state.entities["Things"][iot_id].get("Locations", [])
                        items = [s.state.entities["Locations"][i] for i in ids]
                    else:
                        items = [e for e in s.state.entities[nav].values() if e.get(back) == iot_id]
                    target = nav
                else:
                    return self._error(404, f"no navigation {coll}/{nav}")
                doc = s.query(target, items, query, s.url + rest)
        except Invalid as e:
            return self._error(400, str(e))
        self._answer(200, doc)

    def _json_request(self, verb: str) -> tuple[str, str | None, int | None, str | None, Any] | None:
        """A POST's or PATCH's route and JSON body, or None once the error is answered."""
        length = self.headers.get("Content-Length")
        raw = self.rfile.read(int(length)) if length else b""
        try:
            body, bad_json = json.loads(raw), False
        except ValueError:
            body, bad_json = None, True
        if not self._gate(body if not bad_json else raw):
            return None
        route = self._route()
        if route is None:
            return None
        rest, query, coll, iot_id, nav = route
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._error(400, "Content-Type must be application/json")
        if bad_json:
            return self._error(400, "Could not parse json.")
        if query:
            return self._error(400, f"no query options on {verb} in this subset")
        return rest, coll, iot_id, nav, body

    def do_POST(self) -> None:
        req = self._json_request("POST")
        if req is None:
            return
        rest, coll, iot_id, nav, body = req
        s = self.server
        try:
            if coll == "CreateObservations" and iot_id is None and nav is None:
                with s.state.lock:
                    links = s.create_observations(body)
                    if s.drop_answers > 0:  # done, but the client never hears of it
                        s.drop_answers -= 1
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                return self._answer(201, links)
            if coll not in TYPES:
                return self._error(404, f"no entity set {coll}")
            with s.state.lock:
                if iot_id is None and nav is None:
                    new = s.create(coll, body)
                    target = coll
                elif (coll, nav) == ("Things", "Locations") and iot_id in s.state.entities["Things"]:
                    new = s.create("Locations", body)
                    s.state.entities["Things"][iot_id]["Locations"] = [new]  # one real-world place at a time
                    s.historical(iot_id, [new])
                    target = "Locations"
                else:
                    return self._error(404 if iot_id is not None else 400, f"cannot POST to {rest}")
                doc = s.render(target, s.state.entities[target][new])
        except Invalid as e:
            return self._error(400, str(e))
        self._answer(201, doc, {"Location": s.link(target, new)})

    def do_PATCH(self) -> None:
        req = self._json_request("PATCH")
        if req is None:
            return
        rest, coll, iot_id, nav, body = req
        s = self.server
        if coll not in TYPES or iot_id is None or nav is not None:
            return self._error(400 if coll in TYPES else 404, f"cannot PATCH {rest}: one entity only")
        try:
            with s.state.lock:
                if iot_id not in s.state.entities[coll]:
                    return self._error(404, f"No such entity '{coll}' with id {iot_id}")
                s.update(coll, iot_id, body)
        except Invalid as e:
            return self._error(400, str(e))
        self._answer(200)
