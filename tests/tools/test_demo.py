"""`meetkit demo` as a user runs it: the broker, the gateway and three simulated nodes on the wall
clock. The nodes fill in the last half hour as fast as they can, then run live; the test waits until
every node is live, opens the page at the URL the demo printed, runs every command the demo
suggests (in the folder the demo ran in, as the user would paste it) and checks each shows data
of the last hour, then stops the demo with SIGTERM as a service manager would: it must stop every
process it started and exit 0. A second test takes the demo's port first: the demo says so and how
to pick another, before starting anything.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from meetkit_tools.dev.waits import wait_for
from meetkit_tools.services import free_port

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


class Demo:
    def __init__(self, cwd: Path, *args: str) -> None:
        self.out: list[str] = []
        self.proc = subprocess.Popen([str(BIN / "meetkit"), "demo", *args], cwd=cwd, env=_env(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    @property
    def text(self) -> str:
        return "".join(self.out)

    def last_table(self) -> str:
        tables = self.text.split("\n\n")
        return next((t for t in reversed(tables) if t.lstrip().startswith("node ")), "")


def test_the_demo_runs_on_the_wall_clock_and_every_command_it_prints_shows_data(tmp_path: Path) -> None:
    port = free_port()
    demo = Demo(tmp_path, "--workdir", "demo", "--backfill", "0.5", "--port", str(port))
    try:
        banner = wait_for(lambda: re.search(r"try, in another terminal:\n((?:  .*\n)+)", demo.text), 60,
                          "the demo's banner").group(0)
        assert f"status page: http://127.0.0.1:{port}/" in demo.text, demo.text
        assert "meetkit demo --port N" in demo.text and "MEETKIT_DEMO_PORT=N" in demo.text, demo.text
        cmds = [line.strip() for line in banner.splitlines()[1:]]
        assert len(cmds) == 3 and all(c.startswith("meetkit-gateway ") for c in cmds), cmds
        assert any("--since 1h" in c for c in cmds) and any("export" in c and "--since 7d" in c for c in cmds)
        # the backfill: half an hour of records, then every node's newest record is within two minutes
        # of the wall clock (the table's "behind" column says "live")
        nodes = ("street-01", "road-01", "site-01")

        def live() -> bool:
            table = demo.last_table()
            return all(re.search(rf"^{n}\s.*\slive\s", table, re.M) for n in nodes)

        wait_for(lambda: live() or demo.proc.poll() is not None, 600, "every node live on the wall clock", step=1)
        assert demo.proc.poll() is None, demo.text[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/nodes", timeout=10) as r:
            doc = json.load(r)
        now = time.time()
        seen = {n["node"]: n for n in doc["nodes"]}
        assert set(seen) == set(nodes), seen.keys()
        for n in nodes:
            # the newest record's interval started within the last few minutes: stamped on the wall clock
            assert now - 300 < seen[n]["last_start"] <= now, (n, seen[n]["last_start"], now)
            assert seen[n]["records"] >= 25, seen[n]  # the half hour filled in, a record a minute
        for cmd in cmds:
            done = subprocess.run(cmd, shell=True, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
            out = done.stdout
            if " readings " in cmd:
                assert "no readings" not in out
                for n in nodes:
                    assert re.search(rf"^{n}\s", out, re.M), (cmd, out[:2000])
            elif " nodes " in cmd:
                for n in nodes:
                    assert n in out, (cmd, out)
            else:  # export of road-01's LAeq over 7 days: a header and a row per minute since the backfill began
                rows = [line for line in out.splitlines() if "road-01" in line]
                assert len(rows) >= 25 and all("LAeq" in r for r in rows), (cmd, out[:2000])
    finally:
        if demo.proc.poll() is None:
            demo.proc.send_signal(signal.SIGTERM)
        code = demo.proc.wait(timeout=60)
        demo.reader.join(10)
    assert code == 0, demo.text[-3000:]
    assert "stopping: nodes, gateway, broker" in demo.text
    with socket.socket() as s:  # the gateway stopped: its page's port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_taken_port_is_said_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run([str(BIN / "meetkit"), "demo", "--workdir", str(tmp_path / "demo")], cwd=tmp_path,
                              env=dict(_env(), MEETKIT_DEMO_PORT=str(port)), capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 2, done
    assert f"port {port} for the status page is taken by another program" in done.stderr, done.stderr
    assert "meetkit demo --port N" in done.stderr and "MEETKIT_DEMO_PORT=N make demo" in done.stderr
    assert not (tmp_path / "demo").exists(), "nothing started"
