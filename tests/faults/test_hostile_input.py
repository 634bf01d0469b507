"""Hostile and faulty input never costs a valid reading (issue 13): real nodes deliver beside an
attacker, and every scenario is judged by the ledger (harness.judge): every record of every real
node stored once, none lost; the attacker's valid records, where it sends any, too.

- an oversized flood from one node, with the store's bound at 1 MB (the audit's case, 150 messages
  of 70 KB under 8 MB, took every record): dead letters have budgets of their own, so no record is
  pruned for them;
- a poisoned record in each of a node's 12-record batches: the 11 others are stored;
- implausible times, durations and counters beside valid records: each refused alone, and every
  reader of the store (export, readings, the page's API, /metrics) still works.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.faults.harness import Ledger, Outcome, Rig, db_rows, judge, read_ledger, scenario

AIR = "esp32-devkitc-air"
H = 3600
CLI = str(Path(sys.executable).parent / "meetkit-gateway")
EPOCH = 1795510800  # the attacker's records start here (2026-11-23)


@pytest.fixture
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, store_toml=getattr(request, "param", ""))
    try:
        yield r
    finally:
        r.close()


class Attacker:
    """A paho client publishing what no node should, each publish waiting for the broker's PUBACK."""

    def __init__(self, rig: Rig) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"attacker-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(50)
        self.client.connect(rig.broker.host, rig.broker.port)
        self.client.loop_start()

    def publish(self, topic: str, body: bytes) -> None:
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(30)
        assert info.is_published(), f"the broker did not take {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def counter(rig: Rig, name: str) -> int:
    try:
        return rig.counter(name)
    except sqlite3.Error:
        return 0


def wait_for(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def record(seq: int, **change: Any) -> dict[str, Any]:
    r = {"seq": seq, "ts": EPOCH + 60 * seq, "up": 60 * seq, "dur": 60,
         "pm25": [5.0 + seq % 7, 4.0, 9.0 + seq % 7, 58], "temp": [12.5, 12.0, 13.0, 12]}
    r.update(change)
    return r


def active_alarms(rig: Rig) -> list[str]:
    try:
        con = sqlite3.connect(f"file:{rig.gateway.db}?mode=ro", uri=True)
        try:
            return [r[0] for r in con.execute(
                "SELECT code FROM alarms AS a WHERE id = (SELECT max(id) FROM alarms WHERE code = a.code) AND active")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def envelope(node: str, boot: int, recs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"v": 1, "node": node, "boot": boot, "fw": "0.2.0", "board": "esp32-devkitc",
                       "sensors": {"pm": "pms5003", "climate": "bme280"},
                       "units": {"pm25": "ug/m3", "temp": "degC"}, "recs": recs}, separators=(",", ":")).encode()


def judge_all(rig: Rig, name: str, extra: dict[str, Ledger] | None = None) -> Outcome:
    """The rig's nodes by their consoles, and `extra` ledgers (an attacker's valid records)."""
    nodes = {nid: (read_ledger(n.console.read_text(errors="replace")), rig.epochs[nid]) for nid, n in rig.nodes.items()}
    if rig.cutoff is not None:  # what the nodes made after recovery was still in transit
        for nid, (led, _) in nodes.items():
            for k in [k for k in led.records if k not in rig.cutoff[nid]]:
                del led.records[k]
    nodes |= {nid: (led, EPOCH) for nid, led in (extra or {}).items()}
    out = judge(name, nodes, db_rows(rig.gateway.db), rig.reported_dropped())
    crashes = sum(n.console.read_text(errors="replace").count(" E unexpected error") for n in rig.nodes.values())
    out.crashes = crashes
    return out


def assert_clean(out: Outcome) -> None:
    assert out.generated > 0
    assert (out.lost, out.duplicated, out.wrong_time, out.crashes) == (0, 0, 0, 0), out.problems


# 1 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rig", ['max_bytes = "1 MB"\ndead_letters_node_max_bytes = "1 MB"\n'], indirect=True)
def test_an_oversized_flood_from_one_node_costs_no_reading(rig: Rig) -> None:
    """400 messages of 70 KB (28 MB) from one node id, under the smallest store bound (1 MB, which
    the garbage alone would fill twice over): the broker here has no size limit (the generated one
    refuses them: tests/broker), so the gateway meets them all."""
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    rig.node("air-02", "busy-road", board=AIR, until_s=24 * H, seed=2)
    flood = 400

    def attack() -> None:
        rig.wait_virtual("air-01", 1 * H)  # the nodes have stored an hour of records
        before = len(db_rows(rig.gateway.db))
        a = Attacker(rig)
        try:
            for k in range(flood):
                a.publish("meetkit/spew-01/up", bytes([65 + k % 26]) * 70_000)
        finally:
            a.close()
        wait_for(lambda: counter(rig, "rejected.oversized") >= flood, 120, "the flood dead-lettered")
        wait_for(lambda: "dead_letter_flood" in active_alarms(rig), 30, "the dead_letter_flood alarm")
        assert len(db_rows(rig.gateway.db)) >= before  # not one record pruned for the garbage

    rig.run(attack)
    rig.settle()
    out = judge_all(rig, "hostile: oversized flood, 1 MB bound")
    assert_clean(out)
    assert counter(rig, "dropped.bytes") == 0
    con = sqlite3.connect(f"file:{rig.gateway.db}?mode=ro", uri=True)
    try:
        kept, size = con.execute("SELECT count(*), sum(size) FROM dead_letters WHERE node = 'spew-01'").fetchone()
    finally:
        con.close()
    assert size <= 1_000_000 and kept < flood  # its budget held
    assert counter(rig, "dead_letters_dropped.flood") == flood - kept
    out.notes["flood"] = {"messages": flood, "bytes_each": 70_000, "dead_letters_kept": kept}


# 2 -----------------------------------------------------------------------------------------------
def test_a_poisoned_record_in_each_batch_costs_only_itself(rig: Rig) -> None:
    """A node whose every 12-record batch has one broken record (a PM value a sensor cannot send):
    the 11 others of each batch are stored and acknowledged; real nodes beside it lose nothing."""
    rig.node("air-01", "busy-road", board=AIR, until_s=24 * H)
    poison = Ledger()
    batches = 20

    def attack() -> None:
        rig.wait_virtual("air-01", 0.5 * H)
        a = Attacker(rig)
        try:
            for b in range(batches):
                recs = [record(12 * b + i) for i in range(12)]
                recs[6]["pm25"] = [-5.0, -9.0, 1.0, 58]  # cannot be: refused, its record kept
                recs[9] = record(12 * b + 9, ts=10**13)  # cannot be: the record refused
                for r in recs:
                    if r["seq"] % 12 != 9:
                        poison.records[(1, r["seq"])] = r
                a.publish("meetkit/poison-01/up", envelope("poison-01", 1, recs))
        finally:
            a.close()
        wait_for(lambda: counter(rig, "refused_records.implausible") >= batches, 60, "the batches taken")

    rig.run(attack)
    rig.settle()
    out = judge_all(rig, "hostile: a poisoned record per batch", {"poison-01": poison})
    assert_clean(out)
    assert counter(rig, "refused_values.out_of_range") == batches
    assert out.notes["stored_not_in_ledger"] == 0  # the refused records are dead letters, not records


# 3 -----------------------------------------------------------------------------------------------
IMPLAUSIBLE = [dict(ts=0), dict(ts=4102444800), dict(ts=2**62), dict(ts=10**13), dict(dur=10**9),
               dict(seq=2**63 - 1), dict(up=2**40)]


def test_implausible_times_are_refused_alone_and_every_reader_survives(rig: Rig, tmp_path: Path) -> None:
    rig.node("air-01", "quiet-street", board=AIR, until_s=24 * H)
    good = Ledger()

    def attack() -> None:
        rig.wait_virtual("air-01", 0.5 * H)
        a = Attacker(rig)
        try:
            for i, bad in enumerate(IMPLAUSIBLE):
                recs = [record(10 * i), record(10 * i + 1) | bad, record(10 * i + 2)]
                if "seq" in bad:
                    recs = [recs[0], recs[2], recs[1]]  # seqs go up: the huge one last
                for r in (recs[0], recs[2]) if "seq" not in bad else recs[:2]:
                    good.records[(2, r["seq"])] = r
                a.publish("meetkit/clock-01/up", envelope("clock-01", 2, recs))
            a.publish("meetkit/clock-02/up", envelope("clock-02", 2**40, [record(0)]))  # a boot no node has
        finally:
            a.close()
        wait_for(lambda: counter(rig, "rejected.implausible") >= 1, 60, "the batches taken")

    rig.run(attack)
    rig.settle()
    out = judge_all(rig, "hostile: implausible times and counters", {"clock-01": good})
    assert_clean(out)
    assert counter(rig, "refused_records.implausible") == len(IMPLAUSIBLE)
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
    assert r.returncode == 0 and r.stdout.count("implausible") >= len(IMPLAUSIBLE)
    url = rig.gateway.status_url()
    for path in ("/healthz", "/metrics", "/api/nodes", "/api/series?node=clock-01&hours=168"):
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            assert resp.status == 200, path
