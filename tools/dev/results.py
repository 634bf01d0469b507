"""Append benchmark figures to build/bench/results.jsonl (see shared/notes/benchmarks.md): the
benchmarks' (bench/, through bench.results) and the fault suite's (`make faults`, tests/faults/conftest.py)."""

from __future__ import annotations

import json
import platform
import time
from typing import Any

from meetkit_tools.paths import BUILD

RESULTS = BUILD / "bench" / "results.jsonl"


def record(name: str, value: float, unit: str, better: str, detail: dict[str, Any]) -> dict[str, Any]:
    assert better in ("higher", "lower")
    row = {"name": name, "value": value, "unit": unit, "better": better,
           "detail": dict(detail, host=platform.node(), at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{name:36s} {value:>14.6g} {unit:20s} ({better} is better)")
    return row


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
