"""Where the project's parts are, for the tools and the tests (a source checkout)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
SIM_MPY = ROOT / "tools" / "sim" / "mpy"
SCENARIOS = ROOT / "tools" / "sim" / "scenarios"
BUILD = ROOT / "build"
MPYLIB = BUILD / "mpylib"
