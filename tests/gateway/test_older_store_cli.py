"""The read-only commands (`export`, `readings`, `nodes`, `check`) on a store an older gateway wrote
with implausible times and counters (tests/gateway/older_store.py): each runs to the end, every
ordinary record comes out as from a store without them, and what cannot be shown is left out and
counted (export) or shown as the raw number stored (the tables)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from .conftest import StorePair, cli
from .older_store import IMPLAUSIBLE


def export(pair: StorePair, name: str, *args: str):
    return cli("export", "--config", str(pair.config(name)), *args)


def run_both(pair: StorePair, *args: str) -> tuple[str, str]:
    """stdout of `export args` on the older store and on the clean one; both must succeed."""
    out = []
    for name in ("older", "clean"):
        r = export(pair, name, *args)
        assert r.returncode == 0, f"{name}: {r.stderr}"
        out.append(r.stdout)
    return out[0], out[1]


def test_the_audit_a_record_in_the_year_318857_no_longer_fails_the_fleets_export(older):
    r = export(older, "older")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {x["node"] for x in rows} == {"ams-001", "ams-002", "ams-004"}  # ams-003 has only implausible records
    assert len(rows) == 15 + 6 + 3  # every reading of every ordinary record
    assert all(x["start"].startswith("2026-11-24T") and x["end"].startswith("2026-11-24T") for x in rows)
    assert r.stderr.splitlines() == [
        "exported 24 readings of 6 records (3 nodes, interval starts 2026-11-24T08:59:00Z to "
        "2026-11-24T09:02:00Z) to stdout",
        "left out 1 record received in that period without a known time yet (their node had no clock)",
        f"left out {IMPLAUSIBLE} records received in that period with an implausible interval start, length or "
        "counters, stored by an older gateway (docs/operator.md)",
    ]
    r = export(older, "older", "--node", "ams-003", "--format", "json")  # a node with nothing plausible
    assert (r.returncode, r.stdout) == (0, "")
    assert r.stderr.splitlines()[0] == "exported 0 readings of 0 records (0 nodes, no data) to stdout"
    assert r.stderr.splitlines()[2].startswith("left out 4 records received in that period with an implausible")


@pytest.mark.parametrize("args", [
    (),
    ("--format", "json"),
    ("--pm-correction",),
    ("--format", "json", "--pm-correction", "--kappa", "0.5"),
    ("--since", "2026-11-24T09:00Z", "--until", "2026-11-24T09:02Z"),
    ("--node", "ams-002", "--node", "ams-004", "--quantity", "pm25"),
    ("--since", "1969-12-31T23:00Z", "--until", "1970-01-02T00:00Z"),  # where starts of 0 and -3600 would be
    ("--since", "2099-12-31T00:00Z"),  # where 2100, the year 318857 and 2**62 s would be
])
def test_every_ordinary_reading_comes_out_as_from_a_store_without_the_implausible_ones(older, args):
    got, want = run_both(older, *args)
    assert got == want


def test_a_csv_file_and_its_metadata_count_what_was_left_out(older):
    for name in ("older", "clean"):
        r = export(older, name, "--output", str(older.dirs[name] / "out.csv"), "--pm-correction")
        assert r.returncode == 0, r.stderr
    got, want = ((older.dirs[n] / "out.csv").read_bytes().decode() for n in ("older", "clean"))
    assert got == want and got.count("\r\n") == 1 + 24 + 9  # header, readings, pm*_corr
    meta = json.loads((older.dirs["older"] / "out.csv-metadata.json").read_text())
    clean = json.loads((older.dirs["clean"] / "out.csv-metadata.json").read_text())
    assert meta["schema:temporalCoverage"] == clean["schema:temporalCoverage"] == (
        "2026-11-24T08:59:00Z/2026-11-24T09:02:00Z")
    assert meta["dc:description"].endswith(
        f" Left out, of the records received in the period: {IMPLAUSIBLE} records with an implausible interval "
        "start, length or counters, stored by an older gateway (docs/payload.md, plausible values); 1 record "
        "without a known start (the node had no clock yet).")
    assert "Left out" not in clean["dc:description"]
    assert not [p.name for p in older.dirs["older"].iterdir() if p.name.endswith(".tmp")]  # none left behind


def test_values_no_json_can_hold_are_empty_and_huge_or_negative_ones_written_as_they_are(older):
    r = export(older, "older", "--node", "ams-004", "--format", "json", "--pm-correction")
    assert r.returncode == 0, r.stderr
    docs = {d["quantity"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert [docs["pm25"][k] for k in ("avg", "min", "max", "n")] == [1e308, -1e308, 5e-324, 2**63 - 1]
    assert [docs["temp"][k] for k in ("avg", "min", "max", "n")] == [None, None, None, 12]  # infinities
    assert docs["rh"]["avg"] == -5.0
    # an RH below 0 % is no RH: the corrected PM is empty and says why
    assert (docs["pm25_corr"]["avg"], docs["pm25_corr"]["flags"]) == (None, ["corrected", "no_rh"])
    r = export(older, "older", "--node", "ams-004", "--quantity", "temp")
    assert r.stdout.splitlines()[1] == "ams-004,2026-11-24T09:00:00Z,2026-11-24T09:01:00Z,temp,,,,12,degC,,bme280," \
                                       "esp32-devkitc,0.1.0"


# -- the tables --------------------------------------------------------------------------------------


def readings(pair: StorePair, name: str, *args: str):
    return cli("readings", "--config", str(pair.config(name)), *args)


def test_readings_shows_ordinary_lines_as_before_and_implausible_starts_as_the_raw_number(older):
    since = ("--since", "0001-01-01T00:00Z")  # everything stored
    r, clean = readings(older, "older", *since), readings(older, "clean", *since)
    assert r.returncode == 0 and clean.returncode == 0, r.stderr + clean.stderr
    lines = r.stdout.splitlines()
    table = [line.split() for line in lines[2:] if not line.startswith("(")]
    starts = [cells[1] for cells in table]
    for raw in ("-3600", "0", "4102444800", "10000000000000", "4611686018427387904", "9223372036854775807",
                "9.223372036854776e+18", "9.223382036854776e+18"):
        assert raw in starts, raw
    # the clean store's lines, in their order, then only the implausible records' (column widths aside:
    # the raw numbers are wider): each of the 13 with its pm25 and temp
    clean_table = [line.split() for line in clean.stdout.splitlines()[2:]]
    extra = list(table)
    for c in clean_table:
        assert c in extra, c
        del extra[extra.index(c)]
    assert len(extra) == 2 * IMPLAUSIBLE
    assert all(c[2:] in (["pm25", "7.5", "6.5", "8.5", "58", "ug/m3"], ["temp", "11", "10.5", "11.5", "12", "degC"])
               for c in extra)
    kept = [c for c in table if c not in extra]
    assert kept == clean_table
    assert lines[-2:] == [
        "(1 record received since then has no known time yet and is not shown)",
        "(10 records with an interval start outside the plausible times, stored by an older gateway: shown as "
        "the raw number stored, Unix seconds)"]


def test_readings_of_the_last_hour_the_audits_errno_75(older):
    r = readings(older, "older")  # --since 1h: starts in the future are "since", 2**62 among them
    assert r.returncode == 0, r.stderr
    starts = sorted({line.split()[1] for line in r.stdout.splitlines()[2:] if not line.startswith("(")})
    assert starts == sorted(["4102444800", "10000000000000", "4611686018427387904", "9223372036854775807",
                             "9.223372036854776e+18", "9.223382036854776e+18"])


def test_nodes_and_check_show_counters_whole_and_odd_times_raw(older):
    r = cli("nodes", "--config", str(older.config("older")))
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    assert rows["ams-003"] == ["ams-003", "yes", "9223372036854775807", "-", "-9223372036854775808", "1e+308",
                               "9223372036854775807"]
    assert rows["ams-002"][5] == "inf"  # last seen
    assert rows["ams-001"][5].endswith("Z")
    r = cli("check", "--config", str(older.config("older")))
    assert r.returncode == 0, r.stderr
    assert "  ALARM       10000000000000.0 disk_full: test" in r.stdout.splitlines()
    assert "records dropped by the nodes' full spools: ams-003 9223372036854775807" in r.stdout
