"""Hostile clients of the gateway's status server (issue 13), judged by the nodes' ledgers.

Real parts as in tests/faults/test_faults.py (Mosquitto, the gateway process, SQLite, simulated
nodes running the unmodified firmware); an attacker beside them on the status server's port. Every
record the nodes made must be in the store exactly once, with its time, whatever the attacker does.
The scenarios are drivers in meetkit_tools.dev.hostile (bench/hostile.py runs them too); the checks
are here.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev import hostile
from meetkit_tools.dev.faultrig import Rig, db_rows
from meetkit_tools.dev.hostile import healthz
from tests.faults.test_faults import assert_clean, wait_for

LOG_LINES_MAX = 200  # the whole gateway log of a scenario; the old server wrote 52,000 traceback lines


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_idle_http_connections_then_a_broker_restart(rig: Rig) -> None:
    run = hostile.idle_connections_then_broker_restart(rig)
    seen, gw = run.seen, rig.gateway
    assert gw.proc is not None
    # the old server: 0 records in 40 s after the restart, the gateway out of descriptors for its reconnection
    assert seen["stored_after_restart"], "timed out waiting for records stored again after the broker restart"
    assert seen["healthz_under_attack"], "timed out waiting for /healthz answering with 1,100 connections at it"
    assert_clean(run.outcome)
    # all of them taken by the gateway (the old server held each in a thread of its own until its
    # descriptors ran out; the rest then waited in the kernel for good)
    assert seen["all_taken"], "the gateway did not take every connection"
    assert "Max open files            1024                 1024" in Path(f"/proc/{gw.proc.pid}/limits").read_text()
    assert int(seen["fds_max"]) < 200, seen  # at most 64 for HTTP, the rest for MQTT, SQLite, Python
    assert int(seen["closed_by_gateway"]) > hostile.IDLE_CONNECTIONS - 64, seen  # it let go of the idle ones
    log = gw.log_text()
    assert "Traceback" not in log and len(log.splitlines()) <= LOG_LINES_MAX, log[-3000:]
    assert healthz(gw.status_url()) == 200


def test_sixteen_busy_status_pages_while_nodes_deliver(rig: Rig) -> None:
    run = hostile.busy_status_pages(rig)
    counts = run.seen["responses"]
    assert_clean(run.outcome)
    assert run.seen["clients_alive"] == 0
    assert counts["200"] >= 16 * 20 and set(counts) == {"200"}, counts  # slowed down, never refused
    # and the page tells the truth: each node's records as the store has them (once the cache let go)
    url = rig.gateway.status_url()

    def page_agrees() -> bool:
        with urllib.request.urlopen(url + "/api/nodes", timeout=10) as r:
            doc = json.load(r)
        per_node = Counter(node for node, *_ in db_rows(rig.gateway.db))
        return {n["node"]: n["records"] for n in doc["nodes"]} == dict(per_node)

    wait_for(page_agrees, 30, "the page's record counts to match the store")
    log = rig.gateway.log_text()
    assert "Traceback" not in log and len(log.splitlines()) <= LOG_LINES_MAX, log[-3000:]
