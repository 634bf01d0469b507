"""`meetkit provision --neighbour HOST[:PORT]` (docs/technician.md, "A list of brokers"): the node's
broker list is set at provisioning, its own gateway's broker first, then the neighbours' in the
order given, each with the node's one account, TLS and CA; the node's own config rules (the
firmware's config.py under MicroPython) take the list as it fails over along it."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetkit_tools import provision as pv
from tests.firmware.test_config import load
from tests.tools.test_provision_inputs import BASE, PW, meetkit


def options(**kw: object) -> pv.Options:
    base = dict(port="/dev/null", board="esp32-devkitc", node_id="ut-0001", wifi_ssid="lab", wifi_password="wifi-pw",
                broker="10.0.1.1", tls=True, broker_user="ut-0001", broker_password="node-pw")
    return pv.Options(**(base | kw))  # type: ignore[arg-type]


def test_the_list_is_home_first_then_the_neighbours_with_one_account(tmp_path: Path) -> None:
    said: list[tuple[str, str]] = []
    cfg, _ = pv.make_config(options(neighbours=["10.0.1.2", "10.0.2.1:9883"]), pv.load_board("esp32-devkitc"), None,
                            lambda k, m: said.append((k, m)))
    assert cfg["broker"] == [
        {"host": "10.0.1.1", "tls": True, "user": "ut-0001", "password": "node-pw"},
        {"host": "10.0.1.2", "tls": True, "user": "ut-0001", "password": "node-pw"},
        {"host": "10.0.2.1", "tls": True, "user": "ut-0001", "password": "node-pw", "port": 9883},
    ]
    assert ("broker", 'fails over to 10.0.1.2, 10.0.2.1:9883 (docs/technician.md, "A list of brokers")') in said
    # the node takes it: three brokers, TLS on each (8883 unless given), the first in use
    r, out = load(tmp_path, cfg)
    assert r["problems"] == [], out
    assert [(b["host"], b["port"], b["tls"]) for b in r["cfg"]["brokers"]] == [
        ("10.0.1.1", 8883, True), ("10.0.1.2", 8883, True), ("10.0.2.1", 9883, True)]
    assert r["cfg"]["broker"]["host"] == "10.0.1.1"


def test_without_neighbours_the_section_is_one_broker_as_before() -> None:
    cfg, _ = pv.make_config(options(), pv.load_board("esp32-devkitc"), None, lambda k, m: None)
    assert cfg["broker"] == {"host": "10.0.1.1", "tls": True, "user": "ut-0001", "password": "node-pw"}


@pytest.mark.parametrize("args, message", [
    (["--neighbour", "10.0.1.2", "--broker", ""], "--neighbour: needs --broker"),
    (["--neighbour", "10.0.1.2:99999"], "config.broker[1].port: 99999 is not a whole number from 1 to 65535"),
])
def test_a_neighbour_without_a_broker_or_with_a_bad_port_is_refused(tmp_path: Path, args: list[str],
                                                                    message: str) -> None:
    res = meetkit(*BASE, "--port", str(tmp_path / "ttyUSB9"), *args, env=PW)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stdout + res.stderr
