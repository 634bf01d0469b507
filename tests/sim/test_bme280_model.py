"""The BME280 model at the register level, checked with an independent reader:
adafruit-circuitpython-bme280 (CPython, Bosch's float formulas) on the register image the model
produced under micropython must give back the scenario's truth at the conversion's time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meetkit_tools.sim.mpy.scenario import Scenario
from tests.sim.harness import DEVICES, run_sim, scenario

ADDR = 0x76
OS_MULT = (0, 1, 2, 4, 8, 16)

CAPTURE = """
import time, json, ubinascii
from machine import I2C, Pin
A = 0x76
i2c = I2C(0, scl=Pin(22), sda=Pin(21), freq=100000)
time.sleep_ms(%(wait_ms)d)
out = {"scan": i2c.scan(), "id": i2c.readfrom_mem(A, 0xD0, 1)[0]}
i2c.writeto_mem(A, 0xF2, bytes([%(osh)d]))
i2c.writeto_mem(A, 0xF4, bytes([(%(ost)d << 5) | (%(osp)d << 2) | 1]))
out["t"] = time.time_ns() // 1000
out["busy"] = i2c.readfrom_mem(A, 0xF3, 1)[0]
n = 0
while i2c.readfrom_mem(A, 0xF3, 1)[0] & 8:
    time.sleep_ms(1)
    n += 1
out["done"] = time.time_ns() // 1000
out["mode"] = i2c.readfrom_mem(A, 0xF4, 1)[0] & 3
out["img"] = ubinascii.hexlify(i2c.readfrom_mem(A, 0, 256)).decode()
print("@" + json.dumps(out))
"""


class FakeBusio:
    """What adafruit's I2CDevice needs of a busio.I2C, over a static register image."""

    def __init__(self, image: bytes) -> None:
        self.regs = bytearray(image)
        self.ptr = 0

    def try_lock(self) -> bool:
        return True

    def unlock(self) -> None:
        pass

    def scan(self) -> list[int]:
        return [ADDR]

    def writeto(self, addr: int, buf: Any, start: int = 0, end: int | None = None) -> None:
        b = bytes(buf[start:end])
        if b:
            self.ptr = b[0]  # register writes (mode, reset) do not change the captured data

    def readfrom_into(self, addr: int, buf: Any, start: int = 0, end: int | None = None) -> None:
        end = len(buf) if end is None else end
        for i in range(start, end):
            buf[i] = self.regs[(self.ptr + i - start) & 0xFF]

    def writeto_then_readfrom(self, addr: int, out: Any, inb: Any, out_start: int = 0,
                              out_end: int | None = None, in_start: int = 0, in_end: int | None = None) -> None:
        self.writeto(addr, out, out_start, out_end)
        self.readfrom_into(addr, inb, in_start, in_end)


def adafruit_read(image: bytes) -> tuple[float, float, float]:
    from adafruit_bme280 import basic
    sensor = basic.Adafruit_BME280_I2C(FakeBusio(image), address=ADDR)
    return sensor.temperature, sensor.pressure, sensor.relative_humidity


def capture(tmp: Path, sc: dict, devices: dict | None = None, os_t: int = 5, os_p: int = 5, os_h: int = 5,
            wait_ms: int = 1000) -> dict:
    r = run_sim(tmp, CAPTURE % {"osh": os_h, "ost": os_t, "osp": os_p, "wait_ms": wait_ms},
                scenario=sc, devices=devices, until_ms=None)
    assert r.code == 2, r.out + r.err
    d = r.json_lines()[0]
    d["image"] = bytes.fromhex(d.pop("img"))
    return d


def t_measure_us(os_t: int, os_p: int, os_h: int) -> int:
    t, p, h = OS_MULT[os_t], OS_MULT[os_p], OS_MULT[os_h]
    return 1000 + 2000 * t + (2000 * p + 500 if p else 0) + (2000 * h + 500 if h else 0)


CASES = [
    ("mild", scenario(temp=12.5, rh=81.0, press=1013.25)),
    ("cold-dry", scenario(temp=-8.37, rh=35.2, press=990.41)),
    ("warm-humid", scenario(temp=31.71, rh=97.3, press=1032.07)),
    ("moving", scenario(temp={"points": [[0, 5.0], [3600, 9.0]], "wave": {"amp": 0.5, "period": 60}},
                        rh={"points": [[0, 70.0], [3600, 95.0]]}, press={"points": [[0, 1000.0], [60, 1010.0]]})),
]


@pytest.mark.parametrize("name,sc", CASES, ids=[c[0] for c in CASES])
def test_adafruit_recovers_the_truth(tmp_path: Path, name: str, sc: dict) -> None:
    d = capture(tmp_path, sc, wait_ms=1234)
    assert d["scan"] == [ADDR] and d["id"] == 0x60
    assert d["busy"] & 8                          # measuring: x16 everywhere takes 98 ms
    assert t_measure_us(5, 5, 5) <= d["done"] - d["t"] < t_measure_us(5, 5, 5) + 2000
    assert d["mode"] == 0                         # forced mode falls back to sleep
    t = (d["t"] + t_measure_us(5, 5, 5)) / 1e6
    s = Scenario(sc)
    temp, press, rh = adafruit_read(d["image"])
    assert temp == pytest.approx(s.value("temp", t), abs=0.006)
    assert press == pytest.approx(s.value("press", t), abs=0.01)
    assert rh == pytest.approx(s.value("rh", t), abs=0.01)


def test_oversampling_x1_is_coarser_but_still_right(tmp_path: Path) -> None:
    sc = scenario(temp=18.123, rh=63.21, press=1021.37)
    d = capture(tmp_path, sc, os_t=1, os_p=1, os_h=1)
    img = d["image"]
    assert img[0xF9] & 0xF0 == 0 and img[0xFC] & 0xF0 == 0   # 16-bit results: xlsb empty
    temp, press, rh = adafruit_read(img)
    assert temp == pytest.approx(18.123, abs=0.01)
    assert press == pytest.approx(1021.37, abs=0.03)
    assert rh == pytest.approx(63.21, abs=0.01)


def test_an_explicit_calibration(tmp_path: Path) -> None:
    calib = {"dig_T1": 28485, "dig_T2": 26735, "dig_T3": 50, "dig_P1": 36738, "dig_P2": -10635,
             "dig_P3": 3024, "dig_P4": 6980, "dig_P5": -2, "dig_P6": -7, "dig_P7": 9900,
             "dig_P8": -10230, "dig_P9": 4285, "dig_H1": 75, "dig_H2": 353, "dig_H3": 0,
             "dig_H4": 340, "dig_H5": 0, "dig_H6": 30}
    devices = dict(DEVICES, i2c={"0": {"118": {"type": "bme280", "calib": calib}}})
    sc = scenario(temp=4.44, rh=90.9, press=1002.02)
    d = capture(tmp_path, sc, devices)
    img = d["image"]
    assert img[0x88] | img[0x89] << 8 == 28485 and img[0xE1] | img[0xE2] << 8 == 353
    temp, press, rh = adafruit_read(img)
    assert (temp, press, rh) == (pytest.approx(4.44, abs=0.006), pytest.approx(1002.02, abs=0.01),
                                 pytest.approx(90.9, abs=0.01))


def test_registers_reset_defaults_pairs_and_unplugging(tmp_path: Path) -> None:
    sc = scenario()
    sc["faults"] = [{"kind": "i2c_unplugged", "from": 10, "to": 20}]
    r = run_sim(tmp_path, """
        import time
        from machine import I2C, Pin
        A = 0x76
        i2c = I2C(0, scl=Pin(22), sda=Pin(21), freq=100000)
        print("@", list(i2c.readfrom_mem(A, 0xF7, 8)), i2c.readfrom_mem(A, 0xF4, 1)[0])
        i2c.writeto(A, bytes([0xF2, 0x01, 0xF4, 0x24, 0xF5, 0xA0]))   # (register, value) pairs
        print("@", list(i2c.readfrom_mem(A, 0xF2, 4)))
        i2c.writeto_mem(A, 0xF5, bytes([0x00, 0x27]))   # no auto-increment on writes
        print("@", list(i2c.readfrom_mem(A, 0xF4, 2)))
        time.sleep(12)
        try:
            i2c.readfrom_mem(A, 0xD0, 1)
        except OSError as e:
            print("@", e.errno, i2c.scan())
        time.sleep(10)
        print("@", i2c.scan(), list(i2c.readfrom_mem(A, 0xF2, 4)), i2c.readfrom_mem(A, 0xD0, 1)[0])
        i2c.writeto_mem(A, 0xE0, b"\\xb6")
        print("@", i2c.readfrom_mem(A, 0xF3, 1)[0] & 1, i2c.readfrom_mem(A, 0x88, 2))
        try:
            i2c.readfrom_mem(0x77, 0xD0, 1)
        except OSError as e:
            print("@", e.errno)
        """, scenario=sc, until_ms=None)
    lines = [l for l in r.lines if l.startswith("@")]
    assert lines[0] == "@ [128, 0, 0, 128, 0, 0, 128, 0] 0"
    assert lines[1] == "@ [1, 0, 36, 160]"
    assert lines[2] == "@ [36, 0]"
    assert lines[3] == "@ 19 []"
    assert lines[4] == "@ [118] [0, 0, 0, 0] 96"       # it was power-cycled
    assert lines[5] == "@ 1 b'\\x00\\x00'"               # NVM copy under way: calibration not there yet
    assert lines[6] == "@ 19"


def test_normal_mode_converts_by_itself(tmp_path: Path) -> None:
    sc = scenario(temp={"points": [[0, 10.0], [10, 20.0]]}, rh=55.5, press=1001.0)
    r = run_sim(tmp_path, """
        import time, ubinascii
        from machine import I2C, Pin
        A = 0x76
        i2c = I2C(0, scl=Pin(22), sda=Pin(21), freq=100000)
        i2c.writeto(A, bytes([0xF2, 5, 0xF5, 1 << 5, 0xF4, (5 << 5) | (5 << 2) | 3]))  # t_sb 62.5 ms
        for s in (2, 7):
            time.sleep_ms(s * 1000 - time.time_ns() // 1000000)
            print("@", time.time_ns() // 1000, ubinascii.hexlify(i2c.readfrom_mem(A, 0, 256)).decode())
        """, scenario=sc, until_ms=None)
    s = Scenario(sc)
    for line in r.lines:
        _, t_us, hx = line.split()
        img = bytearray.fromhex(hx)
        img[0xF3] = 0   # adafruit forces its own conversion and waits for the status bit
        temp, press, rh = adafruit_read(bytes(img))
        t = int(t_us) / 1e6
        # the last conversion ended at most one period (98 + 62.5 ms) ago
        assert s.value("temp", t - 0.161) - 0.01 <= temp <= s.value("temp", t) + 0.01
        assert press == pytest.approx(1001.0, abs=0.01) and rh == pytest.approx(55.5, abs=0.01)
