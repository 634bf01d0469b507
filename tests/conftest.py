"""Shared fixtures: real parts started on loopback ports of the test's own, stopped after."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev.faultrig import RESULTS, Outcome
from meetkit_tools.services import Mosquitto, free_port  # noqa: F401  (re-exported for tests)

Broker = Mosquitto  # the name the tests use


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path).start()
    try:
        yield b
    finally:
        b.stop()


COLUMNS = ("generated", "delivered", "duplicated", "lost", "dropped", "wrong_time", "untimed", "crashes")


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Under pytest-xdist (make test) each worker hands its fault scenarios to the controller, which
    # prints the table below; without it (make faults) RESULTS is already this process's.
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["fault_results"] = [r.row() for r in RESULTS]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    RESULTS.extend(Outcome(**r) for r in getattr(node, "workeroutput", {}).get("fault_results", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """`make faults` and `make test` print one row per fault scenario and `make faults` records the
    totals as benchmark figures."""
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fault suite: every record of every node's ledger, after recovery")
    width = max(32, *(len(r.scenario) + 1 for r in RESULTS))
    tr.write_line(f"{'scenario':{width}s}" + "".join(f"{c:>12s}" for c in COLUMNS))
    for r in RESULTS:
        tr.write_line(f"{r.scenario:{width}s}" + "".join(f"{getattr(r, c):>12d}" for c in COLUMNS))
    tot = {c: sum(getattr(r, c) for r in RESULTS) for c in COLUMNS}
    tr.write_line(f"{'total':{width}s}" + "".join(f"{tot[c]:>12d}" for c in COLUMNS))
    for r in RESULTS:
        if r.problems or r.notes:
            tr.write_line(f"  {r.scenario}: {r.notes} {r.problems[:3] if r.problems else ''}")
    if os.environ.get("MEETKIT_FAULTS_RECORD"):
        from meetkit_tools.dev.hostile import record_lost
        from meetkit_tools.dev.results import record

        hostile = [r for r in RESULTS if r.scenario.startswith("hostile:")]
        if hostile:
            record_lost(hostile, "make faults (tests/faults/test_hostile_*.py; alone: python -m bench.hostile)")
        region = [r for r in RESULTS if r.scenario.startswith("region:")]
        if region:  # tests/region/test_region_faults.py: judged against the regional VictoriaMetrics
            tot = {c: sum(getattr(r, c) for r in region) for c in COLUMNS}
            record("region_lost_records", tot["lost"], "records", "lower",
                   {"scenarios": [r.row() for r in region], "generated": tot["generated"], "command": "make faults",
                    "note": "every node's ledger against the regional VictoriaMetrics"})
            record("region_duplicate_records", tot["duplicated"], "records", "lower",
                   {"generated": tot["generated"], "command": "make faults",
                    "note": "records with more than one sample at their time in the region's store (one series "
                            "twice, or two towns' series)"})
        faults = [r for r in RESULTS if not r.scenario.startswith(("hostile:", "region:"))]
        if faults:
            tot = {c: sum(getattr(r, c) for r in faults) for c in COLUMNS}
            record("faults_lost_records", tot["lost"], "records", "lower",
                   {"scenarios": [r.row() for r in faults], "generated": tot["generated"], "command": "make faults"})
            record("faults_duplicate_records", tot["duplicated"], "records", "lower",
                   {"generated": tot["generated"], "command": "make faults",
                    "note": "records stored more than once in the gateway database, all scenarios"})
