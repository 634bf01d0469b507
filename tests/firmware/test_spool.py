"""The flash spool (firmware/lib/spool.py) and its record lines (recline.py), under MicroPython.

A record must stay on flash until it is acknowledged, come back after a restart, leave only when
space is needed, and be counted when it leaves unacknowledged."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from meetkit_tools.dev.micropython import FIRMWARE_LIB, run_mpy

PRELUDE = """
import os, json, time
import spool, recline, recread, recv2
from spool import Spool
KEYS = ["pm25", "temp"]
def rec(seq, ts=1795500000, boot=1):
    parts = [("pm25", (seq * 10 + 5, 10, 90, 60)), ("temp", None)]
    return recline.record(boot, seq, ts and ts + 60 * seq, 60 * seq, 60, parts, {}, {}, KEYS)
def fill(sp, boot, seqs, ts=1795500000):
    return [sp.append(rec(s, ts, boot)) for s in seqs]
def ack_all(sp, lines):
    for p, e, l in lines:
        sp.ack(p, e)
def seqs(lines):
    return [recline.seq_of(l) for _, _, l in lines]
def drain(sp, boot_now=99):
    out = []
    pos = 0
    while True:
        boot, lines, pos = sp.read(pos, 400, {}, boot_now, True)
        if boot is None:
            return out
        assert all(recline.boot_of(l) == boot for _, _, l in lines)
        out += [(boot, recline.seq_of(l)) for _, _, l in lines]
"""


def _v2_records(packed: str, keys: list[str]) -> list[dict]:
    """The records of a short packed v2 batch [2, boot, "..."] as the gateway reads them (its own
    reader, gateway/packed.py), in v1's JSON form."""
    from meetkit_gateway import packed as gw
    from meetkit_tools.dev.spoolfile import recline   # for the codes of the keys (the envelope's k)
    _, boot, text = json.loads(packed)
    dec = {"pm1": 1, "pm25": 1, "pm10": 1, "cov": 3}
    out = []
    for r in gw.records(gw.decode_text(text), boot, tuple(recline._K.get(k, 6) for k in keys)):
        j: dict = {"seq": r.seq, "ts": r.ts, "up": r.up, "dur": r.dur}
        for k, v in zip(keys, r.vals):
            d = 10 ** dec.get(k, 2)
            j[k] = None if v is None else [v[0] / d, v[1] / d, v[2] / d, v[3]] if isinstance(v, tuple) else v / d
        if r.flags:
            j["f"] = {keys[i]: [f for b, f in enumerate(gw.FLAGS) if fl >> b & 1] for i, fl in r.flags.items()}
        if r.errs:
            j["err"] = r.errs
        out.append(j)
    return out


def mpy(tmp_path: Path, body: str) -> list:
    code = PRELUDE + textwrap.dedent(body)
    r = run_mpy(code, path=[FIRMWARE_LIB], cwd=tmp_path, heapsize="256K")
    out = r.stdout.decode() if isinstance(r.stdout, bytes) else r.stdout
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert r.returncode == 0, out + err
    return [json.loads(line[4:]) for line in out.splitlines() if line.startswith("OUT ")]


def test_records_survive_a_restart_until_acknowledged(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    sp = Spool(100000)
    pos = fill(sp, 1, range(10))
    boot, lines, nxt = sp.read(0, 10000, {}, 1, True)
    ack_all(sp, lines[:4])
    sp.save(time.ticks_ms(), True)
    sp = Spool(100000)                     # the node restarts
    print("OUT", json.dumps(drain(sp)))
    """)
    assert out == [[[1, s] for s in range(4, 10)]]


def test_out_of_order_acks_move_the_cursor_only_over_a_contiguous_run(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    sp = Spool(100000)
    fill(sp, 1, range(6))
    _, lines, _ = sp.read(0, 10000, {}, 1, True)
    ack_all(sp, lines[4:])      # the live records are acknowledged first
    print("OUT", json.dumps(drain(sp)))
    ack_all(sp, lines[:4])      # then the backlog
    print("OUT", json.dumps(drain(sp)))
    sp.save(time.ticks_ms(), True)
    print("OUT", json.dumps(drain(Spool(100000))))
    """)
    assert out == [[[1, s] for s in range(4)], [], []]


def test_batches_hold_one_boot_and_stay_under_the_size(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    sp = Spool(100000)
    fill(sp, 1, range(20))
    fill(sp, 2, range(5))
    pos = 0
    while True:
        boot, lines, pos = sp.read(pos, 40, {}, 99, True)
        if boot is None:
            break
        print("OUT", json.dumps([boot, seqs(lines), sum(e - p for p, e, _ in lines)]))
    """)
    assert [b for b, _, _ in out].count(1) >= 2
    assert all(size <= 40 for _, _, size in out), "counted in bytes on flash"
    assert [s for b, ss, _ in out if b == 1 for s in ss] == list(range(20))
    assert [s for b, ss, _ in out if b == 2 for s in ss] == list(range(5))


def test_full_spool_drops_oldest_counts_only_unacknowledged(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    spool.SEG_BYTES = 200
    sp = Spool(600)
    fill(sp, 1, range(12))                    # 12 records of a few bytes, in the first segment
    _, lines, _ = sp.read(0, 100000, {}, 1, True)
    ack_all(sp, lines)                          # all acknowledged: these may go without a count
    fill(sp, 1, range(12, 100))
    print("OUT", json.dumps([sp.dropped, sp.total <= 600]))
    left = drain(sp)
    print("OUT", json.dumps(left))
    sp.save(time.ticks_ms(), True)
    print("OUT", json.dumps(Spool(600).dropped))
    """)
    dropped, within = out[0]
    left = [s for _, s in out[1]]
    assert within
    assert left == list(range(left[0], 100)), "what is left is the newest, without gaps"
    assert dropped == left[0] - 12, "only never-acknowledged records count as dropped"
    assert out[2] == dropped, "the count survives a restart"


def test_replay_sends_acknowledged_records_again(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    sp = Spool(100000)
    fill(sp, 1, range(5))
    _, lines, _ = sp.read(0, 100000, {}, 1, True)
    ack_all(sp, lines)
    print("OUT", json.dumps(drain(sp)))
    sp.replay()
    print("OUT", json.dumps(drain(sp)))
    """)
    assert out == [[], [[1, s] for s in range(5)]]


def test_current_boot_waits_for_the_clock(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    sp = Spool(100000)
    fill(sp, 1, range(3))
    fill(sp, 2, range(3), ts=None)
    boot, lines, pos = sp.read(0, 100000, {}, 2, False)
    print("OUT", json.dumps([boot, seqs(lines)]))
    print("OUT", json.dumps(sp.read(pos, 100000, {}, 2, False)[0]))
    """)
    assert out == [[1, [0, 1, 2]], None]


def test_a_record_on_flash_is_the_payload_record(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    keys = ["pm1", "pm25", "temp", "LZeq", "cov"]
    parts = [("pm1", (31, 20, 50, 58)), ("pm25", None), ("temp", (-125, -130, -120, 12)), ("LZeq", 5521),
             ("cov", 998)]
    flags = {"pm25": ["missing"], "pm1": ["warmup", "rh_high"]}
    a = recline.record(3, 17, None, 1020, 60, parts, flags, {"pm": 2}, keys)
    b = recline.record(3, 18, 1795510800, 1080, 60, parts, {}, {}, keys)
    fa = recline.pack(a, None)
    fb = recline.pack(b, a)                 # its changes from the record before it
    a2 = recread.unpack(memoryview(fa)[1:], None)
    a2[8] = keys                            # a key frame's keys: the boot's file (spool.py)
    b2 = recread.unpack(memoryview(fb)[1:], a2)
    print("OUT", json.dumps([len(fa), fa[0] + 1, len(fb), fb[0] + 1]))
    print("OUT", recline.to_json(a2, keys, None))
    print("OUT", recline.to_json(a2, keys, 1795509780400))
    print("OUT", recline.to_json(b2, keys, None))
    buf = bytearray(2312)
    n, size = recv2.batch(buf, 3, [a2, b2], None, keys, None, 0)
    print("OUT", json.dumps([n, bytes(buf[:size]).decode()]))
    """)
    (la, fa, lb, fb), unknown, anchored, plain, (n, packed) = out
    assert la == fa and lb == fb, "a length byte, then the record"
    assert lb < la // 2, "a record like the one before it costs a few bytes"
    assert unknown == {"seq": 17, "ts": None, "up": 1020, "dur": 60, "pm1": [3.1, 2, 5, 58], "pm25": None,
                       "temp": [-1.25, -1.3, -1.2, 12], "LZeq": 55.21, "cov": 0.998,
                       "f": {"pm25": ["missing"], "pm1": ["warmup", "rh_high"]}, "err": {"pm": 2}}
    assert anchored["ts"] == 1795510800, "uptime 1020 s after an anchor 1795509780.4 rounds to the second"
    assert plain == {"seq": 18, "ts": 1795510800, "up": 1080, "dur": 60, "pm1": [3.1, 2, 5, 58], "pm25": None,
                     "temp": [-1.25, -1.3, -1.2, 12], "LZeq": 55.21, "cov": 0.998}
    # payload v2 (recv2) as MicroPython makes it, read by the gateway's own reader: the same records
    assert n == 2 and _v2_records(packed, ["pm1", "pm25", "temp", "LZeq", "cov"]) == [unknown, plain]


def test_unreadable_state_resends_everything(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    sp = Spool(100000)
    fill(sp, 1, range(3))
    _, lines, _ = sp.read(0, 100000, {}, 1, True)
    ack_all(sp, lines)
    sp.save(time.ticks_ms(), True)
    with open("sp/state", "w") as f:
        f.write("{garbage")
    print("OUT", json.dumps(drain(Spool(100000))))
    """)
    assert out == [[[1, 0], [1, 1], [1, 2]]]


def test_many_short_boots_share_segments_and_old_boot_files_go(tmp_path: Path) -> None:
    out = mpy(tmp_path, """
    spool.SEG_BYTES = 200
    sp = Spool(600)
    for boot in range(200):                   # a node on a flaky supply: one record per boot
        sp.begin_boot(boot, '{"v":1,"boot":%d,' % boot, ["pm25", "temp"])
        sp.append(rec(0, boot=boot))
    files = [e[0] for e in os.ilistdir("sp")]
    print("OUT", json.dumps([len(sp.segs), sum(1 for f in files if f[0] == "b"), sp.dropped]))
    print("OUT", json.dumps(drain(sp)))
    """)
    (segs, boot_files, dropped), left = out
    assert segs <= 4, "one RAM entry per segment, not per boot"
    kept_boots = [b for b, _ in left]
    assert kept_boots == list(range(kept_boots[0], 200)), "the newest boots, in order"
    assert dropped == kept_boots[0]
    assert boot_files <= len(kept_boots) + 1, "envelope files of boots no longer on flash are removed"


KEYS12 = ["pm1", "pm25", "pm10", "temp", "rh", "press", "LAeq", "LA10", "LA50", "LA90", "LZeq", "cov"]


def test_every_record_reads_back_as_written_from_any_position(tmp_path: Path) -> None:
    """Records are coded as changes from the one before, with a key frame every KEY_EVERY: a read
    that starts anywhere (a backlog, after a restart) gets exactly what was written, nulls, flags,
    errors, negative values and a clock that comes late included."""
    out = mpy(tmp_path, """
    import random
    random.seed(7)
    KEYS12 = %r
    SUM = ("pm1", "pm25", "pm10", "temp", "rh", "press", "LAeq")
    def value(k, i):
        if random.getrandbits(4) == 0:
            return None
        base = {"temp": -250, "press": 101300, "LAeq": 6500, "cov": 990}.get(k, 100) + random.getrandbits(6) * (i %% 5)
        if k in SUM:
            return (base, base - random.getrandbits(7), base + random.getrandbits(9), 55 + random.getrandbits(3))
        return base
    sp = Spool(1000000)
    sp.begin_boot(4, '{"v":1,"boot":4,', KEYS12)
    written = []
    made = []
    buf = bytearray(2312)
    for i in range(150):
        parts = [(k, value(k, i)) for k in KEYS12]
        flags = {"pm25": ["rh_high"], "LAeq": ["partial", "floor"]} if i %% 7 == 0 else {}
        errs = {"pm": i + 1, "climate": 1} if i %% 11 == 0 else {}
        r = recline.record(4, i + (i > 90), None if i < 40 else 1795500000 + 60 * i, 60 * i + i %% 2, 60, parts, flags, errs, KEYS12)
        p, e = sp.append(r)
        written.append(p)
        made.append(r)
        print("OUT", json.dumps(recline.to_json(r, KEYS12, None)))
        if len(made) == 15:   # payload v2's batch of these records, the clock never known
            n, size = recv2.batch(buf, 4, made, None, KEYS12, None, 0)
            print("OUT", json.dumps([n, bytes(buf[:size]).decode()]))
            made = []
    sp = Spool(1000000)        # a restart: nothing but the flash
    for start in (0, 1, 17, 31, 32, 33, 95, 149):
        pos = written[start]
        while True:
            boot, recs, pos = sp.read(pos, 2000, {}, 99, True)
            if boot is None:
                break
            for _, _, r in recs:
                print("OUT", json.dumps([start, recline.to_json(r, KEYS12, None)]))
    """ % KEYS12)
    written = [j for j in out[:160] if isinstance(j, str)]
    batches = [j for j in out[:160] if isinstance(j, list)]
    reads = out[160:]
    for start in (0, 1, 17, 31, 32, 33, 95, 149):
        got = [j for s, j in reads if s == start]
        assert got == written[start:], f"read from record {start}"
    # payload v2 as MicroPython makes it, read by the gateway's own reader: every record as v1 says it
    assert [n for n, _ in batches] == [15] * 10
    assert [r for _, packed in batches for r in _v2_records(packed, KEYS12)] == [json.loads(j) for j in written]


def test_an_update_rewrites_an_older_firmwares_text_spool_and_loses_nothing(tmp_path: Path) -> None:
    """A node updated from the firmware that spooled text lines: its backlog is rewritten as binary
    records at the first start (a torn try before it left a .new file), each record as it was; the
    older state's positions were in the text, so what follows its cursor's segment start is sent
    again (the gateway keeps a boot and seq once), nothing is lost."""
    out = mpy(tmp_path, """
    os.mkdir("sp")
    keys = ["pm25", "temp", "LAeq", "cov"]
    with open("sp/b3", "w") as f:
        f.write(json.dumps({"env": '{"v":1,"boot":3,', "keys": keys}))
    lines = ["3 %d %s %d 60|%d.5,1,9,60|-1.25,-1.3,-1.2,12||0.998|%s|%s" % (
        s, "-" if s < 2 else 1795500000 + 60 * s, 60 * s, s, "0wh,2m" if s == 1 else "", "pm=2" if s == 3 else "")
        for s in range(6)]
    lines[4] = lines[4].replace("||", "|55.2,48.1,67.3,60|", 1)
    with open("sp/s1", "w") as f:
        f.write("".join(l + "\\n" for l in lines[:4]))
    with open("sp/s2", "w") as f:
        f.write("".join(l + "\\n" for l in lines[4:]))
    with open("sp/s1.new", "w") as f:
        f.write("torn")
    cur = 1 << 16 | len(lines[0]) + 1      # the older firmware's cursor: the first record acknowledged
    with open("sp/state", "w") as f:
        f.write('{"cur":%d,"safe":%d,"held":5,"end":%d,"reg":0,"dropped":0,"db":"aaaa000000000001","acked":[]}' % (
            cur, cur, 2 << 16 | len(lines[4]) + len(lines[5]) + 2))
    sp = Spool(100000)
    for _ in range(2):
        pos = 0
        while True:
            boot, recs, pos = sp.read(pos, 2000, {}, 99, True)
            if boot is None:
                break
            for _, _, r in recs:
                print("OUT", recline.to_json(r, keys, None))
        sp.save(time.ticks_ms(), True)
        sp = Spool(100000)                   # and again: nothing more to convert
    print("OUT", json.dumps([sp.held, sorted(e[0] for e in os.ilistdir("sp") if e[0][0] == "s")]))
    """)
    *recs, (held, files) = out
    want = [{"seq": s, "ts": None if s < 2 else 1795500000 + 60 * s, "up": 60 * s, "dur": 60,
             "pm25": [s + 0.5, 1, 9, 60], "temp": [-1.25, -1.3, -1.2, 12],
             "LAeq": [55.2, 48.1, 67.3, 60] if s == 4 else None, "cov": 0.998} for s in range(6)]
    want[1]["f"] = {"pm25": ["warmup", "rh_high"], "LAeq": ["missing"]}
    want[3]["err"] = {"pm": 2}
    assert recs == want + want, "every record, as it was, read at both starts"
    assert held == 6 and files == ["s1", "s2", "state"], "the torn try is gone"


def test_a_record_waiting_in_the_outbox_is_its_key_frame_and_reads_as_the_record(tmp_path: Path) -> None:
    """The node keeps a record that waits to be sent as pack(rec, None): its JSON, v1 and v2, its
    boot and seq are the record's, keys given or not (the running boot's)."""
    out = mpy(tmp_path, """
    keys = ["pm25", "LAeq", "cov"]
    parts = [("pm25", (305, 200, 410, 58)), ("LAeq", (6543, 5810, 8022, 60)), ("cov", 1000)]
    r = recline.record(2, 40, 1795500000, 2400, 60, parts, {"LAeq": ["floor"]}, {"mic": 1}, keys)
    b = recline.pack(r, None)
    print("OUT", json.dumps([len(b), recline.boot_of(b), recline.seq_of(b)]))
    print("OUT", json.dumps([recline.to_json(r, keys, None), recline.to_json(b, keys, None)]))
    buf = bytearray(2312)
    print("OUT", json.dumps([bytes(buf[:recv2.batch(buf, 2, [x], None, keys, None, 0)[1]]).decode() for x in (r, b)]))
    """)
    (size, boot, seq), (j1, j2), (v1, v2) = out
    assert size < 60 and (boot, seq) == (2, 40)
    assert j1 == j2 and v1 == v2 and _v2_records(v1, ["pm25", "LAeq", "cov"]) == [json.loads(j1)]
