"""Every firmware source compiles for the ESP32 (mpy-cross -march=xtensawin): this catches what
the unix port accepts and the board does not, e.g. viper literals beyond the 31-bit small int."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meetkit_tools.appbuild import mpy_cross_bin
from meetkit_tools.paths import ROOT

FIRMWARE = ROOT / "firmware"
SOURCES = sorted(FIRMWARE.rglob("*.py"))


def test_there_is_firmware() -> None:
    assert SOURCES, f"no .py files under {FIRMWARE}"


@pytest.mark.parametrize("src", SOURCES, ids=[str(p.relative_to(FIRMWARE)) for p in SOURCES])
def test_compiles_for_xtensawin(src: Path, tmp_path: Path) -> None:
    out = tmp_path / (src.stem + ".mpy")
    res = subprocess.run([mpy_cross_bin(), "-march=xtensawin", "-o", str(out), str(src)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (
        f"{src.relative_to(ROOT)} does not compile for the ESP32:\n{res.stderr}{res.stdout}")
    assert out.stat().st_size > 0
