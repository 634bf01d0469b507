"""Hostile input (issue 13): a flood of 1 MB messages while the gateway's writer is held costs
no valid reading, and the gateway's memory stays bounded and comes back down after it.

Real parts as in test_faults.py: a plain Mosquitto that takes 1 MB messages (no size limit, as on
the test rig), the gateway as its own process, SQLite, simulated nodes running the firmware. The
scenario is a driver in meetkit_tools.dev.hostile (bench/hostile.py runs it too); the checks are
here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway.ingest import MAX_QUEUE_BYTES
from meetkit_tools.dev import hostile
from meetkit_tools.dev.faultrig import Rig
from tests.faults.test_faults import assert_clean

# What the gateway may take on top of its plateau while flooded: what it holds (MAX_QUEUE_BYTES),
# paho's buffers for the message it is reading (a few times its size) and room for SQLite's page
# cache and Python's allocator. The unbounded gateway held every QoS 0 message: +400 MB here.
HELD_MIB = MAX_QUEUE_BYTES / hostile.MiB + 32


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_hostile_1mb_flood_while_the_writer_is_held(rig: Rig) -> None:
    run = hostile.flood_while_writer_held(rig)
    seen, mem = run.seen, run.seen["mem"]
    assert seen["publishers_exit"] == [0, 0], "the attacker's publishes went through the broker"
    assert seen["oversized_while_held"] == 0, "nothing committed while the writer is held"
    assert seen["dead_lettered"], "timed out waiting for the flood to be dead-lettered"
    assert seen["memory_came_back"], \
        f"the gateway's memory did not come back within {hostile.BACK_MIB} MiB of its plateau: {mem}"
    assert_clean(run.outcome)
    assert seen["rejected_oversized"] == hostile.FLOOD_QOS0 + hostile.FLOOD_QOS1
    assert seen["flood_readings_stored"] == 0, "nothing of the flood was stored"
    assert mem["peak_hwm"] <= mem["plateau_before"] + HELD_MIB, mem
