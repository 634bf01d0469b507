"""`make faults` prints one row per scenario and records the totals as benchmark figures."""

from __future__ import annotations

import os

from tests.faults.harness import RESULTS

COLUMNS = ("generated", "delivered", "duplicated", "lost", "dropped", "wrong_time", "untimed", "crashes")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fault suite: every record of every node's ledger, after recovery")
    tr.write_line(f"{'scenario':32s}" + "".join(f"{c:>12s}" for c in COLUMNS))
    for r in RESULTS:
        tr.write_line(f"{r.scenario:32s}" + "".join(f"{getattr(r, c):>12d}" for c in COLUMNS))
    tot = {c: sum(getattr(r, c) for r in RESULTS) for c in COLUMNS}
    tr.write_line(f"{'total':32s}" + "".join(f"{tot[c]:>12d}" for c in COLUMNS))
    for r in RESULTS:
        if r.problems or r.notes:
            tr.write_line(f"  {r.scenario}: {r.notes} {r.problems[:3] if r.problems else ''}")
    if os.environ.get("MEETKIT_FAULTS_RECORD"):
        from bench.results import record

        detail = {"scenarios": [r.row() for r in RESULTS], "generated": tot["generated"],
                  "command": "make faults"}
        record("faults_lost_records", tot["lost"], "records", "lower", detail)
        record("faults_duplicate_records", tot["duplicated"], "records", "lower",
               {"generated": tot["generated"], "command": "make faults",
                "note": "records stored more than once in the gateway database, all scenarios"})
