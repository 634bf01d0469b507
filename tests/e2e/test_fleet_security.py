"""Running the fleet over the air is safe against a node that misbehaves and against a release that
is wrong, on a real Mosquitto running what `meetkit broker init` generates (accounts, the ACL, node
keys), the real `meetkit-gateway run`, and two simulated nodes running the firmware (as .mpy,
release 0.1.9) with their generated accounts and node keys (tools/dev/fleetsite.py).

- sa-01's account cannot publish configuration, releases, pieces or commands to sb-01's topics nor
  to its own: the broker answers "not authorised" (MQTT 5), and sb-01 never acts on them; the same
  message from the gateway's account reaches sb-01, which refuses it (signed with sa-01's key).
- A release with a bad signature, or a downgrade without --force, is refused by the gateway and
  named; a release for another board than the node's (the register saying the wrong board) is
  refused by the node, named in its event, and shown by `fleet status` with the rollout halted.
- No secret (the Wi-Fi passwords, the broker passwords, the node keys, the release key, the
  gateway's broker password) appears in a status, an event, a node's console, the gateway's log,
  `fleet status` or the page (/api/nodes, /metrics, /).

What is not here: a tampered piece and an offer with a bad MAC reach a node only from the gateway's
account (the ACL, first test); the node's own checks of them are tests/sim/test_fleet_node.py's.
"""

from __future__ import annotations

import json
import queue
import shutil
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from meetkit_tools import broker as broker_tool
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.fleetsite import Site, firmware_as
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.paths import FIRMWARE

A, B = "sa-01", "sb-01"
OLD = "0.1.9"
NEW = fleetsim.fw_version()
LAB_PW = "lab-Pa55-7f3kQ"          # the simulated access point's password, on the nodes' flash
SPARE_PW = "spare-S3cret-9wXz"     # a second network's, sent to sb-01 by the gateway
S3 = "esp32-s3-devkitc-1"


class V5:
    """A paho client speaking MQTT 5 (the broker names what it refuses in PUBACK), by account."""

    def __init__(self, site: Site, user: str, password: str, client_id: str) -> None:
        self.acks: "queue.Queue[tuple[int, Any]]" = queue.Queue()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.put((mid, rc))
        self.c.connect(site.broker.host, site.broker.plain_port)
        self.c.loop_start()
        wait_for(self.c.is_connected, 10, f"{user} connected")

    def pub(self, topic: str, payload: bytes, retain: bool = False) -> str:
        """What the broker answered to a QoS 1 publish: its reason code's name."""
        info = self.c.publish(topic, payload, qos=1, retain=retain, properties=Properties(PacketTypes.PUBLISH))
        mid, rc = self.acks.get(timeout=10)
        assert mid == info.mid
        return str(rc)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fleet-security")
    s = Site(tmp, [A, B], boards={A: S3},   # the register is wrong about sa-01's board
             register={B: {"wifi": '[{ ssid = "meetkit-lab" }, { ssid = "spare" }]'}},
             wifi_secrets={"meetkit-lab": LAB_PW, "spare": SPARE_PW})
    try:
        fw = firmware_as(OLD, tmp / "fw-old")
        for n in (A, B):
            s.node(n, fw, wifi_ap=("meetkit-lab", LAB_PW))
        wait_for(lambda: all(r["fw"] == OLD for r in s.status_rows().values()) and len(s.status_rows()) == 2, 180,
                 "both nodes heard by the gateway")
        yield s
    finally:
        s.close()


def envelope_for(site: Site, to: str, signer: str, body: dict[str, Any]) -> bytes:
    return fleetsim.envelope(bytes.fromhex(site.node_keys[signer]), dict({"node": to}, **body))


def test_a_node_cannot_push_configuration_releases_or_commands_to_another(site: Site) -> None:
    gw_pw = (site.broker.out / broker_tool.GATEWAY_PASSWORD).read_text().strip()
    a = V5(site, A, site.broker.password(A), client_id=f"{A}-forger")
    forged = {"config": {"version": 99, "config": {"interval_s": 10}},
              "ota": {"release": {"v": 1, "version": "9.9.9", "files": []}, "force": True},
              "cmd": {"cmd": "selftest", "id": 77}}
    answers = {}
    for target in (B, A):   # another node's topics, and its own
        for sub, body in forged.items():
            answers[f"{target}/{sub}"] = a.pub(f"meetkit/{target}/{sub}", envelope_for(site, target, A, body),
                                               retain=sub == "config")
        answers[f"{target}/ota/chunk"] = a.pub(f"meetkit/{target}/ota/chunk",
                                               b'{"release":"9.9.9","file":0,"off":0}\nforged')
    a.close()
    assert answers == {k: "Not authorized" for k in answers}, answers
    # the control: the same command from the gateway's account reaches sb-01, which refuses it by
    # its MAC (sa-01's key): had the broker let sa-01's through, sb-01 would have said so the same way
    g = V5(site, broker_tool.GATEWAY_USER, gw_pw, client_id="test-gateway-account")
    assert g.pub(f"meetkit/{B}/cmd", envelope_for(site, B, A, forged["cmd"])) == "Success"
    g.close()
    refused = wait_for(lambda: [e for e in site.events(B) if e.get("state") == "refused"], 120,
                       "sb-01's refusal of the command signed with sa-01's key")
    assert [(e["kind"], e["reason"]) for e in refused] == [("cmd", "bad mac")]
    # and the operator's own command is answered: sb-01 acted on nothing of sa-01's
    r = site.cli("fleet", "selftest", B, "--wait", "120", timeout=180)
    assert f"{B} answered at" in r.stdout, r.stdout
    ev = site.events(B)
    assert [e for e in ev if e.get("state") == "refused"] == refused
    assert not [e for e in ev if e.get("kind") == "ota" or e.get("version") == 99 or e.get("id") == 77]
    text = site.nodes[B].console_text()
    assert "9.9.9" not in text and "configuration 99" not in text and "interval 10 s" not in text
    assert not [e for e in site.events(A) if e.get("state") == "refused"]


def test_a_bad_signature_and_a_downgrade_are_refused_by_the_gateway(site: Site, tmp_path: Path) -> None:
    good = site.tmp / "releases" / NEW
    if not good.exists():
        site.build_release(FIRMWARE, good)
    forged = tmp_path / "forged"
    shutil.copytree(good, forged)
    sig = forged / "release.sig"
    sig.write_bytes(bytes([sig.read_bytes()[0] ^ 1]) + sig.read_bytes()[1:])
    r = site.cli("release", "add", str(forged), ok=False)
    assert "release.sig: bad signature" in r.stderr, r.stderr
    firmware_as("0.1.5", tmp_path / "fw-0.1.5")   # and beside it the sources with FW_VERSION 0.1.5
    site.build_release(tmp_path / "fw-0.1.5-src", tmp_path / "older" / "0.1.5")
    site.cli("release", "add", str(tmp_path / "older" / "0.1.5"))
    r = site.cli("fleet", "update", "--release", "0.1.5", "--nodes", B, ok=False)
    assert f"{B}: runs {OLD}, newer than 0.1.5: a downgrade needs --force" in r.stderr, r.stderr
    assert "nothing started" in r.stderr
    assert not site.events(B, "ota")


def test_a_release_for_another_board_is_refused_by_the_node_and_halts_the_rollout(site: Site,
                                                                                   tmp_path: Path) -> None:
    out = tmp_path / "s3" / NEW
    site.build_release(FIRMWARE, out, boards=[S3])
    site.cli("release", "add", str(out))
    site.cli("fleet", "update", "--release", NEW, "--nodes", A, "--canary", "1")
    ev = wait_for(lambda: [e for e in site.events(A, "ota") if e.get("state") == "refused"], 180,
                  "sa-01's refusal")
    why = f"made for boards {S3}, not esp32-devkitc"
    assert ev[-1]["reason"] == why and ev[-1]["release"] == NEW
    text = wait_for(lambda: (t := site.cli("fleet", "status").stdout) and "HALTED" in t and t, 60,
                    "the rollout halted")
    assert f"rollout 1: release {NEW}, HALTED: {A} (canary) refused: {why}" in text, text
    assert f"rollout 1 of {NEW} (halted): canary, failed: refused: {why}" in text, text   # under the node
    assert site.status_rows()[A]["fw"] == OLD


def test_no_secret_appears_anywhere_an_operator_or_a_node_shows(site: Site) -> None:
    # sb-01 runs the configuration with both networks (their passwords from the secrets file)
    wait_for(lambda: (r := site.status_rows().get(B)) and r["running"] not in ("-", "0") and r["wanted"] == r["running"],
             240, "sb-01 running the register's configuration")
    node_b = site.nodes[B]
    secrets = {"wifi": [LAB_PW, SPARE_PW],
               "broker passwords": [site.broker.password(A), site.broker.password(B),
                                    (site.broker.out / broker_tool.GATEWAY_PASSWORD).read_text().strip()],
               "node keys": list(site.node_keys.values()),
               "release key": [line for line in site.release_key.read_text().splitlines() if "-----" not in line]}
    url = site.gw.status_url()
    shown = {"fleet status": site.cli("fleet", "status", "--rollouts").stdout
             + "".join(site.cli("fleet", "status", "--node", n).stdout for n in (A, B)),
             "gateway log": site.gw.log_text(),
             "events": json.dumps(site.events(A) + site.events(B)),
             "consoles": site.nodes[A].console_text() + node_b.console_text(),
             "page": "".join(urllib.request.urlopen(url + p, timeout=10).read().decode(errors="replace")
                             for p in ("/", "/api/nodes", "/metrics"))}
    statuses = []
    mon = V5(site, broker_tool.MONITOR_USER,
             (site.broker.out / broker_tool.MONITOR_PASSWORD).read_text().strip(), client_id="test-monitor")
    got: "queue.Queue[bytes]" = queue.Queue()
    mon.c.on_message = lambda c, u, m: got.put(bytes(m.payload))
    mon.c.subscribe("meetkit/+/status", qos=1)
    for _ in range(2):
        statuses.append(got.get(timeout=10).decode(errors="replace"))
    mon.close()
    shown["statuses"] = "".join(statuses)
    assert "password (secret)" in shown["fleet status"], shown["fleet status"]
    for what, values in secrets.items():
        for v in values:
            assert v and len(v) >= 8
            for where, text in shown.items():
                assert v not in text, f"a {what} secret in the {where}"
    # and yet they went where they are needed: the spare network's password is on sb-01's flash
    node_b.stop()
    wifi = json.loads(node_b.read_flash("config.json") or b"{}")["wifi"]
    assert wifi == [{"ssid": "meetkit-lab", "password": LAB_PW}, {"ssid": "spare", "password": SPARE_PW}], wifi
