"""Provide the MicroPython libraries the ESP32 firmware has frozen in, for the simulator.

The official ESP32 build freezes `umqtt.simple` from micropython-lib; the unix port does not have
it. PyPI carries the module only as an sdist without a build script (the newest there is 1.3.4 of
2017), so pip cannot install it, but `pip download --no-clean` unpacks it before failing. We take
the file from there and check its hash.

1.3.4 is older than what the board has. Since micropython-lib's umqtt.simple 1.4.0 (frozen in
ESP32 firmware v1.22 and later) `MQTTClient(..., ssl=)` takes an `ssl.SSLContext` and the client
wraps its socket with `ssl.wrap_socket(sock, server_hostname=server)`; 1.3.4 takes `ssl=True,
ssl_params={}` and imports `ussl`, a module that neither the v1.29 unix port nor the board has any
more. The firmware codes against the board's API, so the simulator gets the board's behaviour:
`board_api()` applies exactly these changes of 1.4.0 to the 1.3.4 file and the result's hash is
checked too:

- `__init__(..., keepalive=0, ssl=None)`: no `ssl_params`;
- `connect()`: `if self.ssl: self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)`;
- credentials are sent `if self.user:` (1.3.4: `is not None`), so an empty user name sends none;
- `wait_msg()` returns the packet type of a PUBLISH it handled (1.3.4: None).

Everything else (the MQTT packets, QoS 1, the blocking reads) is 1.3.4's code, unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

UMQTT_SIMPLE = "micropython-umqtt.simple==1.3.4"
UMQTT_SIMPLE_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"
BOARD_API_SHA256 = "59c51cbdca547132e5615c04d5cc368d8ddba9e24efc31728faeb7a18b4d6dce"

# (1.3.4's text, the board's), each found exactly as often as given.
BOARD_API = [
    ("    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,\n"
     "                 ssl=False, ssl_params={}):\n",
     "    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0,\n"
     "                 ssl=None):\n", 1),
    ("        self.ssl_params = ssl_params\n", "", 1),
    ("            import ussl\n"
     "            self.sock = ussl.wrap_socket(self.sock, **self.ssl_params)\n",
     "            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)\n", 1),
    ("        if self.user is not None:\n", "        if self.user:\n", 2),
    ("        elif op & 6 == 4:\n            assert 0\n\n",
     "        elif op & 6 == 4:\n            assert 0\n        return op\n\n", 1),
]


def board_api(text: str) -> str:
    for old, new, count in BOARD_API:
        if text.count(old) != count:
            raise SystemExit(f"{UMQTT_SIMPLE}: cannot apply the board's API change at {old.strip()!r}")
        text = text.replace(old, new)
    return text


def fetch_umqtt_simple(dest: Path) -> Path:
    target = dest / "umqtt" / "simple.py"
    if target.exists() and _sha256(target.read_bytes()) == BOARD_API_SHA256:
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
        raw = found[0].read_bytes()
        digest = _sha256(raw)
        if digest != UMQTT_SIMPLE_SHA256:
            raise SystemExit(f"{UMQTT_SIMPLE}: unexpected sha256 {digest}")
        board = board_api(raw.decode()).encode()
        if _sha256(board) != BOARD_API_SHA256:
            raise SystemExit(f"{UMQTT_SIMPLE} with the board's API: unexpected sha256 {_sha256(board)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(board)
    return target


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dest", type=Path, help="folder to put the modules in (e.g. build/mpylib)")
    args = ap.parse_args(argv)
    print(fetch_umqtt_simple(args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
