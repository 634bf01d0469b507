"""The spool's safe position (firmware/lib/spool.py, safepos.py, spstate.py) and what the outbox does
with a region's gateway's `safe` pair (outbox.py), under MicroPython on a littlefs image
(docs/payload.md, "Safe in the region").

What a user would notice: which records a node keeps after its gateway acknowledged them, which
ones it sends again to another gateway (a failover, a move, a fresh database), what it counts as
dropped when its spool is full, its status's `held`; and that a power cut at any flash program
loses no record and never leaves the node believing the region has a record it was not told of."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from meetkit_gateway.acks import safe_payload
from meetkit_tools.dev.micropython import FIRMWARE_LIB, SIM_MPY
from meetkit_tools.sim.runner import micropython_bin
from tests.firmware.test_outbox import Rig, seqs
from tests.firmware.test_spool import mpy

A, B = "aaaa000000000001", "bbbb000000000002"


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.kill()


def sent_and_acked(rig: Rig, n: int, db: str, **safe: Any) -> dict[str, Any]:
    """`n` new records sent (at most 8 a batch: the outbox's new records) and each batch
    acknowledged by `db` (with `safe`, a region's)."""
    r: dict[str, Any] = {}
    while n:
        k = min(n, 8)
        rig.add(k)
        batches = rig.run(200)
        assert len(batches) == 1 and len(batches[0]) == k, batches
        r = rig.ack(batches[0], db=db, **safe)
        n -= k
    return r


def unsafe(r: dict[str, Any]) -> list[int]:
    return [s for _, s in r["unsafe"]]


def test_a_regional_acknowledgement_keeps_records_until_a_pair_covers_them(rig: Rig) -> None:
    rig.do("anchor")
    r = sent_and_acked(rig, 10, A, safe=None)        # stored, nothing in the region's store yet
    assert r["unacked"] == [], "acknowledged: not sent again to this gateway"
    assert unsafe(r) == list(range(10)) and r["held"] == 10, "kept, and counted as held"
    assert rig.run(130_000) == [], "kept, not sent again"
    r = rig.do("ack", msg=safe_payload(A, (1, 4)).decode())   # the forwarder caught up to seq 4
    assert unsafe(r) == [5, 6, 7, 8, 9] and r["held"] == 5
    assert not any("not understood" in line for line in rig.console), "a standalone safe ack is understood"
    rig.run(31_000)
    rig.reboot()                                      # the safe position and the count survive
    r = rig.state()
    assert [s for b, s in r["unsafe"] if b == 1] == [5, 6, 7, 8, 9] and r["held"] == 5
    assert r["unacked"] == [], "and the acknowledgements"


def test_a_lone_gateways_acknowledgement_is_safe_at_once(rig: Rig) -> None:
    rig.do("anchor")
    r = sent_and_acked(rig, 6, A)
    assert r["unsafe"] == [] and r["held"] == 0
    rig.add(3)
    r = rig.state()
    assert r["held"] == 3 and unsafe(r) == [6, 7, 8]


def test_another_database_after_a_regional_gateway_gets_only_what_is_not_safe(rig: Rig) -> None:
    """A failover or a move: the records the region took are not sent again; those it had not
    taken (acknowledged by the old gateway or not) are, each once."""
    rig.do("anchor")
    sent_and_acked(rig, 8, A, safe=None)
    r = sent_and_acked(rig, 4, A, safe=(1, 5))        # 0..5 in the region; 6..11 held
    assert unsafe(r) == list(range(6, 12)) and r["held"] == 6
    rig.add(2)                                        # 12, 13: sent, not yet acknowledged
    assert rig.run(200) == [[12, 13]]
    r = rig.ack([12, 13], db=B, safe=None)            # another gateway (its own database)
    assert any(f"gateway database changed ({A} -> {B}): sending again 8 records not yet safe" == line[-len(
        f"gateway database changed ({A} -> {B}): sending again 8 records not yet safe"):] for line in rig.console)
    again = []
    for _ in range(10):
        b = rig.run(2000)
        again += b
        for s in b:
            rig.ack(s, db=B, safe=None)
    # what the region may lack, once (12 and 13 too: the acknowledgement that showed the new
    # database came before the node forgot what it had in flight); nothing the region confirmed
    assert sorted(seqs(again)) == list(range(6, 14))
    r = rig.do("ack", msg=safe_payload(B, (1, 13)).decode())
    assert r["unsafe"] == [] and r["held"] == 0


def test_a_fresh_database_on_a_lone_gateway_is_refilled_with_everything(rig: Rig) -> None:
    rig.do("anchor")
    sent_and_acked(rig, 5, A)
    r = sent_and_acked(rig, 2, B)
    assert [s for _, s in r["unacked"]] == list(range(7)) and r["held"] == 7 and unsafe(r) == list(range(7))
    assert any(line.endswith(f"({A} -> {B}): sending again 7 records not yet safe (all the spool holds)")
               for line in rig.console)


def test_a_smaller_pair_after_a_late_record_releases_nothing_more(rig: Rig) -> None:
    """payload.md: each pair applies to the records acknowledged up to its arrival; a pair that
    moved back (a record came late) releases less, and a record acknowledged after a larger pair
    is not covered by that pair."""
    rig.do("anchor")
    rig.add(8)
    assert rig.run(200) == [list(range(8))]
    rig.add(2)
    assert rig.run(200) == [[8, 9]]
    rig.ack([0, 1, 2, 3, 4, 6, 7], db=A, safe=None)
    r = rig.ack([8, 9], db=A, safe=(1, 9))   # 5 refused for want of disk space
    assert unsafe(r) == list(range(5, 10)) and r["held"] == 5, "the position stops at the first not acknowledged"
    for _ in range(70):                                 # 5 is sent again after 120 s
        b = rig.run(2000)
        if b:
            break
    assert b == [[5]]
    r = rig.ack([5], db=A, safe=(1, 4))                 # stored now, below the pair sent before
    assert unsafe(r) == list(range(5, 10)) and r["held"] == 5, "the smaller pair holds it"
    r = rig.do("ack", msg=safe_payload(A, (1, 7)).decode())
    assert unsafe(r) == [8, 9] and r["held"] == 2
    r = rig.do("ack", msg=safe_payload(A, (1, 3)).decode())   # smaller again: releases nothing, moves nothing back
    assert unsafe(r) == [8, 9] and r["held"] == 2


@pytest.mark.parametrize("bad", [
    '{"v":1,"db":"aaaa000000000001","safe":[1]}',
    '{"v":1,"db":"aaaa000000000001","safe":[1,"4"]}',
    '{"v":1,"db":"aaaa000000000001","safe":"1,4"}',
    '{"v":1,"db":"aaaa000000000001","safe":{"1":4,"2":5}}',
    '{"v":1,"db":"aaaa000000000001","boot":1,"safe":[1,4]}',
    '{"v":1,"safe":[1,4]}',
])
def test_a_safe_pair_that_is_not_one_changes_nothing(rig: Rig, bad: str) -> None:
    rig.do("anchor")
    sent_and_acked(rig, 6, A, safe=None)
    r = rig.do("ack", msg=bad)
    assert unsafe(r) == list(range(6)) and r["held"] == 6 and r["db"] == A
    assert any("ack: not understood" in line for line in rig.console)


def test_a_gateway_that_joins_or_leaves_a_region(rig: Rig) -> None:
    """The same database, its acknowledgements with `safe` and then without (the operator removed
    [region]) and back: the count follows what is safe by each rule."""
    rig.do("anchor")
    sent_and_acked(rig, 4, A, safe=None)
    r = sent_and_acked(rig, 3, A)                      # a lone gateway now: all it acknowledged is safe
    assert r["unsafe"] == [] and r["held"] == 0
    r = sent_and_acked(rig, 2, A, safe=(1, 6))         # a region's again
    assert unsafe(r) == [7, 8] and r["held"] == 2


def test_a_full_spool_counts_what_is_not_yet_safe_as_dropped(tmp_path: Path) -> None:
    """A region's gateway acknowledged everything but the region took only the first 20: the
    budget drops the oldest segments, and the acknowledged records not yet safe in them count."""
    out = mpy(tmp_path, """
    import console, safepos
    lines_seen = []
    console.warn = lambda m: lines_seen.append(m)
    spool.SEG_BYTES = 200
    sp = Spool(600)
    sp.region = True
    fill(sp, 1, range(40))
    _, lines, _ = sp.read(0, 100000, {}, 1, True)
    ack_all(sp, lines)                         # all acknowledged by the region's gateway
    safepos.advance(sp, 1, 19)                 # 0..19 in the region's store
    print("OUT", json.dumps([sp.held, sp.dropped]))
    fill(sp, 1, range(40, 100))
    left = []
    for n, size in sp.segs:
        left += [recline.seq_of(l) for _, _, l in recread.recs(sp, n, size, 0, 1)]
    print("OUT", json.dumps([sp.held, sp.dropped, sp.total <= 600, left]))
    print("OUT", json.dumps(lines_seen))
    sp.save(time.ticks_ms(), True)
    sp2 = Spool(600)
    print("OUT", json.dumps([sp2.held, sp2.dropped]))
    """)
    assert out[0] == [20, 0]
    held, dropped, within, left = out[1]
    assert within and left == list(range(left[0], 100)) and left[0] > 20, "the oldest went"
    assert dropped == left[0] - 20, "the 20 safe records go uncounted; the acknowledged ones after them count"
    assert held == len(left), "what is left, none of it safe"
    assert sum(int(m.split()[3]) for m in out[2] if m.startswith("spool: full, dropped")) == dropped
    assert all(" records not yet safe of boot 1: seq " in m for m in out[2] if m.startswith("spool: full"))
    assert out[3] == [held, dropped], "after a restart"


def test_a_count_unknown_at_the_start_is_counted_from_flash(tmp_path: Path) -> None:
    """A state without a usable count (a firmware before the safe position, or a power cut after a
    segment was dropped): the node counts the records from its safe position; records appended
    after the last save are added to the count saved."""
    out = mpy(tmp_path, """
    sp = Spool(100000)
    lines = fill(sp, 1, range(10))
    _, got, _ = sp.read(0, 100000, {}, 1, True)
    ack_all(sp, got[:4])
    sp.save(time.ticks_ms(), True)
    fill(sp, 1, range(10, 13))                 # after the save: a power cut before the next
    print("OUT", json.dumps([Spool(100000).held, sp.held]))
    with open("sp/state") as f:
        st = json.load(f)
    for k in ("safe", "held", "end", "reg"):
        del st[k]                              # as the firmware before the safe position wrote it
    with open("sp/state", "w") as f:
        f.write(json.dumps(st))
    print("OUT", json.dumps(Spool(100000).held))
    """)
    assert out == [[9, 9], 9]


# -- power cuts while the safe position moves ---------------------------------------------------------

CUTS = """
import sys, os, json
import simcore, simflash
img, fresh, cut = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
BLOCKS = 64
if fresh:
    simflash.create(img, BLOCKS)
dev = simflash.Flash(img, BLOCKS)
if fresh:
    os.VfsLfs2.mkfs(dev)
os.mount(os.VfsLfs2(dev), "/flash")
os.chdir("/flash")
import time, recline, recread, console, spool
spool.SEG_BYTES = 96    # records of a few bytes: several segments,
spool.KEY_EVERY = 4     # and key frames inside them
from spool import Spool
from outbox import Outbox

KEYS = ["pm25"]
def rec(boot, seq):
    return recline.record(boot, seq, 1795500000 + 60 * seq, 60 * seq, 60, [("pm25", (seq * 10 + 5, 10, 90, 60))], {}, {}, KEYS)

def on_flash(sp):
    out, safe, wrong = [], [], []
    for n, size in sp.segs:
        for p, _, l in recread.recs(sp, n, size, 0):
            out.append([recline.boot_of(l), recline.seq_of(l)])
            if p < sp.safe:
                safe.append(out[-1])
            if recline.to_json(l, KEYS, None) != recline.to_json(rec(l[0], l[1]), KEYS, None):
                wrong.append(out[-1])   # every record decodes to what was written
    return out, safe, wrong

if not fresh:    # after the cut: what the flash says
    sp = Spool(60000)
    allr, safe, wrong = on_flash(sp)
    print("R " + json.dumps({"all": allr, "safe": safe, "held": sp.held, "wrong": wrong}))
    raise SystemExit

sent = []
def publish(b, lines, now):
    sent.append([b, [recline.seq_of(l) for l in lines]])
    return len(lines)

sp = Spool(60000)
ob = Outbox(sp, 1, 1500, publish, 0)
sp.begin_boot(1, '{"v":1,"boot":1,', ["pm25"])
base = dev.writes
dev.cut_at = base + cut if cut else 0
now = 0
seq = 0
db = "aaaa000000000001"
acked = []        # [boot, seq] acknowledged under the database in use, in order
for step in range(8):
    if step == 5:     # the node moved to another region's gateway
        db = "bbbb000000000002"
        acked = []
        print("@db " + db)
    for _ in range(3):
        line = rec(1, seq)
        try:
            pos, end = sp.append(line)
        except OSError:   # the power went while it was written: not stored
            break
        if not dev.live:
            break
        print("@rec 1 %d" % seq)
        ob.add(pos, end, seq, line)
        seq += 1
    if not dev.live:
        break
    now += 2500
    ob.send(now, 1, True, 60)
    ob.send(now + 1, 1, True, 60)
    for b, ss in sent:
        # the pair lags: the region's store has what was acknowledged two batches ago
        pair = acked[-7] if len(acked) >= 7 else None
        msg = '{"v":1,"db":"%s","boot":%d,"seq":[[%d,%d]],"safe":%s}' % (
            db, b, ss[0], ss[-1], json.dumps(pair or []))
        print("@ack " + json.dumps([db, b, ss, pair]))
        ob.take_ack("t", msg)
        acked += [[b, s] for s in ss]
    del sent[:]
    ob.send(now + 2, 1, True, 60)
    if step % 3 == 2 and acked:
        pair = acked[-3]
        print("@ack " + json.dumps([db, None, [], pair]))
        ob.take_ack("t", '{"v":1,"db":"%s","safe":[%d,%d]}' % (db, pair[0], pair[1]))
        ob.send(now + 3, 1, True, 60)
    sp.save(now, True)
    if not dev.live:
        break
print("R " + json.dumps({"cut": not dev.live, "writes": dev.writes - base}))
"""


def _cuts_run(tmp: Path, cut: int, fresh: bool) -> tuple[dict[str, Any], list[str]]:
    prog = tmp / "cuts.py"
    prog.write_text(textwrap.dedent(CUTS))
    env = dict(os.environ, MICROPYPATH=":".join([str(SIM_MPY), str(FIRMWARE_LIB), ".frozen"]))
    p = subprocess.run([micropython_bin(), "-X", "heapsize=256K", str(prog), str(tmp / "flash.img"),
                        "1" if fresh else "0", str(cut)], capture_output=True, timeout=120, env=env)
    text = p.stdout.decode(errors="replace")
    assert p.returncode == 0, text[-3000:] + p.stderr.decode(errors="replace")
    lines = text.splitlines()
    res = [json.loads(line[2:]) for line in lines if line.startswith("R ")]
    assert res, text[-3000:]
    return res[-1], lines


def confirmed(lines: list[str]) -> set[tuple[int, int]]:
    """The records the gateways confirmed in the region before the cut: acknowledged under a
    database, then covered by a pair of the same database (payload.md's rule)."""
    acked: dict[str, set[tuple[int, int]]] = {}
    out: set[tuple[int, int]] = set()
    for line in lines:
        if not line.startswith("@ack "):
            continue
        db, boot, ss, pair = json.loads(line[5:])
        have = acked.setdefault(db, set())
        have |= {(boot, s) for s in ss}
        if pair:
            out |= {k for k in have if k <= tuple(pair)}
    return out


def test_a_power_cut_at_any_flash_program_loses_no_record_and_never_oversteps_the_pair(tmp_path: Path) -> None:
    """Records appended, acknowledged by a region's gateway with a lagging pair, standalone pairs, a
    move to another region's gateway, the state saved: the power cut at every flash program in
    turn. After each, every record the node had stored is on flash and reads back as it was
    written (binary records, each coded from the one before: several segments, key frames inside
    them), those before the safe position
    are all ones the gateway confirmed, and the count of held records is right."""
    (tmp_path / "whole").mkdir()
    whole, lines = _cuts_run(tmp_path / "whole", 0, True)
    total = whole["writes"]
    assert not whole["cut"] and total > 30
    cuts_with_safe = 0
    for cut in range(1, total + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        before, lines = _cuts_run(d, cut, True)
        assert before["cut"], f"the power did not go at program {cut} of {total}"
        after, _ = _cuts_run(d, 0, False)
        stored = {(1, int(line.split()[2])) for line in lines if line.startswith("@rec ")}
        on_flash = {tuple(r) for r in after["all"]}
        safe = {tuple(r) for r in after["safe"]}
        assert stored <= on_flash, f"cut {cut}: records lost: {sorted(stored - on_flash)}"
        assert not after["wrong"], f"cut {cut}: records that read back otherwise than written: {after['wrong']}"
        assert safe <= confirmed(lines), f"cut {cut}: safe but never confirmed: {sorted(safe - confirmed(lines))}"
        assert after["held"] == len(on_flash) - len(safe), f"cut {cut}: held {after['held']}"
        cuts_with_safe += bool(safe)
    assert cuts_with_safe > total // 2, "most cuts came after the safe position had moved"
