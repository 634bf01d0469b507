"""Reading the gateway's /metrics in tests: prometheus-client's parser of the text format 0.0.4,
and promtool (Debian's `prometheus` package, installed by `make system-deps`), the reference
parser and linter, on every text read.

The two are needed together: prometheus-client's parser is lax by design (it says so), and promtool
2.42 lets a family split in two or a duplicate series through; the few checks below catch those.
"""
from __future__ import annotations

import shutil
import subprocess
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: what promtool's linter says of the gateway's names, and is kept: `meetkit_store_counter_total`
#: (the store's other counters, by name) is a name operators may alert on; renaming it is not a
#: change of format
KNOWN_LINT = frozenset({"meetkit_store_counter_total metric name should not include type 'counter'"})


def promtool(text: str) -> tuple[int, set[str]]:
    """`promtool check metrics` of `text`: its exit code (0 fine, 1 not the format, 3 lint
    problems only) and what it said, line by line."""
    exe = shutil.which("promtool")
    assert exe, "promtool not found: `make system-deps` installs it (Debian's prometheus package)"
    r = subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return r.returncode, {line for line in (r.stdout + r.stderr).splitlines() if line.strip()}


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """Families by the name they are exposed under: {"type", "help", "samples": {frozenset(labels):
    value}}. Fails on what the format does not allow (promtool), on a sample outside its family
    (the parser makes it an untyped family of its own), a family declared twice, a duplicate series."""
    assert text.endswith("\n") and not text.endswith("\n\n")
    code, said = promtool(text)
    assert code in (0, 3) and said <= KNOWN_LINT, f"promtool check metrics: exit {code}: {sorted(said)}"
    families: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        # the parser names a counter without its `_total`, as OpenMetrics does; the gateway's keep it
        exposed = fam.name + "_total" if fam.type == "counter" else fam.name
        assert fam.type in ("counter", "gauge"), f"{exposed}: {fam.type} (a sample outside its family?)"
        assert exposed not in families, f"{exposed} declared twice"
        samples: dict[frozenset[tuple[str, str]], float] = {}
        for s in fam.samples:
            assert s.name == exposed, f"{s.name} in the family {exposed}"
            key = frozenset(s.labels.items())
            assert key not in samples, f"duplicate series {s.name}{s.labels}"
            samples[key] = s.value
        families[exposed] = {"type": fam.type, "help": fam.documentation, "samples": samples}
    return families


def sample(fams: dict[str, dict[str, Any]], metric: str, **labels: str) -> float:
    return fams[metric]["samples"][frozenset(labels.items())]
