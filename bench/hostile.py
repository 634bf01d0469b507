"""`hostile_valid_records_lost`: the fault suite's hostile-input scenarios (tests/faults/test_hostile_*.py:
floods, poisoned records, implausible times, idle and busy HTTP clients), each judged by the ledger of
the real nodes running beside the attacker. Runs them through pytest, which records the figure
(tests/faults/conftest.py); about two minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run() -> None:
    env = dict(os.environ, MEETKIT_FAULTS_RECORD="1")
    files = sorted(str(p) for p in (ROOT / "tests" / "faults").glob("test_hostile_*.py"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], cwd=ROOT, env=env)
    if r.returncode != 0:
        print(f"bench.hostile: the hostile scenarios failed (exit {r.returncode}); see above", file=sys.stderr)


if __name__ == "__main__":
    run()
