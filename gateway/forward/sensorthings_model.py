"""How meetkit's nodes, sensors, quantities and readings are written as OGC SensorThings API v1.1
entities (OGC 18-088, https://docs.ogc.org/is/18-088/18-088.html, clause 8: the entities and their
mandatory properties). Pure functions: no I/O here.

- Thing: one per node, `name` = node id, `properties` {source, node, board, fw} plus what the
  fleet register says of the node for data users: name, installed, serials, noise_offset_db,
  calibrated (dates as ISO 8601 strings; the register's notes, chip and provisioning time stay
  home). board and fw are the register's when it has them, else the node's as first seen. With a
  Location (deep insert, GeoJSON Point in lon, lat order, `encodingType` application/geo+json)
  when the register knows where the node is. `height_m` is the mounting height above ground, so it
  goes to the Location's `properties`, not to a third coordinate (which GeoJSON reserves for
  altitude). An Observation created without a FeatureOfInterest gets one
  made from its Thing's Location (v1.1 behaviour, opengeospatial/sensorthings issue 185); without
  a Location FROST answers "No FeatureOfInterest provided, and none can be generated". So the
  readings of a node without a position cannot be sent (sensorthings.py says what happens).
- Sensor: one per sensor model (PMS5003, PMS7003, SDS011, BME280, ICS-43434, INMP441), shared by
  the nodes, `encodingType` text/html with the maker's product page as `metadata`.
- ObservedProperty: one per quantity. Definitions from vocabularies data users already use: EEA's
  air-quality pollutant codes for PM (the codes European reference stations report under), the
  CF standard names (NERC P07) for air temperature, relative humidity and air pressure, and QUDT
  quantity kinds for the noise levels (SoundPressureLevel: the weighting and statistic are in the
  name and description) and the coverage ratio (DimensionlessRatio).
- Datastream: one per (node, quantity, sensor model): a Datastream groups the Observations of
  one Sensor and one ObservedProperty (18-088 clause 8.2.4), so a node whose PM sensor is
  replaced by another model gets a new one. `unitOfMeasurement` {name, symbol, definition} from
  the payload's units with QUDT unit URIs; `observationType` OM_Measurement (a number).
- Observation (dataArray row): components phenomenonTime, result, resultTime, parameters:
  phenomenonTime = the interval `start/end` (ISO 8601, UTC), result = the interval's `avg` (for
  LAeq the energy mean; for LA10.., LZeq, cov the one number), resultTime = the interval's end
  (when the node had the result: deterministic, so the same reading is the same Observation), and
  parameters = {min, max, n} when the node sent a summary plus {flags: [...]} when it flagged the
  reading, and in a region {boot, seq} of its record (the Datastream names the node). The flags go to `parameters`, not `resultQuality`: that one is an ISO 19157
  DQ_Element, which a list of codes is not. A reading with no value (the node had no valid sample,
  its flags say why) is not an OM_Measurement and is not sent; the store keeps it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..payload import QUANTITIES
from ..plausible import finite
from ..timefmt import iso
from .core import Row

SOURCE = "meetkit"  # properties.source of every entity this gateway makes: how it finds them again
OM_MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
GEOJSON = "application/geo+json"  # 18-088 v1.1 (v1.0 said application/vnd.geo+json)
COMPONENTS = ("phenomenonTime", "result", "resultTime", "parameters")


@dataclass(frozen=True)
class Property:
    name: str
    definition: str


_EEA = "http://dd.eionet.europa.eu/vocabulary/aq/pollutant/"
_CF = "http://vocab.nerc.ac.uk/collection/P07/current/"
_SPL = "http://qudt.org/vocab/quantitykind/SoundPressureLevel"

PROPERTIES: dict[str, Property] = {  # role and description: payload.QUANTITIES
    "pm1": Property("PM1", _EEA + "6002"),
    "pm25": Property("PM2.5", _EEA + "6001"),
    "pm10": Property("PM10", _EEA + "5"),
    "temp": Property("Air temperature", _CF + "CFSN0023/"),  # CF standard name air_temperature
    "rh": Property("Relative humidity", _CF + "CFSN0413/"),  # CF relative_humidity
    "press": Property("Air pressure", _CF + "CFSN0015/"),  # CF air_pressure
    "LAeq": Property("LAeq", _SPL),
    "LA10": Property("LA10", _SPL),
    "LA50": Property("LA50", _SPL),
    "LA90": Property("LA90", _SPL),
    "LZeq": Property("LZeq", _SPL),
    "cov": Property("Audio coverage", "http://qudt.org/vocab/quantitykind/DimensionlessRatio"),
}

#: The payload's units (docs/payload.md) as SensorThings unitOfMeasurement.
UNITS: dict[str, dict[str, str]] = {
    "ug/m3": {"name": "microgram per cubic metre", "symbol": "µg/m³",
              "definition": "http://qudt.org/vocab/unit/MicroGM-PER-M3"},
    "degC": {"name": "degree Celsius", "symbol": "°C", "definition": "http://qudt.org/vocab/unit/DEG_C"},
    "%": {"name": "percent", "symbol": "%", "definition": "http://qudt.org/vocab/unit/PERCENT"},
    "hPa": {"name": "hectopascal", "symbol": "hPa", "definition": "http://qudt.org/vocab/unit/HectoPA"},
    "dB": {"name": "decibel", "symbol": "dB", "definition": "http://qudt.org/vocab/unit/DeciB"},
    "1": {"name": "unitless", "symbol": "1", "definition": "http://qudt.org/vocab/unit/UNITLESS"},
}


@dataclass(frozen=True)
class SensorModel:
    name: str
    description: str
    url: str  # the maker's product page


SENSORS: dict[str, SensorModel] = {
    "pms5003": SensorModel("PMS5003", "Plantower PMS5003 laser particle counter (atmospheric environment values)",
                           "http://www.plantower.com/en/content/?108.html"),
    "pms7003": SensorModel("PMS7003", "Plantower PMS7003 laser particle counter (atmospheric environment values)",
                           "http://www.plantower.com/en/content/?110.html"),
    "sds011": SensorModel("SDS011", "Nova Fitness SDS011 laser particle sensor (PM2.5, PM10)",
                          "http://www.inovafitness.com/en/a/chanpinzhongxin/95.html"),
    "bme280": SensorModel("BME280", "Bosch BME280 temperature, humidity and pressure sensor",
                          "https://www.bosch-sensortec.com/products/environmental-sensors/humidity-sensors-bme280/"),
    "ics43434": SensorModel("ICS-43434", "TDK InvenSense ICS-43434 I2S MEMS microphone, levels computed on the node",
                            "https://invensense.tdk.com/products/ics-43434/"),
    "inmp441": SensorModel("INMP441", "TDK InvenSense INMP441 I2S MEMS microphone, levels computed on the node",
                           "https://invensense.tdk.com/products/digital/inmp441/"),
}


class Unmapped(Exception):
    """A reading this gateway cannot describe as SensorThings entities (its reason says why)."""


def sensor_model(row: Row) -> str:
    """The model (key of SENSORS) that measured `row`, from its record's `sensors`."""
    prop = PROPERTIES.get(row.quantity)
    if prop is None:
        raise Unmapped(f"quantity {row.quantity!r} has no ObservedProperty in this gateway")
    try:
        sensors = json.loads(row.sensors)
    except ValueError:
        sensors = {}
    model = sensors.get(QUANTITIES[row.quantity].role) if isinstance(sensors, dict) else None
    if not isinstance(model, str):
        raise Unmapped(f"the record names no {QUANTITIES[row.quantity].role!r} sensor (sensors {row.sensors})")
    if model.lower() not in SENSORS:
        raise Unmapped(f"sensor model {model!r} is unknown to this gateway (known: {', '.join(SENSORS)})")
    return model.lower()


def location(node: str, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The node's Location from its fleet metadata; None when its position is not known."""
    if not meta or "lat" not in meta:
        return None
    props: dict[str, Any] = {"source": SOURCE, "node": node}
    if "height_m" in meta:
        props["height_m"] = meta["height_m"]
    return {
        "name": meta.get("name", node),
        "description": f"Where meetkit node {node} is mounted",
        "encodingType": GEOJSON,
        "location": {"type": "Point", "coordinates": [meta["lon"], meta["lat"]]},  # GeoJSON: lon first
        "properties": props,
    }


def place(loc: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """Where a Location (ours, or as the service renders it) puts the node: coordinates and
    mounting height. A change of place is a new Location (the old one stays, in the Thing's
    HistoricalLocations); a change of name alone is not."""
    if not isinstance(loc, dict) or not isinstance(loc.get("location"), dict):
        return None
    props = loc.get("properties") if isinstance(loc.get("properties"), dict) else {}
    coords = loc["location"].get("coordinates")
    return (tuple(coords) if isinstance(coords, list) else coords, props.get("height_m"))


#: the register's keys a Thing's properties carry (fleet.py): for data users, who ask which
#: sensors and calibration a reading comes from
THING_KEYS = ("name", "installed", "serials", "noise_offset_db", "calibrated")


def thing_update(node: str, board: str, fw: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The Thing's description and properties for the register's `meta`; `board` and `fw` where
    the register has none (the node's, as first seen)."""
    meta = meta or {}
    props: dict[str, Any] = {"source": SOURCE, "node": node, "board": meta.get("board", board),
                             "fw": meta.get("fw", fw)}
    for k in THING_KEYS:
        if k in meta:
            v = meta[k]
            props[k] = v.isoformat() if hasattr(v, "isoformat") else v
    return {"description": f"meetkit street sensor node {node}" + (f" at {meta['name']}" if "name" in meta else ""),
            "properties": props}


def thing(node: str, board: str, fw: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The node's Thing, with its Location inline (deep insert) when its position is known."""
    body: dict[str, Any] = {"name": node, **thing_update(node, board, fw, meta)}
    if (loc := location(node, meta)) is not None:
        body["Locations"] = [loc]
    return body


def sensor(model: str) -> dict[str, Any]:
    m = SENSORS[model]
    return {"name": m.name, "description": m.description, "encodingType": "text/html", "metadata": m.url,
            "properties": {"source": SOURCE, "model": model}}


def observed_property(quantity: str) -> dict[str, Any]:
    p = PROPERTIES[quantity]
    return {"name": p.name, "definition": p.definition, "description": QUANTITIES[quantity].description,
            "properties": {"source": SOURCE, "quantity": quantity}}


def datastream_name(node: str, quantity: str, model: str) -> str:
    return f"{node} {quantity} {SENSORS[model].name}"


def datastream(node: str, quantity: str, model: str, unit: str, ids: dict[str, Any]) -> dict[str, Any]:
    """`ids`: the "@iot.id" of the Thing, Sensor and ObservedProperty."""
    if unit not in UNITS:
        raise Unmapped(f"unit {unit!r} has no unitOfMeasurement in this gateway")
    p = PROPERTIES[quantity]
    return {
        "name": datastream_name(node, quantity, model),
        "description": f"{p.name} at meetkit node {node}, measured by a {SENSORS[model].name}: the mean of each "
                       "interval as result, its min, max and sample count in parameters",
        "unitOfMeasurement": dict(UNITS[unit]),
        "observationType": OM_MEASUREMENT,
        "properties": {"source": SOURCE, "node": node, "quantity": quantity, "sensor": model},
        "Thing": {"@iot.id": ids["Thing"]},
        "Sensor": {"@iot.id": ids["Sensor"]},
        "ObservedProperty": {"@iot.id": ids["ObservedProperty"]},
    }


def parse_time(text: str) -> int:
    """Unix seconds of an ISO 8601 instant as a server writes it (`2026-11-24T08:00:00.000Z`)."""
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return round(t.timestamp())


def interval(text: str) -> tuple[int, int] | None:
    """(start, end) of an ISO 8601 interval `start/end`; None for an instant or something else."""
    if not isinstance(text, str) or "/" not in text:
        return None
    try:
        a, b = text.split("/", 1)
        return parse_time(a), parse_time(b)
    except ValueError:
        return None


def end(row: Row) -> int:
    return row.start + row.dur


def observation(row: Row, record: bool = False) -> list[Any]:
    """The dataArray row for `row`, in COMPONENTS' order (the reading must have a value);
    `record`: parameters also carry the record's `boot` and `seq` (a region: they are what the
    Observation is looked up by before it is created, sensorthings.py)."""
    assert row.avg is not None
    params: dict[str, Any] = {"boot": row.boot, "seq": row.seq} if record else {}
    if row.n is not None:  # an infinity an older store may hold: null, JSON has no way to write it
        params.update({"min": finite(row.min), "max": finite(row.max), "n": row.n})
    if row.flags:
        params["flags"] = row.flags.split(",")
    return [f"{iso(row.start)}/{iso(end(row))}", row.avg, iso(end(row)), params]
