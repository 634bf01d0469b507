"""The PM sensors at the byte level on machine.UART: Plantower PMS5003/7003 and Nova SDS011 frames
checked with reference parsers written here, their timing, commands, the UART's RX buffer, faults."""

from __future__ import annotations

import struct
from pathlib import Path

from meetkit_tools.sim.mpy.scenario import Scenario
from tests.sim.harness import DEVICES, run_sim, scenario

# Read the UART once a second, print what came as hex with the virtual second.
READER = """
import time, ubinascii
from machine import UART, Pin
u = UART(2, baudrate=%(baud)d, tx=17, rx=16, rxbuf=%(rxbuf)d)
%(setup)s
for s in range(1, %(secs)d + 1):
    time.sleep_ms(1000)
%(each)s
    d = u.read()
    print("@%%d %%s" %% (s, ubinascii.hexlify(d).decode() if d else ""))
"""


def read_seconds(tmp: Path, secs: int, *, sc: dict | None = None, devices: dict | None = None,
                 rxbuf: int = 1024, setup: str = "", each: str = "", baud: int = 9600):
    r = run_sim(tmp, READER % {"secs": secs, "rxbuf": rxbuf, "setup": setup, "each": each, "baud": baud},
                scenario=sc, devices=devices, until_ms=None)
    assert r.code == 2, r.out + r.err
    chunks = {}
    for line in r.lines:
        if line.startswith("@"):
            s, _, hx = line[1:].partition(" ")
            chunks[int(s)] = bytes.fromhex(hx)
    return chunks, r


def pms_parse(data: bytes) -> tuple[list[tuple[int, ...]], int]:
    """Reference PMS5003/7003 parser: (frames as 13 words, frames with a bad checksum)."""
    frames, bad, i = [], 0, 0
    while i + 32 <= len(data):
        f = data[i:i + 32]
        if f[:4] == b"\x42\x4d\x00\x1c":
            if sum(f[:30]) == struct.unpack(">H", f[30:])[0]:
                frames.append(struct.unpack(">13H", f[4:30]))
                i += 32
                continue
            bad += 1
        i += 1
    return frames, bad


def sds_parse(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Reference SDS011 parser: (frames as (pm25 x10, pm10 x10, id), frames with a bad checksum)."""
    frames, bad, i = [], 0, 0
    while i + 10 <= len(data):
        f = data[i:i + 10]
        if f[0] == 0xAA and f[1] == 0xC0 and f[9] == 0xAB:
            if sum(f[2:8]) & 0xFF == f[8]:
                frames.append(struct.unpack("<HHH", f[2:8]))
                i += 10
                continue
            bad += 1
        i += 1
    return frames, bad


def pms_cmd(cmd: int, data: int) -> str:
    f = bytes([0x42, 0x4D, cmd, 0, data])
    s = sum(f)
    return repr(f + bytes([s >> 8, s & 0xFF]))


def sds_cmd(cmd: int, d2: int = 0, d3: int = 0) -> str:
    body = bytes([cmd, d2, d3] + [0] * 10 + [0xFF, 0xFF])
    return repr(b"\xaa\xb4" + body + bytes([sum(body) & 0xFF, 0xAB]))


RAMP = scenario(pm1={"points": [[0, 3], [60, 33]]}, pm25={"points": [[0, 10], [60, 70]]},
                pm10={"points": [[0, 20], [60, 140]]})


def test_pms5003_one_valid_frame_a_second_with_the_truth(tmp_path: Path) -> None:
    chunks, _ = read_seconds(tmp_path, 60, sc=RAMP)
    s = Scenario(RAMP)
    for sec in range(1, 61):
        frames, bad = pms_parse(chunks.get(sec, b""))
        assert bad == 0 and len(chunks.get(sec, b"")) == 32 * len(frames)
        # frames leave at 2.5 s after power-on, then every second (33 ms on the wire)
        assert len(frames) == (1 if sec >= 3 else 0), sec
        if not frames:
            continue
        t = sec - 0.5
        f = frames[0]
        atm = [int(s.value(q, t) + 0.5) for q in ("pm1", "pm25", "pm10")]
        if t >= 30:
            assert list(f[3:6]) == atm, (sec, f)
            assert all(cf >= a for cf, a in zip(f[0:3], f[3:6]))        # CF=1 reads higher at high load
            assert f[6] > f[7] > f[8] >= f[9] >= f[10] >= f[11]          # counts per 0.1 L: cumulative
        else:
            assert all(g > a for g, a in zip(f[3:6], atm)), "warm-up values must be off"


def test_the_rx_buffer_overflows_and_counts_what_it_dropped(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time
        from machine import UART
        u = UART(2, baudrate=9600, tx=17, rx=16, rxbuf=256)
        time.sleep(30)
        print("@", u.any(), len(u.read()), u.read())
        """, until_ms=None)
    assert r.lines[0] == "@ 256 256 None"
    # frames at 2.5, 3.5 ... 29.5 s: 28 x 32 bytes, 256 kept
    assert r.state["stats"]["uart_bytes_dropped"] == 28 * 32 - 256


def test_a_read_with_timeout_waits_in_virtual_time(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time
        from machine import UART
        u = UART(2, baudrate=9600, tx=17, rx=16, timeout=2000)
        t0 = time.ticks_ms()
        a = u.read(32)                       # nothing comes within 2 s
        t1 = time.ticks_ms()
        u.init(timeout=1000)
        d = u.read(32)
        t2 = time.ticks_ms()
        u.init(timeout=100)
        time.sleep_ms(10)
        e = u.read(64)
        print("@", a, time.ticks_diff(t1, t0), len(d), time.ticks_diff(t2, t0), e,
              time.ticks_diff(time.ticks_ms(), t2))
        """, until_ms=None)
    _, a, dt1, n, dt2, e, dt3 = r.lines[0].split()
    assert a == "None" and 2000 <= int(dt1) <= 2001
    assert n == "32" and 2533 <= int(dt2) <= 2535   # the first frame: 2.5 s + 32 byte times
    assert e == "None" and 110 <= int(dt3) <= 111   # nothing within the 100 ms timeout


def test_wrong_baud_rate_gives_garbage(tmp_path: Path) -> None:
    chunks, _ = read_seconds(tmp_path, 6, baud=115200)
    data = b"".join(chunks.values())
    assert len(data) == 4 * 32 and pms_parse(data)[0] == []


def test_unplugged_is_silent_then_starts_afresh(tmp_path: Path) -> None:
    sc = scenario()
    sc["faults"] = [{"kind": "pm_unplugged", "from": 10.2, "to": 20}]
    chunks, _ = read_seconds(tmp_path, 60, sc=sc)
    got = {s: pms_parse(d)[0] for s, d in chunks.items()}
    assert [s for s in range(1, 61) if got.get(s)] == list(range(3, 11)) + list(range(23, 61))
    assert got[25][0][3:6] != (5, 8, 12)                 # warming up again after power-on at 20 s
    assert got[51][0][3:6] == (5, 8, 12)


def test_garbage_on_the_line(tmp_path: Path) -> None:
    sc = scenario()
    sc["faults"] = [{"kind": "pm_garbage", "from": 0, "to": 100, "fraction": 0.01}]
    chunks, _ = read_seconds(tmp_path, 100, sc=sc)
    frames, bad = pms_parse(b"".join(chunks.values()))
    assert len(frames) + bad <= 98
    assert 5 < bad and 50 < len(frames) < 90          # about 1 - 0.99**32 = 28 % of the frames are hit


def test_passive_mode_sleep_and_wake_commands(tmp_path: Path) -> None:
    each = """
    if s == 40:
        u.write(%s)
    if s == 42:
        u.write(%s)
    if s == 45:
        u.write(%s)
    if s == 47:
        u.write(%s)
    if s == 50:
        u.write(%s)
""" % (pms_cmd(0xE1, 0), pms_cmd(0xE2, 0), pms_cmd(0xE4, 0), pms_cmd(0xE4, 1), pms_cmd(0xE1, 1))
    chunks, _ = read_seconds(tmp_path, 60, each=each)
    assert chunks[41] == bytes.fromhex("424d0004e1000174")           # passive: acknowledged, no frames
    assert chunks[42] == b"" and len(pms_parse(chunks[43])[0]) == 1   # E2 reads one frame
    assert chunks[44] == b""
    assert chunks[46] == bytes.fromhex("424d0004e4000177") and chunks[47] == b""   # asleep
    assert chunks[48] == b""                                         # woken, but passive: no frames
    assert chunks[51] == bytes.fromhex("424d0004e1010175")
    frames = [pms_parse(chunks[s])[0] for s in range(52, 61)]
    assert all(len(f) == 1 for f in frames)
    assert frames[-1][0][3:6] != (5, 8, 12)                          # woken at 47 s: still warming up


def test_the_set_pin_sleeps_the_sensor(tmp_path: Path) -> None:
    devices = dict(DEVICES, uart={"2": {"type": "pms7003", "set": 4}})
    each = """
    if s == 10:
        setp.value(0)
    if s == 20:
        setp.value(1)
"""
    chunks, _ = read_seconds(tmp_path, 30, devices=devices, setup="setp = Pin(4, Pin.OUT, value=1)", each=each)
    have = [s for s in range(1, 31) if pms_parse(chunks[s])[0]]
    assert have == list(range(3, 11)) + list(range(23, 31))


def test_sds011_frames_commands_and_query_mode(tmp_path: Path) -> None:
    devices = dict(DEVICES, uart={"2": {"type": "sds011", "id": 0x60A1}})
    sc = scenario(pm25={"points": [[0, 10.0], [100, 20.0]]}, pm10={"points": [[0, 30.04]]})
    each = """
    if s == 40:
        u.write(%s)
    if s == 42:
        u.write(%s)
    if s == 44:
        u.write(%s)
    if s == 46:
        u.write(%s)
    if s == 48:
        u.write(%s)
""" % (sds_cmd(2, 1, 1), sds_cmd(4), sds_cmd(6, 1, 0), sds_cmd(6, 1, 1), sds_cmd(2, 1, 0))
    chunks, _ = read_seconds(tmp_path, 60, sc=sc, devices=devices, each=each)
    s = Scenario(sc)
    for sec in range(33, 41):
        frames, bad = sds_parse(chunks[sec])
        assert bad == 0 and len(frames) == 1
        pm25, pm10, dev = frames[0]
        assert pm25 == int(s.value("pm25", sec - 0.5) * 10 + 0.5) and pm10 == 300 and dev == 0x60A1
    assert chunks[41] == bytes.fromhex("aac502010100a16005ab")       # query mode acknowledged
    assert chunks[42] == b"" and len(sds_parse(chunks[43])[0]) == 1  # query: one frame
    assert chunks[45] == bytes.fromhex("aac506010000a16008ab")       # sleep
    assert chunks[46] == b""
    assert chunks[47] == bytes.fromhex("aac506010100a16009ab")       # work
    assert chunks[49] == bytes.fromhex("aac502010000a16004ab")       # active reporting again
    got = [sds_parse(chunks[sec])[0] for sec in range(52, 61)]
    assert all(len(f) == 1 for f in got)
    assert got[-1][0][0] > int(s.value("pm25", 59.5) * 10 + 0.5)    # woken at 46 s: warming up
