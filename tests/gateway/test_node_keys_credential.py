"""Node keys handed to the service as a systemd credential (docs/operator.md, "Remote
configuration"): systemd copies `node-keys.json` into the service's $CREDENTIALS_DIRECTORY once, at
start, and nothing renews the copy but a restart. A node added with `meetkit broker add-node` is
then not in the gateway's copy: the gateway says so with the restart that fixes it, not with the
`add-node` the operator ran already, and after the restart it sends the node its configuration.

The process test plays systemd's part by hand: it copies the broker folder's files into a
credentials folder before each start and runs the real `meetkit-gateway run` with
$CREDENTIALS_DIRECTORY set, as systemd does; the broker folder is made by the real `meetkit broker
init` and `add-node`, and the node is a fake one that checks the MAC with its own key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from meetkit_gateway.credentials import RESTART, is_credential
from meetkit_gateway.fleet_secrets import FleetSecrets
from meetkit_gateway.signed import NodeKeys
from meetkit_tools import fleetfile
from meetkit_tools.services import GatewayProcess
from tests.conftest import Broker

from .conftest import CLI, wait_for
from .fakenode import FakeNode

MEETKIT = str(Path(sys.executable).parent / "meetkit")
UNIT = "meetkit-gateway.service"


def test_a_file_in_the_credentials_folder_is_a_credential_and_others_are_not(tmp_path: Path):
    creds = tmp_path / "credentials" / UNIT
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert is_credential(creds / "node-keys", env)
    assert is_credential(Path(f"/run/credentials/{UNIT}/node-keys"), {})  # systemd's place, whatever the env
    assert not is_credential(tmp_path / "node-keys.json", env)
    assert not is_credential(tmp_path / "credentials" / "elsewhere", env)
    assert not is_credential(Path("/run/credentialsX/node-keys"), {}) and not is_credential(None, env)


def test_a_node_missing_from_a_credential_copy_is_said_with_the_restart(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    creds = tmp_path / "credentials" / UNIT
    creds.mkdir(parents=True)
    (creds / "node-keys").write_text(json.dumps({"nodes": {"ams-001": "ab" * 32}}))
    (creds / "broker-secrets").write_text(json.dumps({"nodes": {"ams-001": "pw-1"}}))
    (creds / "fleet-secrets").write_text('[wifi]\nlab = "pw-lab"\n')
    own = tmp_path / "node-keys.json"
    shutil.copy(creds / "node-keys", own)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    keys = NodeKeys(creds / "node-keys")
    assert keys.key("ams-001") == bytes.fromhex("ab" * 32) and keys.problem("ams-001") is None
    assert keys.problem("ams-002") == (
        f"no key for ams-002: {creds / 'node-keys'} is the gateway's copy of a service credential, made when it "
        f"started: after `meetkit broker add-node ams-002`, restart the gateway (`{RESTART}`; a reload does not "
        "renew a credential)")
    # read from its own path, the file is read again when it changes: add-node is all it takes
    assert NodeKeys(own).problem("ams-002") == (f"{own}: no key for ams-002 "
                                                "(`meetkit broker add-node ams-002` makes one)")
    secrets = FleetSecrets(creds / "fleet-secrets", creds / "broker-secrets")
    _, why = secrets.broker_password("ams-002")
    assert why == (f"the broker password of ams-002: not in {creds / 'broker-secrets'} is the gateway's copy of a "
                   f"service credential, made when it started: after `meetkit broker add-node ams-002`, restart the "
                   f"gateway (`{RESTART}`; a reload does not renew a credential)")
    _, why = secrets.wifi_password("street")
    assert why is not None and why.startswith(f"the Wi-Fi password of 'street': not in {creds / 'fleet-secrets'}")
    assert why.endswith(f"after adding it to the file it is copied from, restart the gateway (`{RESTART}`; a reload "
                        "does not renew a credential)")


def test_add_node_names_the_gateway_restart(tmp_path: Path):
    out = tmp_path / "broker"
    subprocess.run([MEETKIT, "broker", "init", "--out", str(out), "--node", "ams-001"], check=True,
                   capture_output=True, timeout=120)
    r = subprocess.run([MEETKIT, "broker", "add-node", "ams-002", "--out", str(out)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ("then the gateway: where it takes node-keys.json and secrets.json as service credentials "
            "(LoadCredential=, docs/operator.md \"Remote configuration\"), `sudo systemctl restart meetkit-gateway`"
            ) in r.stdout
    assert "until the restart the gateway signs nothing for ams-002" in r.stdout


def test_a_node_added_after_the_gateway_started_gets_its_configuration_after_the_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    out = tmp_path / "broker"  # /etc/meetkit/broker
    subprocess.run([MEETKIT, "broker", "init", "--out", str(out), "--node", "ams-001"], check=True,
                   capture_output=True, timeout=120)
    creds = tmp_path / "credentials" / UNIT  # /run/credentials/meetkit-gateway.service

    def systemd_copies() -> None:  # what systemd does at each start of the service (LoadCredential=)
        creds.mkdir(parents=True, exist_ok=True)
        for name, src in (("node-keys", "node-keys.json"), ("broker-secrets", "secrets.json")):
            shutil.copy(out / src, creds / name)
            (creds / name).chmod(0o400)

    register = tmp_path / "fleet.toml"
    for n in ("ams-001", "ams-002"):
        fleetfile.upsert(register, n, {"config": {"interval_s": 120}})
    broker = Broker(tmp_path).start()
    gw = GatewayProcess(tmp_path / "gw", "127.0.0.1", broker.port, extra_toml=(
        f'\n[fleet]\npath = "{register}"\nnode_keys = "{creds / "node-keys"}"\n'
        f'broker_secrets = "{creds / "broker-secrets"}"\n'))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))  # the gateway process inherits it, as from systemd
    nodes: list[FakeNode] = []
    try:
        systemd_copies()
        gw.start()
        keys = lambda: json.loads((out / "node-keys.json").read_text())["nodes"]  # noqa: E731
        nodes.append(FakeNode(broker.port, "ams-001", bytes.fromhex(keys()["ams-001"])))
        nodes[0].wait_running(1)
        # the technician adds ams-002 on the Pi: the broker folder has its key, the gateway's copy not
        r = subprocess.run([MEETKIT, "broker", "add-node", "ams-002", "--out", str(out)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "sudo systemctl restart meetkit-gateway" in r.stdout, r.stdout + r.stderr
        nodes.append(FakeNode(broker.port, "ams-002", bytes.fromhex(keys()["ams-002"])))
        status = lambda: subprocess.run([CLI, "fleet", "status", "--config", str(gw.conf)],  # noqa: E731
                                        capture_output=True, text=True, timeout=60).stdout
        want = (f"config held back: no key for ams-002: {creds / 'node-keys'} is the gateway's copy of a service "
                "credential, made when it started: after `meetkit broker add-node ams-002`, restart the gateway "
                f"(`{RESTART}`; a reload does not renew a credential)")
        wait_for(lambda: want in status(), 20, "fleet status to name the restart")
        assert nodes[1].taken() == []  # nothing signed with a key the gateway does not have
        with urllib.request.urlopen(gw.status_url() + "/api/nodes", timeout=10) as resp:  # the page's table
            shown = {n["node"]: n for n in json.load(resp)["nodes"]}
        assert "config held back: " + shown["ams-002"]["config"]["problem"] == want
        # the restart: systemd copies the credentials again, and the node gets its configuration
        gw.stop()
        systemd_copies()
        gw.start()
        nodes[1].wait_running(1)
        assert nodes[1].config == {"interval_s": 120}
        wait_for(lambda: "held back" not in status(), 20, "nothing held back any more")
    finally:
        for n in nodes:
            n.close()
        gw.stop()
        broker.stop()
