"""Provide the MicroPython libraries the ESP32 firmware has frozen in, for the simulator.

The official ESP32 build freezes `umqtt.simple`; the unix port does not have it. PyPI carries the
module only as an sdist without a build script, so pip cannot install it, but `pip download
--no-clean` unpacks it before failing. We take the file from there and check its hash, so the
simulator runs exactly the code the board runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

UMQTT_SIMPLE = "micropython-umqtt.simple==1.3.4"
UMQTT_SIMPLE_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"


def fetch_umqtt_simple(dest: Path) -> Path:
    target = dest / "umqtt" / "simple.py"
    if target.exists() and _sha256(target) == UMQTT_SIMPLE_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-clean", "--no-deps",
               "--no-binary", ":all:", "-d", str(Path(tmp) / "dl"), UMQTT_SIMPLE]
        # Expected to fail after unpacking ("neither setup.py nor pyproject.toml").
        subprocess.run(cmd, env=env, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("pip-download-*/*/umqtt/simple.py"))
        if not found:
            raise SystemExit(f"could not unpack {UMQTT_SIMPLE} from PyPI (is the registry reachable?)")
        digest = _sha256(found[0])
        if digest != UMQTT_SIMPLE_SHA256:
            raise SystemExit(f"{UMQTT_SIMPLE}: unexpected sha256 {digest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(found[0], target)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dest", type=Path, help="folder to put the modules in (e.g. build/mpylib)")
    args = ap.parse_args(argv)
    print(fetch_umqtt_simple(args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
