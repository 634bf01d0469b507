"""The simulator's own cost in heap (it shares the firmware's), and an hour of audio read whole.
Its speed is a figure of bench/sim_time.py (sim_audio_speed_x_realtime), not a limit here.

Figures are printed (pytest -s) and attached to the test report as properties."""

from __future__ import annotations

from pathlib import Path

from tests.sim.harness import run_sim, scenario

# A small node: audio in 1024-sample blocks with a viper sum of squares, the PM UART polled every
# block, the BME280 every 5 s.
NODE = """
import time, gc, micropython
from machine import I2S, I2C, UART, Pin

@micropython.viper
def sumsq(buf: ptr32, n: int) -> int:
    s = 0
    for i in range(n):
        v = buf[i] >> 16
        s += v * v
    return s

gc.collect()
print("@free", gc.mem_free())
i2s = I2S(0, sck=Pin(26), ws=Pin(25), sd=Pin(33), mode=I2S.RX, bits=32, format=I2S.MONO,
          rate=48000, ibuf=32768)
i2c = I2C(0, scl=Pin(22), sda=Pin(21), freq=100000)
u = UART(2, baudrate=9600, tx=17, rx=16, rxbuf=512)
buf = bytearray(4096)
nxt = time.ticks_ms()
pm = 0
while True:
    i2s.readinto(buf)
    sumsq(buf, 1024)
    if u.any():
        pm += len(u.read())
    if %(climate)d and time.ticks_diff(time.ticks_ms(), nxt) >= 0:
        nxt = time.ticks_add(nxt, 5000)
        i2c.writeto_mem(0x76, 0xF2, b"\\x01")
        i2c.writeto_mem(0x76, 0xF4, b"\\x25")
        time.sleep_ms(10)
        i2c.readfrom_mem(0x76, 0xF7, 8)
"""


def test_heap_under_96k(tmp_path: Path, record_property) -> None:
    r = run_sim(tmp_path, NODE % {"climate": 1}, until_ms=600_000, heapsize="112K")
    assert r.code == 0, r.out + r.err
    st = r.state["stats"]
    free = int(r.lines[0].split()[1])
    print(f"\nsimulator heap after setup: {st['sim_heap']} B of 96 KiB; firmware start free {free} B; "
          f"live-heap peak {st['heap_peak']} B")
    record_property("sim_heap", st["sim_heap"])
    record_property("heap_peak", st["heap_peak"])
    assert st["sim_heap"] < 60 * 1024
    assert free > 32 * 1024
    assert st["i2s_samples_lost"] == 0 and st["uart_bytes_dropped"] == 0


def test_heap_budget_leaves_the_firmware_exactly_its_share(tmp_path: Path) -> None:
    r = run_sim(tmp_path, NODE % {"climate": 1}, until_ms=60_000, heapsize="256K",
                extra={"heap_budget": 112 * 1024})
    assert r.code == 0, r.out + r.err
    free = int(r.lines[0].split()[1])
    assert 112 * 1024 - 2048 < free <= 112 * 1024
    assert abs(r.state["stats"]["firmware_heap"] - 112 * 1024) < 256


def test_an_hour_of_audio_is_read_whole(tmp_path: Path) -> None:
    r = run_sim(tmp_path, NODE % {"climate": 1}, scenario=scenario(noise_dbspl={
        "points": [[0, 60]], "wave": {"amp": 10, "period": 30}}), until_ms=3_600_000, heapsize="112K",
        timeout=600)
    assert r.code == 0, r.out + r.err
    st = r.state["stats"]
    assert st["i2s_samples_read"] >= 48000 * 3600 - 1024 and st["i2s_samples_lost"] == 0
    assert st["uart_bytes_dropped"] == 0
