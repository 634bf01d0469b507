"""`hostile_valid_records_lost`: the hostile-input scenarios of issue 13 (meetkit_tools.dev.hostile:
floods, poisoned records, implausible times, idle and busy HTTP clients), each on a rig of its own
(a real Mosquitto, the gateway process, simulated nodes running the firmware) and judged by the
ledger of the real nodes running beside the attacker: the valid records lost, summed over all of
them. The same drivers as tests/faults/test_hostile_*.py, which assert on them; here nothing is
asserted. A scenario that cannot run to its end is named in `detail` ("failed") and left out of
the sum. About three minutes; alone: `python -m bench.hostile`."""

from __future__ import annotations

import tempfile
import traceback
from pathlib import Path

from meetkit_tools.dev import hostile
from meetkit_tools.dev.faultrig import Outcome


def run() -> None:
    outcomes: list[Outcome] = []
    failed: dict[str, str] = {}
    for sc in hostile.SCENARIOS:
        with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
            try:
                outcomes.append(hostile.run_scenario(sc, Path(tmp)).outcome)
            except Exception as e:  # noqa: BLE001 (the other scenarios still run; the figure says which failed)
                traceback.print_exc()
                failed[sc.drive.__name__] = f"{type(e).__name__}: {e}"
    hostile.record_lost(outcomes, "make bench (bench/hostile.py; alone: python -m bench.hostile)", failed)


if __name__ == "__main__":
    run()
