"""The node's outbox (firmware/lib/outbox.py) with its spool, under MicroPython, on a littlefs flash
image: what goes out when, and what the gateway's acknowledgements do (docs/reliability.md).

A rig program runs the real Outbox and Spool on a simflash image, with the simulator's `time`
(the ESP32's ticks, wrapping at 2**30 thirty seconds after the start, moved by the test) and a link
that records the batches handed to it. The test plays the gateway: its acknowledgements are the
gateway's own (meetkit_gateway.acks). What is judged is what a user would see: which records go out
and when, and which ones the flash still holds as unacknowledged (what the node would send again
after a restart)."""

from __future__ import annotations

import json
import os
import random
import selectors
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from meetkit_gateway.acks import Ack
from meetkit_tools.sim.runner import micropython_bin
from meetkit_tools.dev.micropython import FIRMWARE_LIB, SIM_MPY

NODE = "ob-001"
DB = "3f9c0a1b2c3d4e5f"
ROOM = 1500          # as the node: 1800 bytes less its envelope
DEADLINE_S = 120     # for one command of the rig: generous, the slowest takes well under a second

RIG = """
import sys, os, json
import simcore, simflash
img, fresh, boot = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3])
BLOCKS = 128         # 512 KiB
if fresh:
    simflash.create(img, BLOCKS)
dev = simflash.Flash(img, BLOCKS)
if fresh:
    os.VfsLfs2.mkfs(dev)
os.mount(os.VfsLfs2(dev), "/flash")
os.chdir("/flash")
import time, recline, recread, outbox
from spool import Spool
from outbox import Outbox

link = {"up": True, "cap": 1000, "session": 1, "timed": False, "inject": []}
sent = []
TOPIC = "meetkit/ob-001/ack"


def publish(b, lines, now):
    if not link["up"]:
        return 0
    n = min(len(lines), link["cap"])
    sent.append([b, [[recline.boot_of(l), recline.seq_of(l)] for l in lines[:n]]])
    for msg in link["inject"]:    # as umqtt: what arrives while it waits for the PUBACK
        ob.take_ack(TOPIC, msg.encode())
    link["inject"] = []
    return n


def loop(ms):
    for _ in range(ms // 20):
        simcore.advance(20000)
        now = time.ticks_ms()
        if link["up"]:
            ob.send(now, link["session"], link["timed"], 60)
        if sp.dirty:
            sp.save(now)


KEYS = ["pm25", "temp"]


def rec(seq):
    parts = [("pm25", (seq * 10 + 5, 10, 90, 60)), ("temp", (1250, 1240, 1260, 12))]
    return recline.record(boot, seq, None, 60 * seq, 60, parts, {}, {}, KEYS)


sp = Spool(int(sys.argv[4]))
ob = Outbox(sp, boot, int(sys.argv[5]), publish, time.ticks_ms())
seq = 0


def unacked():
    out = []
    pos = 0
    while True:
        b, lines, pos = sp.read(pos, 100000, {}, -1, True)
        if b is None:
            return out
        out += [[recline.boot_of(l), recline.seq_of(l)] for _, _, l in lines]


def unsafe():    # the records from the spool's safe position on: what a new database gets again
    out = []
    for n, size in sp.segs:
        if (n << 16 | size) <= sp.safe:
            continue
        for _, _, l in recread.recs(sp, n, size, sp.safe & 0xFFFF if sp.safe >> 16 == n else 0, 1):
            out.append([recline.boot_of(l), recline.seq_of(l)])
    return out


print("R {}")
for cmd in sys.stdin:
    c = json.loads(cmd)
    op = c["op"]
    r = {}
    if op == "add":
        for _ in range(c["n"]):
            line = rec(seq)
            if seq == 0:
                sp.begin_boot(boot, '{"v":1,"boot":%d,' % boot, ["pm25", "temp"])
            pos, end = sp.append(line)
            ob.add(pos, end, seq, line)
            seq += 1
    elif op == "anchor":
        link["timed"] = True
    elif op == "link":
        link.update(c["set"])
    elif op == "run":     # the node's loop: a pass every 20 ms
        loop(c["ms"])
    elif op == "ack":     # it arrives, and the next pass takes it
        ob.take_ack(TOPIC, c["msg"].encode())
        loop(20)
    elif op == "cut":     # the power goes at the flash's n-th program from now
        dev.cut_at = dev.writes + c["after"]
    elif op == "exit":    # the power goes: nothing more reaches the flash
        print("R {}")
        break
    r["unacked"] = unacked()
    r["waited"] = ob.waited(time.ticks_ms())
    r["awaiting"] = r["waited"] >= 0
    r["writes"] = dev.writes
    r["db"] = sp.db
    r["unsafe"] = unsafe()
    r["held"] = sp.held
    r["sent"] = sent
    print("R " + json.dumps(r))
    del sent[:]
"""


class Rig:
    """One boot of the node's outbox on a flash image; `reboot()` is the next boot on the same image."""

    def __init__(self, tmp: Path, boot: int = 1, budget: int = 200_000) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.img = tmp / "flash.img"
        self.prog = tmp / "rig.py"
        self.prog.write_text(textwrap.dedent(RIG))
        self.budget = budget
        self.console: list[str] = []
        self.sent: list[list[Any]] = []   # batches sent since the last run() returned
        self.proc: subprocess.Popen[bytes] | None = None
        self._start(boot, fresh=True)

    def _start(self, boot: int, fresh: bool) -> None:
        self.boot = boot
        env = dict(os.environ, MICROPYPATH=":".join([str(SIM_MPY), str(FIRMWARE_LIB), ".frozen"]))
        self.proc = subprocess.Popen(
            [micropython_bin(), "-X", "heapsize=256K", str(self.prog), str(self.img), "1" if fresh else "0",
             str(boot), str(self.budget), str(ROOM)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._buf = b""
        self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE_S
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    text = line.decode()
                    if text.startswith("R "):
                        return json.loads(text[2:])
                    self.console.append(text)
                left = deadline - time.monotonic()
                chunk = os.read(fd, 65536) if left > 0 and sel.select(left) else b""
                if not chunk:
                    self.proc.kill()
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError("the rig stopped answering:\n" + "\n".join(self.console[-20:]) + err)
                self._buf += chunk

    def do(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(dict(op=op, **kw)) + "\n").encode())
        self.proc.stdin.flush()
        r = self._reply()
        self.sent += r.get("sent", [])
        return r

    # -- what the node does ------------------------------------------------------------------------
    def add(self, n: int) -> dict[str, Any]:
        return self.do("add", n=n)

    def run(self, ms: int) -> list[list[int]]:
        """The loop for `ms`; the batches sent meanwhile (and since the last run), each as the seqs
        of its records."""
        return [s for _, s in self.run_batches(ms)]

    def run_batches(self, ms: int) -> list[tuple[int, list[int]]]:
        """As run(), with each batch's boot."""
        self.last = self.do("run", ms=ms)
        sent, self.sent = self.sent, []
        for boot, recs in sent:
            assert all(b == boot for b, _ in recs), f"a batch mixes boots: {boot} {recs}"
        return [(boot, [s for _, s in recs]) for boot, recs in sent]

    def link(self, **kw: Any) -> None:
        self.do("link", set=kw)

    def ack(self, seqs: list[int], boot: int | None = None, db: str = DB, **safe: Any) -> dict[str, Any]:
        return self.do("ack", msg=self.ack_msg(seqs, boot, db, **safe))

    def ack_msg(self, seqs: list[int], boot: int | None = None, db: str = DB, **safe: Any) -> str:
        """The gateway's acknowledgement (meetkit_gateway.acks) of `seqs` of `boot` (this one);
        safe=(boot, seq) or safe=None: a region's gateway's, with its safe pair (None: `[]`)."""
        return Ack(NODE, self.boot if boot is None else boot, tuple(seqs)).payload(db, **safe).decode()

    def state(self) -> dict[str, Any]:
        return self.do("state")

    def unacked(self) -> list[int]:
        """The seqs the flash holds unacknowledged, of this boot."""
        return [s for b, s in self.state()["unacked"] if b == self.boot]

    def power_off(self) -> None:
        """The power goes: nothing not yet on flash survives."""
        self.do("exit")
        self.stop()

    def reboot(self) -> None:
        self.power_off()
        self._start(self.boot + 1, fresh=False)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=DEADLINE_S)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                    if f:
                        f.close()
            self.proc = None


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.kill()


def seqs(batches: list[list[int]]) -> list[int]:
    return [s for b in batches for s in b]


# -- new records and acknowledgements ----------------------------------------------------------------

def test_a_new_record_goes_out_once_the_clock_is_known(rig: Rig) -> None:
    rig.add(1)
    assert rig.run(5000) == [], "a record without its time waits for the clock"
    rig.do("anchor")
    assert rig.run(100) == [[0]]
    assert rig.run(60_000) == [], "and goes out once while it waits for its acknowledgement"
    rig.ack([0])
    assert rig.unacked() == []


def test_acknowledgements_in_any_order_acknowledge_exactly_their_records(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(cap=2)              # small batches: four in flight
    rig.add(8)
    sent = rig.run(200)
    assert sent == [[0, 1], [2, 3], [4, 5], [6, 7]]
    order = [[4, 5], [0, 1], [6, 7], [2, 3]]
    held: set[int] = set()
    for batch in order:
        held |= set(batch)
        r = rig.ack(batch)
        assert sorted(s for _, s in r["unacked"]) == sorted(set(range(8)) - held)
    assert not rig.state()["awaiting"]
    # the acknowledgements are on flash within 30 s: a restart sends nothing of them again
    rig.run(31_000)
    rig.reboot()
    assert rig.state()["unacked"] == []


def test_one_acknowledgement_may_cover_several_batches_and_split_one(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(cap=3)
    rig.add(8)
    assert rig.run(200) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    rig.ack([1, 2, 3, 4])        # the gateway's ranges need not follow the batches
    assert rig.unacked() == [0, 5, 6, 7]
    assert rig.run(115_000) == [], "what is still in flight is not sent again before its wait is up"
    rig.ack([0, 5, 6, 7])
    assert rig.unacked() == []
    assert not rig.state()["awaiting"]


def test_an_acknowledgement_of_records_not_in_flight_changes_nothing(rig: Rig) -> None:
    rig.do("anchor")
    rig.add(4)
    assert rig.run(200) == [[0, 1, 2, 3]]
    rig.add(2)                   # records 4 and 5 are on flash, not sent yet (the link is slow)
    rig.ack([4, 5, 6, 7, 100])   # seqs never sent, or of a record not made yet
    rig.ack([0, 1, 2, 3], boot=rig.boot - 1)   # the same seqs of another boot (a late one)
    rig.ack([0, 1, 2, 3], boot=rig.boot + 7)
    for bad in ('{"v":1,"db":"x","boot":1,"seq":[5.5]}', '{"v":1,"db":"x","boot":1,"seq":"ab"}',
                '{"v":1,"db":"x","boot":1,"seq":[[0,"3"]]}', '{"v":1,"db":7,"boot":1,"seq":[[0,3]]}',
                '[1,2]', '{"v":1,', '{"v":1,"boot":1,"seq":[[0,3]]}'):
        rig.do("ack", msg=bad)
    st = rig.state()
    assert [s for _, s in st["unacked"]] == [0, 1, 2, 3, 4, 5]
    assert st["db"] == DB, "a message not understood names no database (another would resend everything)"
    assert sum("ack: not understood" in line for line in rig.console) == 7
    assert rig.run(200) == [[4, 5]], "the batch in flight still waits for its own"
    rig.ack([0, 1, 2, 3])
    rig.ack([0, 1, 2, 3])        # again: the gateway acknowledges a duplicate too
    rig.ack([4, 5])
    assert rig.unacked() == []
    rig.add(2)
    assert rig.run(200) == [[6, 7]], "and after all that, new records go out as before"
    rig.ack([6, 7])
    assert rig.unacked() == []


def test_acknowledgements_that_arrive_while_a_batch_is_published(rig: Rig) -> None:
    """umqtt hands over what arrives while it waits for the broker's PUBACK: an acknowledgement
    can come in the middle of a publish, even that of its own batch."""
    rig.do("anchor")
    rig.link(cap=2)
    rig.add(2)
    rig.link(inject=[rig.ack_msg([0, 1])])     # the batch's own, before publish() returns
    assert rig.run(200) == [[0, 1]]
    assert rig.state()["unacked"] == []
    rig.add(2)
    rig.add(2)
    rig.link(inject=[rig.ack_msg([2, 3])])
    assert rig.run(200) == [[2, 3], [4, 5]]
    rig.ack([4, 5])
    assert rig.unacked() == []
    assert rig.run(125_000) == [], "nothing is left in flight to be sent again"
    # a new database, named while a batch is published: the whole spool goes again
    rig.link(up=False)
    rig.add(12)
    rig.link(up=True, inject=[rig.ack_msg([10, 11], db="bbbb")])
    got = []
    for _ in range(30):
        for s in rig.run(2000):
            got += s
            rig.ack(s, db="bbbb")
    assert sorted(set(got)) == list(range(18)) and rig.unacked() == []


def test_a_late_acknowledgement_after_the_resend_counts_once(rig: Rig) -> None:
    rig.do("anchor")
    rig.add(3)
    assert rig.run(200) == [[0, 1, 2]]
    assert rig.run(125_000) == [[0, 1, 2]], "no acknowledgement within 120 s: sent again"
    rig.ack([0, 1, 2])           # the first one's acknowledgement, late
    assert rig.unacked() == []
    rig.ack([0, 1, 2])           # the second one's
    assert rig.unacked() == []
    assert not rig.state()["awaiting"]
    rig.add(1)
    assert rig.run(200) == [[3]]
    rig.ack([3])
    rig.run(31_000)
    rig.reboot()
    assert rig.state()["unacked"] == []


# -- what goes out when ------------------------------------------------------------------------------

def test_an_unacknowledged_batch_goes_again_after_120_s_only(rig: Rig) -> None:
    rig.do("anchor")
    rig.add(2)
    assert rig.run(200) == [[0, 1]]
    assert rig.run(100_000) == []
    assert rig.last["waited"] >= 100_000
    again = rig.run(25_000)
    assert again == [[0, 1]], "resent once the wait is up (the ticks wrapped meanwhile)"
    assert rig.last["waited"] < 25_000
    assert rig.run(100_000) == []
    rig.ack([0, 1])
    assert rig.unacked() == []


def test_at_most_four_batches_wait_for_their_acknowledgement(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(cap=1)
    rig.add(8)
    assert rig.run(10_000) == [[0], [1], [2], [3]]
    rig.ack([1])
    assert rig.run(10_000) == [[4]], "one acknowledged: one more goes"
    rig.ack([0, 2, 3, 4])
    assert rig.run(10_000) == [[5], [6], [7]]


def test_new_records_go_first_and_the_backlog_drains_oldest_first_one_batch_per_2_s(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(up=False)
    rig.add(20)                  # an outage: 8 wait as new, 12 are the backlog
    rig.run(5000)
    rig.link(up=True, cap=2)     # back at a moment the backlog may send too
    first = rig.run(200)
    assert first == [[12, 13], [14, 15], [16, 17], [18, 19]], "the newest first, as many as may wait"
    rig.ack([12, 13, 14, 15, 16, 17, 18, 19])
    backlog = []
    t = []
    for i in range(12):
        b = rig.run(1000)
        backlog += b
        t += [i] * len(b)
        if b:
            rig.ack(b[0])
    assert backlog == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]], "oldest first"
    assert all(b - a == 2 for a, b in zip(t, t[1:])), f"one batch per 2 s: at seconds {t}"
    assert rig.unacked() == []


def test_new_records_overtake_the_backlog(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(up=False)
    rig.add(12)
    rig.link(up=True, cap=2)
    assert rig.run(200) == [[4, 5], [6, 7], [8, 9], [10, 11]]
    rig.ack([4, 5, 6, 7, 8, 9, 10, 11])
    assert rig.run(2000) == [[0, 1]]
    rig.add(1)                   # a new record, while the backlog still has 2 and 3
    assert rig.run(100) == [[12]], "at once, not after the backlog"
    rig.ack([0, 1, 12])
    assert rig.run(2000) == [[2, 3]]


def test_new_records_left_to_the_backlog_before_the_clock_is_known_still_go(rig: Rig) -> None:
    rig.add(3)                   # no NTP yet: this boot's records wait as new
    assert rig.run(4000) == []   # the backlog reader passes over them meanwhile
    rig.add(7)                   # 10: the oldest two are left to the backlog
    rig.do("anchor")
    assert seqs(rig.run(200)) == list(range(2, 10))
    rig.ack(list(range(2, 10)))
    assert rig.run(2000) == [[0, 1]]
    rig.ack([0, 1])
    assert rig.unacked() == []


def test_records_of_earlier_boots_go_out_with_their_boot(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(up=False)
    rig.add(3)
    rig.reboot()                 # boot 2: boot 1's records are the backlog
    rig.do("anchor")
    rig.add(2)
    rig.link(cap=100)
    batches = rig.run_batches(200) + rig.run_batches(2000) + rig.run_batches(2000)
    assert batches == [(2, [0, 1]), (1, [0, 1, 2])]
    rig.ack([0, 1, 2], boot=1)
    assert rig.state()["unacked"] == [[2, 0], [2, 1]]
    rig.ack([0, 1])
    assert rig.state()["unacked"] == []


def test_a_batch_cut_short_leaves_the_rest_for_the_next_batch(rig: Rig) -> None:
    """The node's buffer may hold fewer records than the outbox chose: the others go next, at once,
    not after a resend."""
    rig.do("anchor")
    rig.link(up=False)
    rig.add(30)                  # 22 in the backlog
    rig.reboot()
    rig.do("anchor")
    rig.link(cap=3)              # every batch holds only 3 of those offered
    got: list[int] = []
    for _ in range(40):
        b = rig.run_batches(2000)
        for boot, s in b:
            assert boot == 1
            got += s
            rig.ack(s, boot=1)
    assert got == list(range(30)), "each record once, in order, none left behind"
    assert rig.state()["unacked"] == []


# -- sessions and the gateway's database ---------------------------------------------------------------

def test_a_lost_session_sends_the_batches_in_flight_again(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(cap=2)
    rig.add(8)
    assert rig.run(200) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    rig.ack([2, 3])
    rig.link(up=False)           # the link goes, with three batches in flight
    rig.add(2)
    rig.run(30_000)
    rig.link(up=True, session=2)  # a new (clean) session: their acknowledgements are gone
    again = rig.run(200) + rig.run(8000)
    assert sorted(seqs(again)) == [0, 1, 4, 5, 6, 7, 8, 9], "every record in flight is sent again, once"
    assert len(seqs(again)) == len(set(seqs(again)))
    rig.ack([0, 1])              # an acknowledgement from the old session, delivered late
    rig.ack([4, 5, 6, 7])
    rig.ack([0, 1])
    rig.ack([8, 9])
    assert rig.unacked() == []
    assert not rig.state()["awaiting"]
    rig.run(31_000)
    rig.reboot()
    assert rig.state()["unacked"] == []


def test_a_new_database_id_sends_the_whole_spool_again(rig: Rig) -> None:
    rig.do("anchor")
    rig.add(5)
    assert rig.run(200) == [[0, 1, 2, 3, 4]]
    r = rig.ack([0, 1, 2, 3, 4], db="aaaa")
    assert r["unacked"] == [] and r["db"] == "aaaa", "the first id ever seen is no change"
    rig.add(2)
    assert rig.run(200) == [[5, 6]]
    r = rig.ack([5, 6], db="bbbb")   # the gateway started a fresh database
    assert r["db"] == "bbbb"
    assert [s for _, s in r["unacked"]] == list(range(7)), "everything on flash is unacknowledged again"
    assert any("gateway database changed (aaaa -> bbbb)" in line for line in rig.console)
    again = []
    for _ in range(10):
        b = rig.run(2000)
        again += b
        for s in b:
            rig.ack(s, db="bbbb")
    assert sorted(seqs(again)) == list(range(7)), "all of it goes out again, each record once"
    assert rig.unacked() == []
    rig.run(31_000)
    # the id is on flash at once: after a restart the same id is no change, and another is
    rig.reboot()
    rig.do("anchor")
    rig.add(1)
    assert rig.run(200) == [[0]]
    assert rig.ack([0], db="bbbb")["unacked"] == []
    rig.add(1)
    assert rig.run(200) == [[1]]
    r = rig.ack([1], db="cccc")
    assert r["unacked"] == [[1, s] for s in range(7)] + [[2, 0], [2, 1]], "every boot's records, again"


# -- the acknowledgement state on flash ----------------------------------------------------------------

@pytest.mark.parametrize("wait_ms, again", [(25_000, [0, 1, 2, 3]), (31_000, [])])
def test_acknowledgements_reach_the_flash_within_30_s(tmp_path: Path, wait_ms: int, again: list[int]) -> None:
    rig = Rig(tmp_path)
    try:
        rig.do("anchor")
        rig.add(4)
        assert rig.run(200) == [[0, 1, 2, 3]]
        rig.ack([0, 1, 2, 3])    # the gateway's id is written at once, the acknowledged records not
        rig.run(wait_ms)
        rig.power_off()
        rig._start(2, fresh=False)
        assert [s for b, s in rig.state()["unacked"] if b == 1] == again
    finally:
        rig.kill()


def test_the_ack_state_is_written_at_most_every_30_s(rig: Rig) -> None:
    rig.do("anchor")
    rig.link(cap=1)
    rig.add(70)
    sent = rig.run(200)
    writes = [rig.ack(sent[0])["writes"]]
    acks = 0
    for _ in range(65):          # every batch acknowledged within a second, for 65 s
        for b in rig.run(1000):
            writes.append(rig.ack(b)["writes"])
            acks += 1
    states = sum(1 for a, b in zip(writes, writes[1:]) if b != a)
    assert acks >= 30 and 2 <= states <= 3, f"the state written {states} times in 65 s, {acks} acknowledgements"


def _state_write(tmp: Path, cut_after: int | None, db: str) -> tuple[dict[str, Any], list[str]]:
    """Records 0..7 of boot 1, 0..3 acknowledged by database aaaa and on flash; then 4..7
    acknowledged by `db`: aaaa (the state written 30 s after the last), or another (the whole spool
    unacknowledged again, written at once) - with the power cut at the `cut_after`-th flash
    program from then. Returns what boot 2 finds, and the console."""
    rig = Rig(tmp)
    try:
        rig.do("anchor")
        rig.link(cap=4)
        rig.add(8)
        assert rig.run(200) == [[0, 1, 2, 3], [4, 5, 6, 7]]
        rig.ack([0, 1, 2, 3], db="aaaa")
        rig.run(31_000)
        if cut_after is not None:
            rig.do("cut", after=cut_after)
        rig.ack([4, 5, 6, 7], db=db)
        rig.run(31_000)
        rig.power_off()
        rig._start(2, fresh=False)
        return rig.state(), rig.console
    finally:
        rig.kill()


@pytest.mark.parametrize("db, new", [("aaaa", ("aaaa", [])), ("bbbb", ("bbbb", list(range(8))))],
                         ids=["same database", "another database"])
def test_a_power_cut_while_the_ack_state_is_written_loses_nothing(tmp_path: Path, db: str,
                                                                  new: tuple[str, list[int]]) -> None:
    old = ("aaaa", [4, 5, 6, 7])
    st, _ = _state_write(tmp_path / "whole", None, db)
    assert (st["db"], [s for _, s in st["unacked"]]) == new
    outcomes = set()
    cut = 1
    while True:
        st, console = _state_write(tmp_path / f"cut{cut}", cut, db)
        got = (st["db"], [s for _, s in st["unacked"]])
        # the state before or after, never a mix: no record lost (a new database never left
        # without records 0..3), none acknowledged that the gateway did not acknowledge
        assert got in (old, new), (cut, got)
        outcomes.add(got == new)
        if not any("state not saved" in line for line in console):
            break                # the cut came after the state was written: every program tried
        cut += 1
        assert cut < 100
    assert cut > 1 and outcomes == {False, True}


def test_the_compact_acknowledgement_of_a_v2_batch_and_a_request_for_the_envelope(rig: Rig) -> None:
    """A v2 node's acknowledgement names a single seq as that seq (meetkit_gateway.acks, `compact`);
    `env` says the gateway lacks the boot's envelope: what is in flight of that boot goes again, soon,
    with it (docs/payload.md, "Payload v2")."""
    rig.do("anchor")
    rig.add(4)
    assert rig.run(200) == [[0, 1, 2, 3]]
    rig.do("ack", msg=Ack(NODE, rig.boot, (0, 2, 3), compact=True).payload(DB).decode())
    assert rig.unacked() == [1]
    rig.do("ack", msg=Ack(NODE, rig.boot, (), env=True, compact=True).payload(DB).decode())
    assert rig.run(5_000) == [[1]], "sent again within the backlog's gap, not after the acknowledgement's wait"
    assert not any("not understood" in line for line in rig.console)
