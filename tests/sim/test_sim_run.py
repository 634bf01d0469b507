"""`meetkit sim run` against a secured gateway as `meetkit broker init` sets it up: a real
Mosquitto with its accounts, ACL and TLS listener, the real gateway process logged in with its
generated account, one simulated node run by the CLI with --user, --password-file (broker init's
secrets.json), --tls and --ca. The run ends with the records the gateway acknowledged and exits 0;
with a wrong password it says why once, not at every retry, and exits 1."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev.waits import wait_for
from meetkit_tools.services import FleetBroker, GatewayProcess

NODE = "sr-01"
FINAL = re.compile(r"node sr-01: delivered (\d+) of (\d+) records \(acknowledged by the gateway: committed to its "
                   r"database\)(.*)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    work = tmp_path_factory.mktemp("sim-run")
    broker = FleetBroker(work, [NODE]).start()
    gateway = GatewayProcess(work, broker.host, broker.plain_port, client_id="meetkit-sim-run",
                             mqtt_toml=broker.gateway_toml()).start()
    try:
        gateway.wait_log(r"connected to mqtt://gateway@127\.0\.0\.1:\d+")
        yield {"work": work, "broker": broker, "gateway": gateway}
    finally:
        gateway.stop()
        broker.stop()


def sim_run(site: dict, *args: str, workdir: str) -> subprocess.CompletedProcess[str]:
    b: FleetBroker = site["broker"]
    return subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "sim", "run", "--node-id", NODE,
                           "--hours", "0.25", "--broker", f"127.0.0.1:{b.tls_port}", "--tls",
                           "--ca", str(b.out / "ca" / "ca.crt"), "--workdir", str(site["work"] / workdir), *args],
                          capture_output=True, text=True, timeout=600)


def stored(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT count(*) FROM records WHERE node = ?", (NODE,)).fetchone()[0]


def test_a_node_with_broker_inits_account_delivers_and_says_how_many(site: dict) -> None:
    b: FleetBroker = site["broker"]
    r = sim_run(site, "--password-file", str(b.out / "secrets.json"), workdir="good")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert f"broker 127.0.0.1:{b.tls_port} (tls) as {NODE}" in r.stdout
    m = FINAL.fullmatch(r.stdout.splitlines()[-1])
    assert m, r.stdout[-2000:]
    delivered, made = int(m[1]), int(m[2])
    assert made == 15 and made - 2 <= delivered <= made   # the last may still be on its way when the run ends
    # what the node counts as acknowledged is in the gateway's database
    wait_for(lambda: stored(site["gateway"].db) >= delivered, 30, "the acknowledged records stored")
    assert delivered <= stored(site["gateway"].db) <= made
    assert b.password(NODE) not in r.stdout + r.stderr


def test_a_wrong_password_is_said_once_and_exits_1(site: dict, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    r = sim_run(site, "--user", NODE, "--password-file", str(wrong), workdir="wrong")
    assert r.returncode == 1, r.stdout[-3000:]
    lines = r.stdout.splitlines()
    m = FINAL.fullmatch(lines[-1])
    assert m and m[1] == "0" and int(m[2]) > 0, lines[-1]
    assert m[3] == "; none: the broker refused the login (check --user and --password-file)"
    refused = [ln for ln in lines if "mqtt: connect" in ln and "not authorised" in ln]
    assert len(refused) == 1, refused   # the node's first refusal; the retries are counted
    n = re.search(rf"node {NODE}: connect 127\.0\.0\.1:\d+ \(tls\) failed (\d+) times \(broker refused the login, "
                  r"code 5: not authorised", r.stdout)
    assert n and int(n[1]) >= 5, r.stdout[-2000:]
    assert sum("not authorised" in ln for ln in lines) <= 3   # the self-test's line, the first refusal, the count


def test_wrong_options_are_refused_before_anything_runs(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "sim", "run", "--workdir",
                               str(tmp_path / "n"), *args], capture_output=True, text=True, timeout=60)

    r = run("--tls")
    assert r.returncode == 2 and "--tls needs --ca" in r.stderr
    r = run("--user", "sr-01")
    assert r.returncode == 2 and "--user sr-01: give its password with --password-file" in r.stderr
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"nodes": {"sr-02": "x"}}')
    r = run("--password-file", str(secrets), "--node-id", "sr-01")
    assert r.returncode == 2 and "no password for sr-01 in it (`meetkit broker add-node sr-01` makes one)" in r.stderr
    assert not (tmp_path / "n").exists()


def test_the_simulator_doc_has_every_option_of_sim_run_and_every_key_of_the_scenario_files() -> None:
    import json

    from meetkit_tools.cli import build_parser
    from meetkit_tools.paths import ROOT, SCENARIOS

    doc = (ROOT / "docs" / "simulator.md").read_text()
    section = doc[doc.index("## Running one node: `meetkit sim run`"):doc.index("## A simulated board on a serial port")]
    sim = next(a for a in build_parser()._actions if a.dest == "cmd").choices["sim"]
    run = next(a for a in sim._actions if a.dest == "sim_cmd").choices["run"]
    options = [o for a in run._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert len(options) >= 12
    assert [o for o in options if f"`{o}" not in section] == []
    assert "**Exit status**" in section and "delivered N of M records (acknowledged by the gateway" in section
    scen = doc[doc.index("## Scenario files"):doc.index("## The MicroPython side")]
    for path in sorted(SCENARIOS.glob("*.json")):
        s = json.loads(path.read_text())
        assert f"`{path.stem}`" in scen, path.stem
        assert [k for k in [*s, *s["truth"]] if f"`{k}`" not in scen] == [], path.name
        assert [f["kind"] for f in s["faults"] if f"`{f['kind']}`" not in scen] == [], path.name
