"""`meetkit-gateway export`: open data as CSV (with its CSVW metadata) or JSON Lines, the PM humidity
correction beside the raw values, the filters, and a clear error for every bad request."""

from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
from pathlib import Path

import pytest

from meetkit_gateway import pm_humidity
from meetkit_gateway.export import COLUMNS
from meetkit_gateway.timefmt import iso

from .conftest import CLI, Publisher, Running, batch, cli, example, wait_for
from .conftest import fill_store as fill

T0 = 1795510800  # 2026-11-24T09:00:00Z


@pytest.fixture
def config(store_toml: Path) -> Path:
    return store_toml


def export(config: Path, *args: str):
    return cli("export", "--config", str(config), *args)


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def humid(rhs: list[float | None], pm25: float | None = 10.0, kappa_node: str = "ams-003") -> dict:
    """One record per RH (None: the record has no rh), pm25 = [pm25, pm25/2, 2*pm25, 58]."""
    doc = batch(node=kappa_node, seqs=range(len(rhs)))
    doc["units"]["rh"] = "%"
    for rec, rh in zip(doc["recs"], rhs):
        rec["pm25"] = None if pm25 is None else [pm25, pm25 / 2, pm25 * 2, 58]
        if rh is not None:
            rec["rh"] = [rh, rh, rh, 12]
    return doc


# -- formats ------------------------------------------------------------------------------------------


def test_csv_has_a_header_units_flags_sensor_and_times_in_utc(config):
    fill(config, example(), batch(node="ams-002", seqs=[0]))
    r = export(config, "--node", "ams-001", "--quantity", "pm25", "--quantity", "LA10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "node,start,end,quantity,avg,min,max,n,unit,flags,sensor,board,fw",
        "ams-001,2026-11-24T08:59:00Z,2026-11-24T09:00:00Z,pm25,,,,,ug/m3,missing,pms5003,esp32-devkitc,0.2.0",
        "ams-001,2026-11-24T09:00:00Z,2026-11-24T09:01:00Z,pm25,5.2,4.0,7.0,58,ug/m3,rh_high,pms5003,esp32-devkitc,0.2.0",
        "ams-001,2026-11-24T09:00:00Z,2026-11-24T09:01:00Z,LA10,58.4,,,,dB,,ics43434,esp32-devkitc,0.2.0",
    ]
    assert r.stderr.splitlines()[0] == (
        "exported 3 readings of 2 records (1 node, interval starts 2026-11-24T08:59:00Z to "
        "2026-11-24T09:00:00Z) to stdout")


def test_every_reading_of_every_node_by_node_then_time_in_the_contracts_order(config):
    fill(config, batch(node="ams-002", seqs=[0, 1]), example())
    r = export(config)
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout)
    assert [(x["node"], x["start"], x["quantity"]) for x in rows[:6]] == [
        ("ams-001", "2026-11-24T08:59:00Z", "pm1"), ("ams-001", "2026-11-24T08:59:00Z", "pm25"),
        ("ams-001", "2026-11-24T08:59:00Z", "temp"), ("ams-001", "2026-11-24T09:00:00Z", "pm1"),
        ("ams-001", "2026-11-24T09:00:00Z", "pm25"), ("ams-001", "2026-11-24T09:00:00Z", "pm10"),
    ]
    assert len(rows) == 3 + 12 + 4
    assert [x["quantity"] for x in rows if x["node"] == "ams-002"] == ["pm25", "temp", "pm25", "temp"]
    assert {x["unit"] for x in rows if x["quantity"] == "temp"} == {"degC"}


def test_json_lines_one_object_per_reading_with_nulls_and_a_flag_list(config):
    fill(config, example())
    r = export(config, "--format", "json", "--quantity", "pm25", "--quantity", "cov")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert docs == [
        {"node": "ams-001", "start": "2026-11-24T08:59:00Z", "end": "2026-11-24T09:00:00Z", "quantity": "pm25",
         "avg": None, "min": None, "max": None, "n": None, "unit": "ug/m3", "flags": ["missing"],
         "sensor": "pms5003", "board": "esp32-devkitc", "fw": "0.2.0"},
        {"node": "ams-001", "start": "2026-11-24T09:00:00Z", "end": "2026-11-24T09:01:00Z", "quantity": "pm25",
         "avg": 5.2, "min": 4.0, "max": 7.0, "n": 58, "unit": "ug/m3", "flags": ["rh_high"],
         "sensor": "pms5003", "board": "esp32-devkitc", "fw": "0.2.0"},
        {"node": "ams-001", "start": "2026-11-24T09:00:00Z", "end": "2026-11-24T09:01:00Z", "quantity": "cov",
         "avg": 1.0, "min": None, "max": None, "n": None, "unit": "1", "flags": [],
         "sensor": "ics43434", "board": "esp32-devkitc", "fw": "0.2.0"},
    ]


def test_a_csv_file_gets_its_csvw_metadata_naming_columns_and_units(config, tmp_path):
    fill(config, example())
    out = tmp_path / "open" / "meetkit.csv"
    out.parent.mkdir()
    r = export(config, "--output", str(out), "--pm-correction")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert f"to {out} and meetkit.csv-metadata.json" in r.stderr
    header = out.read_text().splitlines()[0]
    meta = json.loads((tmp_path / "open" / "meetkit.csv-metadata.json").read_text())
    assert meta["@context"] == "http://www.w3.org/ns/csvw" and meta["url"] == "meetkit.csv"
    assert [c["name"] for c in meta["tableSchema"]["columns"]] == header.split(",") == list(COLUMNS)
    units = {v["schema:name"]: v["schema:unitText"] for v in meta["schema:variableMeasured"]}
    assert units == {"pm1": "ug/m3", "pm1_corr": "ug/m3", "pm25": "ug/m3", "pm25_corr": "ug/m3",
                     "pm10": "ug/m3", "pm10_corr": "ug/m3", "temp": "degC", "rh": "%", "press": "hPa",
                     "LAeq": "dB", "LA10": "dB", "LA50": "dB", "LA90": "dB", "LZeq": "dB", "cov": "1"}
    assert meta["schema:temporalCoverage"] == "2026-11-24T08:59:00Z/2026-11-24T09:00:00Z"
    assert "kappa = 0.3" in meta["dc:description"] and "doi:10.5194/amt-11-709-2018" in meta["dc:description"]


# -- the humidity correction ------------------------------------------------------------------------


def corrected(r) -> list[tuple[str, str, str, str, str]]:
    return [(x["quantity"], x["avg"], x["min"], x["max"], x["flags"]) for x in table(r.stdout)]


def test_pm_correction_against_hand_computed_values(config):
    # C = 1 + (kappa/1.65) / (-1 + 100/RH); kappa 0.3:
    #   RH 50: C = 1 + 0.181818/1      = 1.181818 -> 10/C = 8.4615, 5/C = 4.2308, 20/C = 16.9231
    #   RH 80: C = 1 + 0.181818/0.25   = 1.727273 -> 10/C = 5.7895, 5/C = 2.8947, 20/C = 11.5789
    #   RH 95: C = 1 + 0.181818/0.0526316 = 4.454545 -> 10/C = 2.2449, 5/C = 1.1224, 20/C = 4.4898
    #   RH 96: above 95 %: not corrected;  no RH in the record: not corrected
    fill(config, humid([50, 80, 95, 96, None]))
    r = export(config, "--pm-correction", "--quantity", "pm25", "--quantity", "pm25_corr")
    assert r.returncode == 0, r.stderr
    assert corrected(r) == [
        ("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "8.46", "4.23", "16.92", "corrected"),
        ("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "5.79", "2.89", "11.58", "corrected"),
        ("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "2.24", "1.12", "4.49", "corrected"),
        ("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "", "", "", "corrected,rh_too_high"),
        ("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "", "", "", "corrected,no_rh"),
    ]
    # kappa 0.6: RH 50: C = 1.363636 -> 7.3333; RH 80: C = 1 + 0.363636/0.25 = 2.454545 -> 4.0741;
    # RH 95: C = 1 + 0.363636/0.0526316 = 7.909091 -> 1.2644
    r = export(config, "--pm-correction", "--kappa", "0.6", "--quantity", "pm25_corr", "--format", "json")
    assert [d["avg"] for d in map(json.loads, r.stdout.splitlines())] == [7.33, 4.07, 1.26, None, None]


def test_the_docs_example_quantity_pm25_with_pm_correction_gives_pm25_and_pm25_corr(config):
    # docs/operator.md: `export --quantity pm25 --pm-correction`; RH 50 and 80 as above
    fill(config, humid([50, 80]))
    r = export(config, "--quantity", "pm25", "--pm-correction")
    assert r.returncode == 0, r.stderr
    assert corrected(r) == [("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "8.46", "4.23", "16.92", "corrected"),
                            ("pm25", "10.0", "5.0", "20.0", ""), ("pm25_corr", "5.79", "2.89", "11.58", "corrected")]
    # asked for the corrected one alone: that one alone, as before
    r = export(config, "--quantity", "pm25_corr", "--pm-correction")
    assert [q for q, *_ in corrected(r)] == ["pm25_corr", "pm25_corr"]


def test_the_formula_itself():
    assert pm_humidity.growth(0) == 1.0
    assert pm_humidity.growth(80) == pytest.approx(1 + (0.3 / 1.65) / 0.25)
    assert pm_humidity.correct(10.0, 50.0) == (pytest.approx(10 / (1 + 0.3 / 1.65)), None)
    assert pm_humidity.correct(10.0, None) == (None, "no_rh")
    assert pm_humidity.correct(10.0, 95.5) == (None, "rh_too_high")
    assert pm_humidity.correct(None, 60.0) == (None, None)
    with pytest.raises(ValueError):
        pm_humidity.growth(100)


def test_correction_keeps_the_raw_flags_and_a_missing_value_stays_missing(config):
    doc = humid([90.0, 90.0], kappa_node="ams-004")
    doc["recs"][0]["f"] = {"pm25": ["rh_high"]}
    doc["recs"][1]["pm25"] = None
    doc["recs"][1]["f"] = {"pm25": ["missing"]}
    fill(config, doc)
    r = export(config, "--pm-correction", "--quantity", "pm25_corr")
    # RH 90: C = 1 + 0.181818/0.111111 = 2.636364 -> 10/C = 3.7931, 5/C = 1.8966, 20/C = 7.5862
    assert corrected(r) == [("pm25_corr", "3.79", "1.9", "7.59", "rh_high,corrected"),
                            ("pm25_corr", "", "", "", "missing,corrected")]


def test_without_the_option_nothing_is_corrected(config):
    fill(config, humid([80]))
    r = export(config)
    assert r.returncode == 0 and "_corr" not in r.stdout and "corrected" not in r.stdout


# -- what is selected --------------------------------------------------------------------------------


def test_since_until_and_nodes_select_interval_starts(config):
    fill(config, batch(node="ams-001", seqs=range(10)), batch(node="ams-002", seqs=range(10)),
         batch(node="ams-003", seqs=range(10)))
    r = export(config, "--since", "2026-11-24T09:03:00Z", "--until", "2026-11-24T09:05Z", "--node", "ams-003",
               "--node", "ams-001", "--quantity", "temp")
    assert r.returncode == 0, r.stderr
    assert [(x["node"], x["start"]) for x in table(r.stdout)] == [
        ("ams-001", "2026-11-24T09:03:00Z"), ("ams-001", "2026-11-24T09:04:00Z"),
        ("ams-003", "2026-11-24T09:03:00Z"), ("ams-003", "2026-11-24T09:04:00Z")]
    # a zone other than UTC is converted; the output is UTC
    r = export(config, "--since", "2026-11-24T10:08:00+01:00", "--node", "ams-002", "--quantity", "temp")
    assert [x["start"] for x in table(r.stdout)] == ["2026-11-24T09:08:00Z", "2026-11-24T09:09:00Z"]


def test_relative_since(config):
    import time

    now = int(time.time()) // 60 * 60
    fill(config, batch(seqs=range(3), ts0=now - 3 * 86400), batch(seqs=range(3, 5), ts0=now - 3 * 86400))
    fill(config, batch(node="ams-002", seqs=range(2), ts0=now - 3600))
    r = export(config, "--since", "2d", "--quantity", "temp")
    assert [x["node"] for x in table(r.stdout)] == ["ams-002", "ams-002"]
    r = export(config, "--since", "7d", "--until", "24h", "--quantity", "temp")
    assert [x["node"] for x in table(r.stdout)] == ["ams-001"] * 5


def test_untimed_records_are_left_out_and_counted(config):
    fill(config, batch(seqs=range(3)), batch(boot=4, seqs=range(2), ts0=None))
    r = export(config)
    assert r.returncode == 0
    assert len(table(r.stdout)) == 6
    assert r.stderr.splitlines()[1] == (
        "left out 2 records received in that period without a known time yet (their node had no clock)")


def test_an_empty_selection_is_a_header_only(config):
    fill(config, batch(seqs=range(3)))
    r = export(config, "--since", "2030-01-01")
    assert r.returncode == 0
    assert r.stdout.splitlines() == [",".join(COLUMNS)]
    assert r.stderr.startswith("exported 0 readings of 0 records (0 nodes, no data)")


# -- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, code, message", [
    (["--since", "yesterday"], 2,
     "--since: 'yesterday' is neither a span like 30m, 1h, 2d nor an ISO time like 2026-11-24T08:00Z"),
    (["--until", "2026-13-01"], 2, "--until: '2026-13-01' is neither"),
    (["--since", "2026-11-25", "--until", "2026-11-24"], 2,
     "--until (2026-11-24T00:00:00Z) must be after --since (2026-11-25T00:00:00Z)"),
    (["--node", "ams-001", "--node", "ams-009"], 1, "no node 'ams-009' in "),
    (["--quantity", "pm2.5"], 2, "argument --quantity: invalid choice: 'pm2.5'"),
    (["--quantity", "pm25_corr"], 2, "--quantity: the corrected quantities (pm25_corr, ...) need --pm-correction"),
    (["--pm-correction", "--kappa", "0"], 2, "--kappa: must be above 0 and at most 1.5, got 0"),
    (["--format", "xml"], 2, "argument --format: invalid choice: 'xml'"),
])
def test_bad_requests_say_what_is_wrong(config, args, code, message):
    fill(config, batch(seqs=range(2)))
    r = export(config, *args)
    assert r.returncode == code
    assert message in r.stderr
    assert r.stdout == ""


def test_no_store_and_no_folder(config, tmp_path):
    r = export(config)
    assert r.returncode == 1
    assert r.stderr.strip() == f"{tmp_path / 'gateway.db'}: no store there (has the gateway run yet?)"
    fill(config, batch(seqs=range(2)))
    r = export(config, "--output", str(tmp_path / "nowhere" / "x.csv"))
    assert r.returncode == 1 and r.stderr.strip() == f"--output: the folder {tmp_path / 'nowhere'} does not exist"


def test_a_reader_that_stops_early_is_not_an_error(config):
    """`export | head -1`: the closed pipe ends the export quietly, with exit status 0."""
    fill(config, *(batch(seqs=range(k * 30, (k + 1) * 30)) for k in range(40)))  # far more than a pipe holds
    p = subprocess.Popen([CLI, "export", "--config", str(config), "--since", "2026-01-01"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().startswith("node,")
    p.stdout.close()
    assert p.wait(30) == 0
    assert p.stderr is not None and "cannot write" not in p.stderr.read()


def test_output_is_replaced_whole_or_left_alone(config, tmp_path):
    fill(config, batch(seqs=range(4)))
    out = tmp_path / "x.json"
    out.write_text("the previous export\n")
    r = export(config, "--format", "json", "--output", str(out), "--node", "ams-404")
    assert r.returncode == 1 and "no node 'ams-404'" in r.stderr
    assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("gateway.")) == ["x.json"]
    r = export(config, "--format", "json", "--output", str(out))
    assert r.returncode == 0
    assert len(out.read_text().splitlines()) == 8
    assert not (tmp_path / "x.json-metadata.json").exists()  # CSVW describes CSV only
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("gateway.")) == ["x.json"]


# -- beside the running gateway ----------------------------------------------------------------------------------


def test_export_beside_the_running_gateway_gives_whole_records_and_batches(tmp_path, broker):
    from meetkit_gateway import config as configuration

    from .conftest import write_config

    g = Running(configuration.load(write_config(tmp_path, broker.port))).wait_subscribed()
    node = Publisher(broker.host, broker.port)
    try:
        node.publish("meetkit/ams-001/up", batch(seqs=range(0, 20)))
        g.wait_committed(1)
        exports = []
        for k in range(20, 200, 20):
            node.publish("meetkit/ams-001/up", batch(seqs=range(k, k + 20)))  # while the export reads
            r = export(tmp_path / "gateway.toml", "--format", "json")
            assert r.returncode == 0, r.stderr
            exports.append([json.loads(line) for line in r.stdout.splitlines()])
        wait_for(lambda: g.gateway.writer.committed == 10, 10, "all batches committed")
    finally:
        node.close()
        g.stop()
    for docs in exports:
        per_start: dict[str, list[str]] = {}
        for d in docs:
            per_start.setdefault(d["start"], []).append(d["quantity"])
        assert all(q == ["pm25", "temp"] for q in per_start.values())  # whole records only
        assert len(per_start) % 20 == 0 and len(per_start) >= 20  # whole batches only
    assert len(exports[-1]) >= len(exports[0])


def test_an_export_is_one_snapshot_across_nodes(config):
    """Each node is read by its own statement; what is committed meanwhile (here: while node A's
    rows are being written out) is not in the export, for any node."""
    from meetkit_gateway.export import Selection, export
    from meetkit_gateway.store import Store

    fill(config, batch(node="ams-001", seqs=range(3)), batch(node="ams-002", seqs=range(3)))
    db = config.parent / "gateway.db"

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            if not self.getvalue():  # the first row: another connection commits more of both nodes
                fill(config, batch(node="ams-001", seqs=range(3, 6)), batch(node="ams-002", seqs=range(3, 6)))
            return super().write(text)

    out = Out()
    with Store(db, readonly=True) as store:
        summary = export(store, Selection(), "json", None, out)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert summary.records == 6 and len(docs) == 12
    assert {(d["node"], d["start"]) for d in docs} == {
        (n, iso(T0 + 60 * s)) for n in ("ams-001", "ams-002") for s in range(3)}
    with Store(db, readonly=True) as store:  # the later batches are there for the next export
        assert store.readings_count() == 24


def test_the_example_batch_exports_what_the_node_sent(config):
    """Every value of the contract's example comes out as it went in."""
    doc = copy.deepcopy(example())
    fill(config, doc)
    rows = {x["quantity"]: x for x in table(export(config, "--since", "2026-11-24T09:00Z").stdout)}
    rec = doc["recs"][1]
    for q, v in rec.items():
        if q in ("seq", "ts", "up", "dur", "f", "err"):
            continue
        got = rows[q]
        if isinstance(v, list):
            assert (float(got["avg"]), float(got["min"]), float(got["max"]), int(got["n"])) == tuple(v)
        else:
            assert float(got["avg"]) == v and got["min"] == got["max"] == got["n"] == ""
        assert got["unit"] == doc["units"][q]
