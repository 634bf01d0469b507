"""The region's scenarios as benchmark figures (issue 16): region_lost_records and
region_duplicate_records, 0 and 0 over tests/region/test_region_faults.py's scenarios (VictoriaMetrics
restarted under load, a gateway cut off from the region for an hour, a gateway's own broker down, a
node moved within and across towns, a gateway destroyed with its nodes failing over), each judged by
the regional ledger (every record of every node's console against the regional VictoriaMetrics).

The same run as `make faults` does for the region: pytest with MEETKIT_FAULTS_RECORD=1, whose
summary (tests/conftest.py) records both figures with every scenario's row in `detail`. The 6-hour
cut-off is `make soak`'s.

Alone: `.venv/bin/python -m bench.region_scenarios` (about 2 minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run() -> None:
    env = dict(os.environ, MEETKIT_FAULTS_RECORD="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                        "tests/region/test_region_faults.py"], cwd=ROOT, env=env)
    if r.returncode != 0:   # a scenario failed: its figures are recorded, and the bench says so
        raise SystemExit(f"bench.region_scenarios: tests/region/test_region_faults.py exited {r.returncode}")


if __name__ == "__main__":
    run()
