"""How a benchmark reports: `record(name, value, unit, better, detail)` appends one figure to
build/bench/results.jsonl (see shared/notes/benchmarks.md); `median` of several runs. Written in
tools/dev/results.py, which `make faults` records its figures with too."""

from meetkit_tools.dev.results import RESULTS, median, record

__all__ = ["RESULTS", "median", "record"]
