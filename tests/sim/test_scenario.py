"""scenario.py: the contract's interpolation, waves and faults; the same numbers in CPython and in
MicroPython (the simulator), and the three shipped scenarios are complete and plausible."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from meetkit_tools.dev.micropython import SIM_MPY, run_mpy
from meetkit_tools.paths import SCENARIOS
from meetkit_tools.sim.mpy.scenario import Scenario

SC = {"name": "x", "start": "2026-11-24T07:00:00Z",
      "truth": {"a": {"points": [[100, 1.0], [200, 3.0], [200, 10.0], [300, 0.0]]},
                "b": {"points": [[0, 5.0]], "wave": {"amp": 2.0, "period": 40}},
                "c": {"points": [[50, 1.0], [0, 0.0]], "wave": [{"amp": 1.0, "period": 10},
                                                               {"amp": 0.5, "period": 7, "phase": 1}]}},
      "faults": [{"kind": "wifi_down", "from": 10, "to": 20}, {"kind": "wifi_down", "from": 30, "to": 35},
                 {"kind": "pm_garbage", "from": 0, "to": 5, "fraction": 0.2}]}

TIMES = [-5, 0, 99.5, 100, 150, 199.999, 200, 250, 300, 1e6, 12.34, 3599.9]


def test_interpolation_steps_waves_and_faults() -> None:
    s = Scenario(SC)
    assert [s.value("a", t) for t in (0, 100, 150, 199.5, 200, 250, 400)] == [1, 1, 2, 2.99, 10, 5, 0]
    assert s.value("b", 10) == pytest.approx(7.0) and s.value("b", 30) == pytest.approx(3.0)
    assert s.value("c", 25) == pytest.approx(0.5 + math.sin(2 * math.pi * 2.5) + 0.5 * math.sin(2 * math.pi * 26 / 7))
    assert s.value("nope", 3) is None and s.value("nope", 3, 7) == 7
    assert s.fault("wifi_down", 9.99) is None and s.fault("wifi_down", 10)["to"] == 20
    assert s.fault("wifi_down", 20) is None and s.fault("pm_garbage", 4)["fraction"] == 0.2
    assert s.last_end("wifi_down", 25) == 20 and s.last_end("wifi_down", 40) == 35
    assert s.last_end("wifi_down", 19) is None


def test_micropython_computes_the_same_numbers(tmp_path: Path) -> None:
    code = "import json\nfrom scenario import Scenario\ns = Scenario(json.loads(%r))\n" % json.dumps(SC)
    code += "print(json.dumps([[s.value(q, t) for t in %r] for q in 'abc']))" % TIMES
    p = run_mpy(code, path=[SIM_MPY])
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    s = Scenario(SC)
    want = [[s.value(q, t) for t in TIMES] for q in "abc"]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", ["quiet-street", "busy-road", "construction-site"])
def test_the_shipped_scenarios(name: str) -> None:
    obj = json.loads((SCENARIOS / f"{name}.json").read_text())
    s = Scenario(obj)
    assert obj["name"] == name and obj["start"].endswith("Z") and obj["description"]
    rng = {q: [s.value(q, t) for t in range(0, 3601, 2)]
           for q in ("temp", "rh", "press", "pm1", "pm25", "pm10", "noise_dbspl")}
    for q in rng:
        assert max(p[0] for p in obj["truth"][q]["points"]) >= 3600 or len(obj["truth"][q]["points"]) == 1
    assert 0 < min(rng["temp"]) and max(rng["temp"]) < 14           # Dutch November
    assert 75 < min(rng["rh"]) and max(rng["rh"]) <= 100
    assert 990 < min(rng["press"]) and max(rng["press"]) < 1030
    assert all(a <= b <= c for a, b, c in zip(rng["pm1"], rng["pm25"], rng["pm10"]))
    lz = rng["noise_dbspl"]
    if name == "quiet-street":
        assert 38 < min(lz) and max(lz) < 55 and 40 < sum(lz) / len(lz) < 50
        assert max(rng["pm25"]) < 10 and min(rng["rh"]) > 85
    elif name == "busy-road":
        assert 62 < min(lz) and max(lz) < 77 and max(lz) - min(lz) > 8
        assert max(rng["pm25"]) > 15 and max(rng["rh"]) < 85
    else:
        assert max(lz) > 90 and max(lz) < 98 and max(rng["pm10"]) > 100
        assert min(rng["rh"]) < 85 < max(rng["rh"])
        kinds = {f["kind"] for f in obj["faults"]}
        assert {"pm_garbage", "wifi_down"} <= kinds
        assert all(f["to"] - f["from"] <= 300 for f in obj["faults"])
