"""What the simulator's virtual clock costs in wall time: the time limits the tests used to assert
(tests/sim/test_clock.py, tests/sim/test_heap_speed.py), as figures. Each program runs on a
simulated esp32-devkitc (runner.SimNode: littlefs image, 112 KB heap budget, no broker), each
figure a median of several runs, the runs of its pair interleaved.

sim_sleep_hour_vs_boot_ratio: the wall time of a node that sleeps a simulated hour in 1-s steps
(3600 time.sleep(1)) over that of a node whose main.py returns at once. Sleeping costs no wall
time: the ideal is 1; the rest is the boot (micropython, the simulator's setup, the image).

sim_pacing_ratio: with sim.json speed 10, a node sleeping 3 simulated seconds; its wall time less
the boot's, over the 0.3 s the pace asks for. The pace counts from the simulator's setup, so the
end of the boot falls inside it: a little under 1 is on time, above 1 the pace is late. (That it
never runs ahead, tests/sim/test_clock.py asserts.)

sim_audio_speed_x_realtime: simulated seconds per wall second of a small node reading 48 kHz
audio in 1024-sample blocks (a viper sum of squares per block), polling the PM sensor's UART every
block and the BME280 every 5 s, over a simulated hour: against the board's own pace (1x).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.results import median, record
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

BOOT = "pass\n"
SLEEP_HOUR = "import time\nfor i in range(3600):\n    time.sleep(1)\n"
PACED = "import time\ntime.sleep(3)\n"
PACE_SPEED = 10
# The node of tests/sim/test_heap_speed.py.
AUDIO = """
import time, micropython
from machine import I2S, I2C, UART, Pin

@micropython.viper
def sumsq(buf: ptr32, n: int) -> int:
    s = 0
    for i in range(n):
        v = buf[i] >> 16
        s += v * v
    return s

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
    if time.ticks_diff(time.ticks_ms(), nxt) >= 0:
        nxt = time.ticks_add(nxt, 5000)
        i2c.writeto_mem(0x76, 0xF2, b"\\x01")
        i2c.writeto_mem(0x76, 0xF4, b"\\x25")
        time.sleep_ms(10)
        i2c.readfrom_mem(0x76, 0xF7, 8)
"""
AUDIO_S = 3600
RUNS = 5
AUDIO_RUNS = 3


def wall(tmp: Path, name: str, main: str, until_s: float | None, speed: float = 0) -> tuple[float, dict]:
    """The wall time of one run, from the process's start to its end (the flash staged before)."""
    fw = tmp / f"{name}-fw"
    fw.mkdir()
    (fw / "main.py").write_text(main)
    node = SimNode(NodeSpec(node_id=name, scenario=load_scenario("busy-road"), workdir=tmp / name, firmware=fw,
                            until_s=until_s, speed=speed, broker_port=1, heapsize="112K"))
    node.prepare()
    t0 = time.perf_counter()
    node.start()
    code = node.wait(600)
    took = time.perf_counter() - t0
    if code not in (0, 2):   # 0: until_s, 2: main.py returned
        raise SystemExit(f"{name}: the simulated node failed (exit {code}):\n{node.console_text()[-3000:]}")
    return took, node.last_state


def run() -> None:
    boot, hour, paced, audio, lost = [], [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(RUNS):
            boot.append(wall(tmp, f"boot-{i}", BOOT, None)[0])
            hour.append(wall(tmp, f"hour-{i}", SLEEP_HOUR, None)[0])
            paced.append(wall(tmp, f"paced-{i}", PACED, None, PACE_SPEED)[0])
        for i in range(AUDIO_RUNS):
            took, st = wall(tmp, f"audio-{i}", AUDIO, AUDIO_S)
            audio.append(took)
            lost.append(st.get("stats", {}).get("i2s_samples_lost"))
    b, h, p, a = median(boot), median(hour), median(paced), median(audio)
    runs = {"boot_s": [round(x, 3) for x in boot]}
    record("sim_sleep_hour_vs_boot_ratio", round(h / b, 3), "ratio", "lower",
           dict(runs, sleep_hour_s=[round(x, 3) for x in hour], boot_s_median=round(b, 3),
                sleep_hour_s_median=round(h, 3), program="3600 x time.sleep(1), then main.py returns",
                ideal=1.0, runs=RUNS))
    record("sim_pacing_ratio", round((p - b) / (3 / PACE_SPEED), 3), "ratio", "lower",
           dict(runs, paced_s=[round(x, 3) for x in paced], paced_s_median=round(p, 3), speed=PACE_SPEED,
                program="time.sleep(3), then main.py returns", asked_s=3 / PACE_SPEED, ideal=1.0, runs=RUNS))
    record("sim_audio_speed_x_realtime", round(AUDIO_S / a, 1), "simulated s per wall s", "higher",
           {"wall_s_runs": [round(x, 2) for x in audio], "wall_s_median": round(a, 2), "simulated_s": AUDIO_S,
            "audio": "48 kHz, 1024-sample blocks, viper sum of squares", "pm": "pms5003 UART polled per block",
            "climate": "bme280 forced read every 5 s", "i2s_samples_lost": lost, "runs": AUDIO_RUNS,
            "boot_s_median": round(b, 3)})


if __name__ == "__main__":
    run()
