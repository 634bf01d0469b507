"""Open-data export: the stored readings as CSV or JSON Lines, one row per reading.

Columns (both formats): node, start and end of the interval (ISO 8601 UTC), quantity, avg, min,
max, n, unit, flags, sensor (the sensor type of the quantity's role: pms5003, bme280, ...), board,
fw. CSV is RFC 4180 with one header row (flags comma-separated inside the field); next to a CSV
file goes `<file>-metadata.json`, its W3C CSV on the Web (CSVW) description: the columns, the
quantities with their units, the period, the correction if one was applied. JSON Lines is one
object per line, flags as a list, null for no value: it streams, and BigQuery, DuckDB, pandas and
jq read it as it is.

Streaming: one read transaction (a consistent snapshot beside the running gateway, WAL), a query
per node walking the (node, start) index, rows written as the cursor yields them; memory does not
grow with the number of rows. Records without a known start are left out and counted.

Records an older gateway stored with an implausible interval or counters (plausible.py: a start
before 2026 or more than a day past the time of the export, a length outside 1..3900 s, a boot or
seq above 2**30-1) are left out too: such a start is no time a data user can put on a reading, and
some are no date at all. Those received in the selected period are counted, on stderr and in the
CSVW metadata. A value no JSON can hold (a REAL infinity an older store may have) is written as no
value (empty in CSV, null in JSON).

With a `Correction` (pm_humidity.py), each PM reading is followed by its humidity-corrected twin
(`pm25_corr`, flagged `corrected`), computed with the RH of the same record.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Iterator

from . import plausible, pm_humidity
from .payload import QUANTITIES
from .store import Reading, Store
from .timefmt import iso

FORMATS = ("csv", "json")
COLUMNS = ("node", "start", "end", "quantity", "avg", "min", "max", "n", "unit", "flags", "sensor", "board", "fw")

class ExportError(Exception):
    """A selection that cannot be exported (an unknown node, say); the message says why."""


@dataclass(frozen=True)
class Correction:
    kappa: float = pm_humidity.KAPPA


@dataclass(frozen=True)
class Selection:
    since: float | None = None  # interval starts at or after (None: from the first)
    until: float | None = None  # interval starts before (None: to the last)
    nodes: tuple[str, ...] = ()  # () all
    quantities: tuple[str, ...] = ()  # () all; may name corrected ones (pm25_corr)
    correction: Correction | None = None

    def wants(self, quantity: str) -> bool:
        return not self.quantities or quantity in self.quantities

    def stored_quantities(self) -> tuple[str, ...]:
        """What to read from the store: the raw quantities asked for, the PM a corrected one
        comes from, and RH for the correction."""
        if not self.quantities:
            return ()
        raw = {q for q in self.quantities if q in QUANTITIES}
        if self.correction is not None:
            raw |= {pm for pm, corr in pm_humidity.CORRECTED.items() if corr in self.quantities}
            if raw & set(pm_humidity.CORRECTED):
                raw.add("rh")
        return tuple(sorted(raw))


@dataclass
class Summary:
    """What an export wrote."""

    readings: int = 0
    records: int = 0
    untimed: int = 0  # records in the period's reception window left out: no known start yet
    implausible: int = 0  # records in that window left out: an implausible interval or counters
    first: int | None = None  # earliest interval start written
    last: int | None = None
    nodes: set[str] = field(default_factory=set)
    units: dict[str, str] = field(default_factory=dict)  # quantity -> unit, as written


_FAR = float("inf")  # an open end of the period: past any start or reception time a store may hold


def rows(store: Store, sel: Selection, summary: Summary, now: float | None = None) -> Iterator[Reading]:
    """The selected readings (and corrected twins), by node, then interval start, a record's in
    the contract's order; `summary` is filled in as they go. Call inside `store.snapshot()` for one
    consistent snapshot. `now` (default: the clock) is what a plausible interval start may not be
    more than a day past."""
    now = time.time() if now is None else now
    nodes = _nodes(store, sel)
    lo, hi = (sel.since if sel.since is not None else -_FAR), (sel.until if sel.until is not None else _FAR)
    summary.untimed = store.untimed_received(nodes, lo, hi)
    summary.implausible = store.implausible(nodes, sel.since, sel.until, now)
    stored = sel.stored_quantities()
    for node in nodes:
        record: list[Reading] = []
        for r in store.export_readings(node, lo, hi, stored):
            if record and r.record_id != record[0].record_id:
                yield from _record_rows(record, sel, summary, now)
                record = []
            record.append(r)
        if record:
            yield from _record_rows(record, sel, summary, now)


def _nodes(store: Store, sel: Selection) -> list[str]:
    """The nodes to export, by id; ExportError for one the store has never heard of."""
    known = store.node_ids()
    missing = [n for n in sel.nodes if n not in known]
    if missing:
        raise ExportError(f"no node {', '.join(map(repr, missing))} in {store.path}; known: "
                          f"{', '.join(known) or 'none yet'}")
    return sorted(set(sel.nodes)) if sel.nodes else known


@lru_cache(maxsize=64)
def _sensors(text: str) -> dict[str, str]:
    return json.loads(text)


_ORDER = {q: i for i, q in enumerate(QUANTITIES)}
#: the sensor role of each quantity written, corrected ones included (pm25_corr: pm25's)
_ROLE = {q.key: q.role for q in QUANTITIES.values()} | {
    corr: QUANTITIES[pm].role for pm, corr in pm_humidity.CORRECTED.items()}
_INF, _NINF = math.inf, -math.inf


def _order(quantity: str) -> int:
    return _ORDER.get(quantity, len(_ORDER))


def _key(r: Reading) -> int:
    return _ORDER.get(r.quantity, len(_ORDER))


def _record_rows(record: list[Reading], sel: Selection, summary: Summary, now: float) -> Iterator[Reading]:
    first = record[0]
    start = first.start
    if not plausible.record(start, first.dur, first.boot, first.seq, now):
        return  # counted in summary.implausible (by reception time, as untimed)
    record.sort(key=_key)
    rh = next((plausible.finite(r.avg) for r in record if r.quantity == "rh"), None)
    wrote = False
    for r in record:
        values = r[7:10]  # avg, min, max
        if _INF in values or _NINF in values:  # an older store's infinity: no value (no NaN: SQLite has none)
            r = r._replace(avg=plausible.finite(r.avg), min=plausible.finite(r.min), max=plausible.finite(r.max))
        if sel.wants(r.quantity):
            yield r
            _count(summary, r.quantity, r.unit)
            wrote = True
        corr = pm_humidity.CORRECTED.get(r.quantity)
        if sel.correction is not None and corr is not None and sel.wants(corr):
            yield _corrected(r, corr, rh, sel.correction)
            _count(summary, corr, r.unit)
            wrote = True
    if wrote:
        summary.records += 1
        summary.nodes.add(first.node)
        summary.first = start if summary.first is None else min(summary.first, start)
        summary.last = start if summary.last is None else max(summary.last, start)


def _corrected(r: Reading, quantity: str, rh: float | None, c: Correction) -> Reading:
    """The humidity-corrected twin of PM reading `r`, as `quantity` (pm25_corr, ...)."""
    out: list[float | None] = []
    why: str | None = None
    for v in (r.avg, r.min, r.max):
        # one factor for avg, min and max: the record has the interval's mean RH only
        dry, why = pm_humidity.correct(v, rh, c.kappa)
        out.append(None if dry is None else round(dry, 2))
    flags = ",".join(f for f in (r.flags, pm_humidity.FLAG, why) if f)
    return r._replace(quantity=quantity, avg=out[0], min=out[1], max=out[2], n=r.n if out[0] is not None else None,
                      flags=flags)


class _Texts:
    """The ISO start and end, and the sensor models, of the record being written: made once per
    record (formatting the times is most of the time per row), as readings come by record."""

    def __init__(self) -> None:
        self.record_id: int | None = None
        self.start = self.end = ""
        self.sensors: dict[str, str] = {}

    def of(self, r: Reading) -> tuple[str, str, str]:
        if r.record_id != self.record_id:
            self.record_id, self.start, self.end = r.record_id, iso(r.start), iso(r.start + r.dur)
            self.sensors = _sensors(r.sensors)
        role = _ROLE.get(r.quantity)
        return self.start, self.end, self.sensors.get(role, "") if role else ""


def _count(summary: Summary, quantity: str, unit: str) -> None:
    summary.readings += 1
    summary.units.setdefault(quantity, unit)


# -- formats ------------------------------------------------------------------------------------------


def _number(v: float | int | None) -> str:
    return "" if v is None else repr(v)


def write_csv(rows: Iterator[Reading], out: IO[str]) -> None:
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COLUMNS)
    texts = _Texts()
    for r in rows:
        start, end, sensor = texts.of(r)
        w.writerow((r.node, start, end, r.quantity, _number(r.avg), _number(r.min),
                    _number(r.max), _number(r.n), r.unit, r.flags, sensor, r.board, r.fw))


def write_jsonl(rows: Iterator[Reading], out: IO[str]) -> None:
    texts = _Texts()
    for r in rows:
        start, end, sensor = texts.of(r)
        doc = {"node": r.node, "start": start, "end": end, "quantity": r.quantity, "avg": r.avg,
               "min": r.min, "max": r.max, "n": r.n, "unit": r.unit, "flags": list(r.flag_names),
               "sensor": sensor, "board": r.board, "fw": r.fw}
        out.write(json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n")


WRITERS = {"csv": write_csv, "json": write_jsonl}


def metadata(csv_name: str, sel: Selection, summary: Summary, db_id: str) -> dict[str, Any]:
    """The CSVW description of an exported CSV file (W3C "Metadata Vocabulary for Tabular Data")."""
    described = {
        "node": ("string", "the node's id"),
        "start": ("dateTime", "start of the measuring interval, UTC"),
        "end": ("dateTime", "end of the measuring interval, UTC"),
        "quantity": ("string", "what was measured; its unit is in `unit` (see schema:variableMeasured)"),
        "avg": ("double", "mean of the interval's samples (LAeq: energy mean); empty: no valid sample"),
        "min": ("double", "lowest sample; empty for a quantity sent as one number"),
        "max": ("double", "highest sample; empty for a quantity sent as one number"),
        "n": ("integer", "samples in the interval (LAeq: seconds of audio)"),
        "unit": ("string", "unit of avg, min and max"),
        "flags": ("string", "quality flags, comma-separated (docs/payload.md); 'corrected' marks a "
                            "humidity-corrected value"),
        "sensor": ("string", "sensor type that measured the quantity"),
        "board": ("string", "the node's board"),
        "fw": ("string", "the node's firmware version"),
    }
    columns = [{"name": c, "titles": c, "datatype": t, "dc:description": d,
                **({"null": ""} if t in ("double", "integer") else {})}
               for c, (t, d) in described.items()]
    variables = []
    for q, unit in sorted(summary.units.items(), key=lambda kv: _order(kv[0].removesuffix("_corr"))):
        raw = q.removesuffix("_corr")
        text = QUANTITIES[raw].description if raw in QUANTITIES else q
        if q != raw:
            text += ", corrected for humidity (kappa-Koehler)"
        variables.append({"@type": "schema:PropertyValue", "schema:name": q, "schema:unitText": unit,
                          "schema:description": text})
    description = ("Readings of meetkit street sensor nodes: one row per quantity per measuring interval, "
                   "as the nodes sent them.")
    if sel.correction is not None:
        description += (
            f" PM humidity correction (pm*_corr rows, next to the raw values): PM_dry = PM / (1 + "
            f"(kappa/{pm_humidity.DENSITY_RATIO}) / (-1 + 100/RH)), kappa = {sel.correction.kappa:g}, RH of the "
            f"same record from the node's BME280 (in the housing: it can read lower than ambient); not "
            f"corrected above RH {pm_humidity.RH_MAX:g} % (flag rh_too_high) or without RH, or with one "
            "below 0 % (flag no_rh). "
            "Crilley et al. 2018, AMT 11, 709-720, doi:10.5194/amt-11-709-2018."
        )
    description += left_out(summary)
    period = f"{iso(summary.first) if summary.first is not None else '..'}/" \
             f"{iso(summary.last) if summary.last is not None else '..'}"
    return {
        "@context": "http://www.w3.org/ns/csvw",
        "url": csv_name,
        "dc:title": "meetkit sensor readings",
        "dc:description": description,
        "dc:created": iso(time.time()),
        "dc:source": f"meetkit gateway store {db_id}",
        "schema:temporalCoverage": period,
        "schema:variableMeasured": variables,
        "dialect": {"header": True, "delimiter": ",", "encoding": "utf-8"},
        "tableSchema": {"columns": columns},
    }


def left_out(summary: Summary) -> str:
    """The sentence of the metadata that counts the records left out ('' when none were)."""
    parts = []
    if summary.implausible:
        parts.append(f"{summary.implausible} record{'s' if summary.implausible != 1 else ''} with an implausible "
                     "interval start, length or counters, stored by an older gateway (docs/payload.md, "
                     "plausible values)")
    if summary.untimed:
        parts.append(f"{summary.untimed} record{'s' if summary.untimed != 1 else ''} without a known start "
                     "(the node had no clock yet)")
    return f" Left out, of the records received in the period: {'; '.join(parts)}." if parts else ""


# -- output -------------------------------------------------------------------------------------------


def export(store: Store, sel: Selection, fmt: str, output: Path | None, stdout: IO[str],
           now: float | None = None) -> Summary:
    """Write the selection to `output` (atomically: the file appears whole or not at all; a CSV
    gets its `-metadata.json`) or to `stdout`. One read transaction for the whole export. `now`
    (default: the clock) is what a plausible interval start may not be more than a day past."""
    now = time.time() if now is None else now
    summary = Summary()
    write = WRITERS[fmt]
    with store.snapshot():
        _nodes(store, sel)  # before a byte is written
        if output is None:
            write(rows(store, sel, summary, now), stdout)
            stdout.flush()
        else:
            with _atomic(output) as f:
                write(rows(store, sel, summary, now), f)
            if fmt == "csv":
                doc = metadata(output.name, sel, summary, store.db_id)
                with _atomic(metadata_path(output)) as f:
                    json.dump(doc, f, indent=2)
                    f.write("\n")
    return summary


def metadata_path(output: Path) -> Path:
    """Where CSVW looks for a CSV file's description: `<file>-metadata.json`."""
    return output.with_name(output.name + "-metadata.json")


class _atomic:
    """A text file written beside `path` and renamed over it when complete; removed on failure."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> IO[str]:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        return self.file

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if exc_type is None:
                os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
                os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
