"""Run throwaway firmware on the simulated board: a flash folder with main.py, a sim.json, and
micropython running the simulator (`-m simboot sim.json` in that folder) as the runner would.

By default the folder itself is the board's root (no littlefs, no flash timing: device-model tests
read what the program wrote straight from the folder). With `image=True` the folder is staged into
a littlefs image as the runner does, and `Run.read_flash()` reads it back through MicroPython."""

from __future__ import annotations

import copy
import json
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meetkit_tools.sim import flashimage
from meetkit_tools.sim.runner import SIM_JSON, link_host, sim_command, sim_env

START_EPOCH = 1795503600  # 2026-11-24T07:00:00Z

# Constant truth unless a test says otherwise: expected values are then exact.
SCENARIO: dict[str, Any] = {
    "name": "test", "start": "2026-11-24T07:00:00Z",
    "truth": {"temp": {"points": [[0, 12.5]]}, "rh": {"points": [[0, 81.0]]},
              "press": {"points": [[0, 1013.25]]}, "pm1": {"points": [[0, 5]]},
              "pm25": {"points": [[0, 8]]}, "pm10": {"points": [[0, 12]]},
              "noise_dbspl": {"points": [[0, 60.0]]}},
    "faults": [],
}

DEVICES: dict[str, Any] = {
    "i2c": {"0": {"118": {"type": "bme280", "calib": "default"}}},
    "uart": {"2": {"type": "pms5003"}},
    "i2s": {"0": {"type": "ics43434", "sens_dbfs": -26.0}},
}


def scenario(**truth: Any) -> dict[str, Any]:
    """The default scenario with some quantities replaced: name=value (constant) or name=spec."""
    sc = copy.deepcopy(SCENARIO)
    for k, v in truth.items():
        sc["truth"][k] = v if isinstance(v, dict) else {"points": [[0, v]]}
    return sc


@dataclass
class Run:
    code: int
    out: str
    err: str
    state: dict[str, Any]
    wall: float
    flash: Path
    image: Path | None = None

    def read_flash(self, path: str) -> bytes | None:
        """A file the program left on the board's flash (None: none)."""
        if self.image is not None:
            return flashimage.read_file(self.image, path)
        p = self.flash / path
        return p.read_bytes() if p.is_file() else None

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json_lines(self, prefix: str = "@") -> list[Any]:
        """Lines the firmware printed as `@<json>`."""
        return [json.loads(l[len(prefix):]) for l in self.lines if l.startswith(prefix)]


def run_sim(tmp: Path, main: str, *, scenario: dict | None = None, devices: dict | None = None,
            until_ms: int | None = 600_000, t_ms: int = 0, rtc: float | None = None,
            reset_cause: str = "power_on", heapsize: str | None = "256K", seed: int = 1,
            extra: dict | None = None, files: dict[str, str] | None = None, timeout: float = 120,
            image: bool = False, keep_image: bool = False) -> Run:
    """`image`: the flash is a littlefs image (tmp/flash.img), made afresh from the folder unless
    `keep_image` (then the program on it is the one staged when it was made)."""
    tmp.mkdir(parents=True, exist_ok=True)
    flash = tmp / "flash"
    flash.mkdir(exist_ok=True)
    (flash / "main.py").write_text(textwrap.dedent(main))
    for name, text in (files or {}).items():
        (flash / name).parent.mkdir(parents=True, exist_ok=True)
        (flash / name).write_text(textwrap.dedent(text))
    state_file = tmp / "state.json"
    state_file.unlink(missing_ok=True)
    # relative to `tmp`, the process's working directory, as the runner writes them
    sim = {"flash_dir": flash.name, "state_file": state_file.name,
           "scenario": scenario or SCENARIO, "start_epoch": START_EPOCH, "t_ms": t_ms,
           "until_ms": until_ms, "speed": 0, "seed": seed, "chip_id": "240ac4123456", "rtc": rtc,
           "reset_cause": reset_cause, "devices": DEVICES if devices is None else devices}
    img = tmp / "flash.img"
    if image:
        if not keep_image:
            img.unlink(missing_ok=True)
        sim["flash_image"] = img.name
    sim.update(extra or {})
    (tmp / SIM_JSON).write_text(json.dumps(sim))
    link_host(tmp)
    t0 = time.perf_counter()
    p = subprocess.run(sim_command(heapsize), env=sim_env(), cwd=tmp, capture_output=True, timeout=timeout)
    wall = time.perf_counter() - t0
    state = json.loads(state_file.read_text()) if state_file.exists() and state_file.stat().st_size else {}
    return Run(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"),
               state, wall, flash, img if image else None)
