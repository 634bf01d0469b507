"""Hostile and faulty input never costs a valid reading (issue 13): real nodes deliver beside an
attacker, and every scenario is judged by the ledger (Rig.judge): every record of every real
node stored once, none lost; the attacker's valid records, where it sends any, too. The scenarios
are drivers in meetkit_tools.dev.hostile (bench/hostile.py runs them too); the checks are here.

- an oversized flood from one node, with the store's bound at 1 MB (the audit's case, 150 messages
  of 70 KB under 8 MB, took every record): dead letters have budgets of their own, so no record is
  pruned for them;
- a poisoned record in each of a node's 12-record batches: the 11 others are stored;
- implausible times, durations and counters beside valid records: each refused alone, and every
  reader of the store (export, readings, the page's API, /metrics) still works.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev import hostile
from meetkit_tools.dev.faultrig import Outcome, Rig
from meetkit_tools.dev.hostile import counter

CLI = str(Path(sys.executable).parent / "meetkit-gateway")


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, store_toml=getattr(request, "param", ""))
    try:
        yield r
    finally:
        r.close()


def assert_clean(out: Outcome) -> None:
    assert out.generated > 0
    assert (out.lost, out.duplicated, out.wrong_time, out.crashes) == (0, 0, 0, 0), out.problems


# 1 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rig", [hostile.OVERSIZED_STORE_TOML], indirect=True)
def test_an_oversized_flood_from_one_node_costs_no_reading(rig: Rig) -> None:
    """400 messages of 70 KB (28 MB) from one node id, under the smallest store bound (1 MB, which
    the garbage alone would fill twice over): the broker here has no size limit (the generated one
    refuses them: tests/broker), so the gateway meets them all."""
    run = hostile.oversized_flood(rig)
    seen, flood = run.seen, hostile.OVERSIZED_FLOOD
    assert seen["dead_lettered"], "timed out waiting for the flood dead-lettered"
    assert seen["alarm"], "timed out waiting for the dead_letter_flood alarm"
    assert seen["records_after"] >= seen["records_before"]  # not one record pruned for the garbage
    assert_clean(run.outcome)
    assert counter(rig, "dropped.bytes") == 0
    kept, size = seen["dead_letters_kept"], seen["dead_letters_bytes"]
    assert size <= 1_000_000 and kept < flood  # its budget held
    assert counter(rig, "dead_letters_dropped.flood") == flood - kept


# 2 -----------------------------------------------------------------------------------------------
def test_a_poisoned_record_in_each_batch_costs_only_itself(rig: Rig) -> None:
    """A node whose every 12-record batch has one broken record (a PM value a sensor cannot send):
    the 11 others of each batch are stored and acknowledged; real nodes beside it lose nothing."""
    run = hostile.poisoned_batches(rig)
    assert run.seen["batches_taken"], "timed out waiting for the batches taken"
    assert_clean(run.outcome)
    assert counter(rig, "refused_values.out_of_range") == hostile.POISONED_BATCHES
    assert run.outcome.notes["stored_not_in_ledger"] == 0  # the refused records are dead letters, not records


# 3 -----------------------------------------------------------------------------------------------
def test_implausible_times_are_refused_alone_and_every_reader_survives(rig: Rig, tmp_path: Path) -> None:
    run = hostile.implausible_times(rig)
    assert run.seen["batches_taken"], "timed out waiting for the batches taken"
    assert_clean(run.outcome)
    assert counter(rig, "refused_records.implausible") == len(hostile.IMPLAUSIBLE)
    # every reader of the store still works, for the whole fleet
    conf = str(rig.gateway.conf)
    csv = tmp_path / "all.csv"
    r = subprocess.run([CLI, "export", "--config", conf, "--output", str(csv)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert csv.read_text().count("\n") > 1 + 50
    r = subprocess.run([CLI, "readings", "--config", conf, "--since", "2026-11-01"], capture_output=True, text=True)
    assert r.returncode == 0 and "clock-01" in r.stdout, r.stderr
    r = subprocess.run([CLI, "dead-letters", "list", "--config", conf, "--code", "implausible"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("implausible") >= len(hostile.IMPLAUSIBLE)
    url = rig.gateway.status_url()
    for path in ("/healthz", "/metrics", "/api/nodes", "/api/series?node=clock-01&hours=168"):
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            assert resp.status == 200, path
