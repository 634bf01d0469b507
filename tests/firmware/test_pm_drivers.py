"""firmware/lib/plantower.py and sds011.py under micropython, fed byte streams through a fake
machine.UART: valid frames, corrupt checksums, truncated frames, wrong lengths, garbage with fake
start bytes, command replies, and every stream split into chunks of many sizes."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field

from meetkit_tools.dev.micropython import run_mpy

# machine.UART as a driver sees it, and a machine.Pin output.
FAKE = r"""
import sys, json

class FakeUART:
    def __init__(self):
        self.rx = bytearray()
        self.pos = 0
        self.tx = bytearray()

    def feed(self, data):
        self.rx.extend(data)

    def any(self):
        return len(self.rx) - self.pos

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        n = min(n, len(self.rx) - self.pos)
        if n <= 0:
            return None  # machine.UART: None when the timeout passes with nothing read
        for i in range(n):
            buf[i] = self.rx[self.pos + i]
        self.pos += n
        return n

    def read(self, nbytes=None):
        n = self.any() if nbytes is None else min(nbytes, self.any())
        if n <= 0:
            return None
        b = bytes(self.rx[self.pos:self.pos + n])
        self.pos += n
        return b

    def write(self, buf):
        self.tx.extend(buf)
        return len(buf)

class FakePin:
    def __init__(self):
        self.log = []

    def value(self, v=None):
        if v is None:
            return self.log[-1] if self.log else 0
        self.log.append(v)
"""

RUN_STREAMS = FAKE + r"""
from plantower import PMS5003, PMS7003
from sds011 import SDS011
KINDS = {'pms5003': PMS5003, 'pms7003': PMS7003, 'sds011': SDS011}

def values(dev):
    if isinstance(dev, SDS011):
        return [dev.pm25, dev.pm10]
    return [dev.pm1_cf1, dev.pm25_cf1, dev.pm10_cf1, dev.pm1, dev.pm25, dev.pm10] + list(dev.counts)

while True:
    line = sys.stdin.readline()
    if not line:
        break
    case = json.loads(line)
    u = FakeUART()
    dev = KINDS[case['kind']](u)
    idle = dev.read()
    out = []
    for chunk in case['chunks']:
        u.feed(bytes.fromhex(chunk))
        while dev.read():
            out.append(values(dev))
    print(json.dumps({'idle': idle, 'vals': out, 'frames': dev.frames, 'cs': dev.checksum_errors,
                      'skipped': dev.bytes_skipped, 'replies': getattr(dev, 'replies', 0),
                      'left': u.any()}))
"""


@dataclass
class Seg:
    kind: str  # good | reply | bad (starts like a frame, is not one) | junk (no frame start)
    data: bytes
    values: list = field(default_factory=list)
    tail: bool = False  # a truncated frame ending the stream: the driver holds it


class PMS:
    name = "pms5003"
    flen = 32
    starts = (b"\x42\x4d\x00\x1c",)  # what the driver must take for the start of a frame

    @staticmethod
    def frame(words: list[int], length: int = 28) -> bytes:
        body = b"\x42\x4d" + struct.pack(">H", length) + struct.pack(">13H", *words)
        return body + struct.pack(">H", sum(body) & 0xFFFF)

    def good(self, rng: random.Random) -> Seg:
        # Low PM values, so 0x42 (66) and 0x4D (77) turn up inside valid frames too.
        pm = [rng.choice([66, 77, 0x424D, rng.randint(0, 300), rng.randint(0, 2000)])
              for _ in range(6)]
        words = pm + [rng.randint(0, 65535) for _ in range(7)]
        return Seg("good", self.frame(words), words[:12])

    def corrupt(self, rng: random.Random) -> Seg:
        f = bytearray(self.good(rng).data)
        f[rng.randrange(4, 32)] ^= 1 << rng.randrange(8)  # data or checksum: the sum must differ
        return Seg("bad", bytes(f))

    def wrong_length(self, rng: random.Random) -> Seg:
        words = [rng.randint(0, 65535) for _ in range(13)]
        return Seg("junk", self.frame(words, rng.choice([0, 4, 20, 27, 29, 0x011C, 0x1C00])))

    def reply(self, rng: random.Random) -> Seg:
        cmd, data = rng.choice([(0xE1, 0), (0xE1, 1), (0xE4, 0), (0xE4, 1)])
        body = bytes([0x42, 0x4D, 0x00, 0x04, cmd, data])  # the sensor's answer to a command
        return Seg("junk", body + struct.pack(">H", sum(body)))

    def fake_start(self, rng: random.Random) -> Seg:
        k = rng.choice([1, 2, 3, 4, 4, 4])
        d = b"\x42\x4d\x00\x1c"[:k] + bytes(rng.choice(GARBAGE[self.name]) for _ in range(rng.randint(0, 20)))
        return Seg("bad" if k == 4 else "junk", d)

    def judge(self, window: bytes) -> str:
        """What a complete frame-sized window at a frame start must come to."""
        return "frame" if sum(window[:30]) & 0xFFFF == (window[30] << 8) | window[31] else "count"


class SDS:
    name = "sds011"
    flen = 10
    starts = (b"\xaa\xc0", b"\xaa\xc5")

    @staticmethod
    def frame(cmd: int, data: bytes, tail: int = 0xAB) -> bytes:
        return bytes([0xAA, cmd]) + data + bytes([sum(data) & 0xFF, tail])

    def good(self, rng: random.Random) -> Seg:
        pm25 = rng.choice([0, 0xAA, 0xABAA, rng.randint(0, 300), rng.randint(0, 9999)])
        pm10 = rng.choice([0xC0AA, rng.randint(pm25 % 10000, 9999)])
        data = struct.pack("<HH", pm25, pm10) + bytes([rng.randrange(256), rng.randrange(256)])
        return Seg("good", self.frame(0xC0, data), [pm25 / 10, pm10 / 10])

    def corrupt(self, rng: random.Random) -> Seg:
        f = bytearray(self.good(rng).data)
        f[rng.randrange(2, 9)] ^= 1 << rng.randrange(8)
        return Seg("bad", bytes(f))

    def wrong_length(self, rng: random.Random) -> Seg:
        """No length field here: a frame whose tail is not 0xAB, or whose id is unknown."""
        f = bytearray(self.good(rng).data)
        if rng.random() < 0.5:
            f[9] = rng.choice([0x00, 0xAC, 0xBA, 0xFF])
            return Seg("bad", bytes(f))
        f[1] = rng.choice([0xC1, 0xB4, 0x00, 0xAB])
        return Seg("junk", bytes(f))

    def reply(self, rng: random.Random) -> Seg:
        data = bytes([0x06, 0x01, rng.randint(0, 1), 0x00, rng.randrange(256), rng.randrange(256)])
        return Seg("reply", self.frame(0xC5, data))

    def fake_start(self, rng: random.Random) -> Seg:
        k = rng.choice([1, 2, 2])
        d = b"\xaa\xc0"[:k] + bytes(rng.choice(GARBAGE[self.name]) for _ in range(rng.randint(0, 8)))
        return Seg("bad" if k == 2 else "junk", d)

    def judge(self, window: bytes) -> str:
        if window[9] != 0xAB:
            return "skip"
        return "frame" if sum(window[2:8]) & 0xFF == window[8] else "count"


GARBAGE = {"pms5003": [b for b in range(256) if b != 0x42], "sds011": [b for b in range(256) if b != 0xAA]}


def truncated(proto, rng: random.Random, k: int | None = None, tail: bool = False) -> Seg:
    k = k if k is not None else rng.randrange(1, proto.flen)
    d = proto.good(rng).data[:k]
    return Seg("bad" if any(d.startswith(s) for s in proto.starts) else "junk", d, tail=tail)


def garbage(proto, rng: random.Random) -> Seg:
    return Seg("junk", bytes(rng.choice(GARBAGE[proto.name]) for _ in range(rng.randint(1, 40))))


def expect(proto, segs: list[Seg]) -> dict | None:
    """The counts the driver must reach, by construction; None if the random bytes happened to
    make a frame start nobody meant (then the caller draws again)."""
    stream = b"".join(s.data for s in segs)
    pos, p = [], 0
    for s in segs:
        pos.append(p)
        p += len(s.data)
    whole = {p for p, s in zip(pos, segs) if s.kind in ("good", "reply")}
    inside = {q for p, s in zip(pos, segs) if s.kind in ("good", "reply")
              for q in range(p + 1, p + len(s.data))}
    meant = {p for p, s in zip(pos, segs) if s.kind == "bad"}
    for q in range(len(stream)):
        if any(stream.startswith(st, q) for st in proto.starts):
            if q not in whole and q not in inside and q not in meant:
                return None
    errors = 0
    for p, s in zip(pos, segs):
        if s.kind != "bad":
            continue
        window = stream[p:p + proto.flen]
        if len(window) < proto.flen:
            if not s.tail:
                return None
            continue
        verdict = proto.judge(window)
        if verdict == "frame":
            return None
        errors += verdict == "count"
    held = len(segs[-1].data) if segs[-1].tail else 0
    good = [v for s in segs if s.kind == "good" for v in [s.values]]
    replies = sum(s.kind == "reply" for s in segs)
    return {"stream": stream, "vals": good, "frames": len(good), "cs": errors, "replies": replies,
            "skipped": len(stream) - proto.flen * (len(good) + replies) - held}


def chunkings(stream: bytes, rng: random.Random) -> list[list[str]]:
    """The whole stream at once, in random small reads, and one byte per read."""
    small, i = [], 0
    while i < len(stream):
        n = rng.randint(1, 7)
        small.append(stream[i:i + n].hex())
        i += n
    return [[stream.hex()], small, [stream[i:i + 1].hex() for i in range(len(stream))]]


def run_streams(kind: str, cases: list[list[list[str]]]) -> list[dict]:
    stdin = "".join(json.dumps({"kind": kind, "chunks": ch}) + "\n" for ch in cases)
    res = run_mpy(RUN_STREAMS, stdin=stdin)
    assert res.returncode == 0, res.stderr.decode() + res.stdout.decode()[-2000:]
    out = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert len(out) == len(cases)
    return out


def check(proto, kind: str, scenarios: list[list[Seg]], seed: int) -> list[dict]:
    rng = random.Random(seed)
    exps, cases = [], []
    for segs in scenarios:
        e = expect(proto, segs)
        assert e is not None, "scenario does not mean what it says"
        for ch in chunkings(e["stream"], rng):
            exps.append(e)
            cases.append(ch)
    for e, got in zip(exps, run_streams(kind, cases)):
        assert got["idle"] is False
        assert got["left"] == 0  # read() takes everything the UART holds
        assert got["vals"] == e["vals"]
        assert (got["frames"], got["cs"], got["replies"], got["skipped"]) == (
            e["frames"], e["cs"], e["replies"], e["skipped"])
    return exps


def drawn(proto, rng: random.Random, build) -> list[Seg]:
    """build(rng) until its random bytes make no frame start other than the ones meant."""
    while True:
        segs = build(rng)
        if expect(proto, segs) is not None:
            return segs


def targeted(proto, rng: random.Random) -> list[tuple[list[Seg], tuple[int, int, int]]]:
    """Scenarios with their (frames, checksum errors, bytes skipped) written out by hand."""
    fl = proto.flen
    pms = proto is PMS_
    cases = [
        (lambda r: [proto.good(r) for _ in range(50)], (50, 0, 0)),
        (lambda r: [proto.good(r), proto.corrupt(r), proto.good(r), proto.corrupt(r),
                    proto.corrupt(r), proto.good(r)], (3, 3, 3 * fl)),
        # Truncated mid-stream: the next frame starts inside the rejected window and survives.
        # A Plantower window is rejected by its checksum (counted); an SDS011 window ends in a
        # byte of the next frame's data, not in its 0xAB tail, so it is only skipped.
        (lambda r: [proto.good(r), truncated(proto, r, fl - 7), proto.good(r),
                    truncated(proto, r, 5), proto.good(r)], (3, 2 if pms else 0, fl - 7 + 5)),
        (lambda r: [proto.good(r), proto.good(r), truncated(proto, r, fl - 1, tail=True)],
         (2, 0, 0)),  # held for the rest to come, not skipped
        (lambda r: [proto.good(r), truncated(proto, r, 3, tail=True)], (1, 0, 0)),
        (lambda r: [proto.good(r), Seg("junk", b"\x42" if pms else b"\xaa"), proto.good(r),
                    Seg("junk", b"\x42\x4d" if pms else b"\xaa\x01"), proto.good(r)], (3, 0, 3)),
    ]
    return [(drawn(proto, rng, build), want) for build, want in cases]


PMS_, SDS_ = PMS(), SDS()


def fuzz(proto, rng: random.Random, n: int) -> list[list[Seg]]:
    makers = [proto.good] * 6 + [proto.corrupt, proto.wrong_length, proto.reply, proto.fake_start,
                                 lambda r: truncated(proto, r), lambda r: garbage(proto, r)]
    out = []
    while len(out) < n:
        segs = [rng.choice(makers)(rng) for _ in range(rng.randint(5, 40))] + [proto.good(rng)]
        if rng.random() < 0.3:
            segs.append(truncated(proto, rng, tail=True))
        if expect(proto, segs) is not None:
            out.append(segs)
    return out


def test_pms5003_targeted_streams() -> None:
    rng = random.Random(1)
    cases = targeted(PMS_, rng)
    # a wrong length field is skipped, not counted, and swallows nothing after it
    cases.append(([PMS_.good(rng), PMS_.wrong_length(rng), PMS_.good(rng)], (2, 0, 32)))
    cases.append(([PMS_.good(rng), PMS_.reply(rng), PMS_.good(rng)], (2, 0, 8)))
    # fake starts: 0x42, 0x42 0x4D, a whole header followed by too few bytes, then a frame
    cases.append(([Seg("junk", b"\x42"), Seg("junk", b"\x42\x4d"),
                   Seg("bad", b"\x42\x4d\x00\x1c\x01\x02\x03"), PMS_.good(rng)], (1, 1, 10)))
    exps = check(PMS_, "pms5003", [segs for segs, _ in cases], seed=2)
    for (_, want), e in zip(cases, exps[::3]):
        assert (e["frames"], e["cs"], e["skipped"]) == want


def test_pms5003_random_streams() -> None:
    rng = random.Random(5003)
    exps = check(PMS_, "pms5003", fuzz(PMS_, rng, 120), seed=6)[::3]  # one per chunking
    assert sum(e["frames"] for e in exps) > 1500 and sum(e["cs"] for e in exps) > 500


def test_pms7003_is_the_same_frame() -> None:
    rng = random.Random(7003)
    check(PMS_, "pms7003", fuzz(PMS_, rng, 10), seed=7)


def test_sds011_targeted_streams() -> None:
    rng = random.Random(11)
    cases = targeted(SDS_, rng)
    f = bytearray(SDS_.good(rng).data)
    f[9] = 0xAC  # no tail
    cases.append(([SDS_.good(rng), Seg("bad", bytes(f)), SDS_.good(rng)], (2, 0, 10)))
    # replies to sleep/wake are consumed quietly: neither frames nor skipped bytes nor errors
    cases.append(([SDS_.reply(rng), SDS_.good(rng), SDS_.reply(rng), SDS_.good(rng)], (2, 0, 0)))
    cases.append(([Seg("junk", b"\xaa"), Seg("bad", b"\xaa\xc0\x01\x02"), SDS_.good(rng)], (1, 0, 5)))
    exps = check(SDS_, "sds011", [segs for segs, _ in cases], seed=12)
    for (_, want), e in zip(cases, exps[::3]):
        assert (e["frames"], e["cs"], e["skipped"]) == want
    assert exps[-6]["replies"] == 2


def test_sds011_random_streams() -> None:
    rng = random.Random(1011)
    exps = check(SDS_, "sds011", fuzz(SDS_, rng, 150), seed=13)[::3]  # one per chunking
    assert sum(e["frames"] for e in exps) > 1200 and sum(e["cs"] for e in exps) > 100
    assert sum(e["replies"] for e in exps) > 150


COMMANDS = FAKE + r"""
from plantower import PMS5003
from sds011 import SDS011
out = {}
u = FakeUART()
pms = PMS5003(u)
for name in ('sleep', 'wake', 'passive', 'active', 'request'):
    u.tx = bytearray()
    getattr(pms, name)()
    out[name] = bytes(u.tx).hex()
u = FakeUART()
sp, rp = FakePin(), FakePin()
pms = PMS5003(u, set_pin=sp, reset_pin=rp)
pms.sleep()
pms.wake()
pms.reset()
out['pins'] = [sp.log, rp.log, bytes(u.tx).hex()]
try:
    PMS5003(FakeUART()).reset()
except ValueError as e:
    out['no_reset_pin'] = str(e)
u = FakeUART()
sds = SDS011(u)
for name in ('sleep', 'wake'):
    u.tx = bytearray()
    getattr(sds, name)()
    out['sds_' + name] = bytes(u.tx).hex()
out['none'] = [PMS5003(u).pm25, PMS5003(u).counts, SDS011(u).pm25, SDS011(u).pm10]
print(json.dumps(out))
"""


def test_command_frames_are_byte_exact() -> None:
    res = run_mpy(COMMANDS)
    assert res.returncode == 0, res.stderr.decode()
    out = json.loads(res.stdout)
    # Plantower's protocol appendix: 42 4D CMD DATAH DATAL LRCH LRCL
    assert out["sleep"] == "424de400000173"
    assert out["wake"] == "424de400010174"
    assert out["passive"] == "424de100000170"
    assert out["active"] == "424de100010171"
    assert out["request"] == "424de200000171"
    # with SET wired, sleep and wake use the pin (high: run) and send nothing; RESET pulses low
    assert out["pins"] == [[1, 0, 1], [1, 0, 1], ""]
    assert "reset pin" in out["no_reset_pin"]
    # Nova's control protocol: set sleep / set work for any device (FF FF)
    assert out["sds_sleep"] == "aab406010000000000000000000000ffff05ab"
    assert out["sds_wake"] == "aab406010100000000000000000000ffff06ab"
    assert out["none"] == [None, None, None, None]  # no reading before the first frame


ALLOC = FAKE + r"""
import gc, micropython
from plantower import PMS5003
from sds011 import SDS011

def measure(dev):  # locals only: no globals dict growing inside the measurement
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    n = 0
    while dev.read():
        n += 1
    used = gc.mem_alloc() - a0
    gc.enable()
    micropython.heap_lock()  # an idle poll must not touch the heap at all
    try:
        idle = dev.read()
    finally:
        micropython.heap_unlock()
    return [n, used, idle]

out = {}
for name, cls in (('pms', PMS5003), ('sds', SDS011)):
    frame = bytes.fromhex(sys.stdin.readline().strip())
    u = FakeUART()
    dev = cls(u)
    u.feed(frame * 60)
    dev.read()  # warm up
    out[name] = measure(dev)
print(json.dumps(out))
"""


def test_parsing_allocates_one_view_per_uart_read_and_idle_polls_nothing() -> None:
    """The only allocation per frame is the memoryview slice handed to readinto() (one 32-byte
    GC block on this 64-bit build, 16 bytes on the ESP32); an empty UART costs nothing."""
    rng = random.Random(9)
    res = run_mpy(ALLOC, stdin=PMS_.good(rng).data.hex() + "\n" + SDS_.good(rng).data.hex() + "\n")
    assert res.returncode == 0, res.stderr.decode()
    out = json.loads(res.stdout)
    for name in ("pms", "sds"):
        n, used, idle = out[name]
        assert n == 59 and idle is False
        assert used <= 32 * n, (name, used)
