"""Append benchmark figures to build/bench/results.jsonl (see shared/notes/benchmarks.md): the
benchmarks' (bench/, through bench.results) and the fault suite's (`make faults`, tests/faults/conftest.py)."""

from __future__ import annotations

import json
import platform
import time
from typing import Any

from meetkit_tools.paths import BUILD

RESULTS = BUILD / "bench" / "results.jsonl"


def record(name: str, value: float | None, unit: str, better: str, detail: dict[str, Any]) -> dict[str, Any]:
    """None: the figure could not be measured (`detail` says why); recorded as null."""
    assert better in ("higher", "lower")
    row = {"name": name, "value": value, "unit": unit, "better": better,
           "detail": dict(detail, host=platform.node(), at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    shown = f"{value:>14.6g}" if value is not None else f"{'none':>14}"
    print(f"{name:36s} {shown} {unit:20s} ({better} is better)")
    return row


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
