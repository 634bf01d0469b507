"""Remote configuration from the fleet register, end to end through the real parts: a real
Mosquitto, the real `meetkit-gateway run` process, the real CLI, and fake nodes (fakenode.py) that
check the MAC with their own key and answer as docs/payload.md says a node does.

- a register's configuration goes out retained and signed, with the Wi-Fi password from the
  secrets file and the node's broker account from the broker folder's secrets.json;
- an edit becomes the next version; an unchanged register (touched, rewritten, the gateway
  restarted) publishes nothing new;
- a node's refusals are shown with the rule's reason; what cannot be made (a Wi-Fi network without
  a password, a node without a key) is held back and said, and nothing is published for it;
- a node that says it runs a version above the wanted one (the gateway lost its database) gets the
  same configuration again under the next version;
- a node that reverted a configuration on trial is shown as such (page, API, CLI, /metrics), is
  not sent that version again as new, and takes the next one the register makes;
- `fleet selftest` sends the signed command and shows the answer; a node with the wrong key says
  `bad mac` and that is shown; bad events are dead-lettered; crash reports kept, bounded, shown;
- no secret is in any output: every log, CLI output, page, API answer, /metrics and the store's
  files are searched for the test's passwords.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from meetkit_gateway.store import Store
from meetkit_tools import fleetfile
from meetkit_tools.services import GatewayProcess
from tests.conftest import Broker
from meetkit_tools.dev.chromium import browse
from tests.metrics import parse_exposition, sample

from .conftest import CLI, Listener, Publisher, wait_for
from .fakenode import FakeNode

WIFI_PW = "wifi-SECRET-7c1d-lab"
OTHER_WIFI_PW = "wifi-SECRET-0b2e-street"
BROKER_PW = {"ams-001": "broker-SECRET-a1f3", "ams-002": "broker-SECRET-b2e4", "ams-003": "broker-SECRET-c3d5"}
SECRETS = (WIFI_PW, OTHER_WIFI_PW, *BROKER_PW.values())
NODES = ("ams-001", "ams-002", "ams-003", "ams-004")
KEYS = {n: os.urandom(32) for n in NODES[:3]}  # ams-004 has no key


class Fleet:
    """The files of a fleet on the gateway: the register, the node keys, the Wi-Fi secrets, the broker
    folder's secrets.json; the gateway process reading them; the outputs gathered for the secret search."""

    def __init__(self, tmp: Path, broker: Broker) -> None:
        self.tmp = tmp
        self.register = tmp / "fleet.toml"
        (tmp / "node-keys.json").write_text(json.dumps({"nodes": {n: k.hex() for n, k in KEYS.items()}}))
        (tmp / "fleet-secrets.toml").write_text(f'[wifi]\nlab = "{WIFI_PW}"\nstreet = "{OTHER_WIFI_PW}"\n')
        (tmp / "secrets.json").write_text(json.dumps({"prefix": "meetkit", "nodes": BROKER_PW}))
        for f in ("node-keys.json", "fleet-secrets.toml", "secrets.json"):
            (tmp / f).chmod(0o600)
        self.gateway = GatewayProcess(tmp / "gw", "127.0.0.1", broker.port, extra_toml=(
            f'\n[fleet]\npath = "{self.register}"\nnode_keys = "{tmp / "node-keys.json"}"\n'
            f'secrets = "{tmp / "fleet-secrets.toml"}"\nbroker_secrets = "{tmp / "secrets.json"}"\n'))
        self.outputs: list[str] = []
        self.url = ""

    def start(self) -> "Fleet":
        before = len(self.gateway.log_text())  # the log goes on over restarts: this run's address
        self.gateway.start()
        self.url = wait_for(lambda: re.search(r"status page and /metrics on (http://\S+)",
                                              self.gateway.log_text()[before:]), 15, "the status page")[1]
        return self

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            text = r.read().decode()
        self.outputs.append(text)
        return text

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["node"]: n for n in json.loads(self.get("/api/nodes"))["nodes"]}

    def metrics(self) -> dict[str, dict[str, Any]]:
        return parse_exposition(self.get("/metrics"))

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([CLI, *args, "--config", str(self.gateway.conf)], capture_output=True, text=True,
                           timeout=timeout)
        self.outputs += [r.stdout, r.stderr]
        return r

    def store(self) -> Store:
        return Store(self.gateway.db, readonly=True)

    def leaks(self, store: bool = True) -> list[str]:
        """Where a secret shows: the outputs gathered, the gateway's log, the broker's log, and with
        `store` the store's files (database and WAL)."""
        texts = {f"output {i}": t for i, t in enumerate(self.outputs)}
        texts["gateway log"] = self.gateway.log_text()
        for p in [*self.tmp.glob("mosquitto-*.log"), *(self.gateway.workdir.glob("gateway.db*") if store else ())]:
            texts[p.name] = p.read_bytes().decode("latin-1")
        return [f"{where}: {s}" for where, t in texts.items() for s in SECRETS if s in t]


def opened(key: bytes, doc: dict[str, Any]) -> dict[str, Any]:
    """A signed envelope's body, its MAC checked as a node checks it."""
    assert set(doc) == {"v", "body", "mac"} and doc["v"] == 1
    assert hmac.compare_digest(hmac.new(key, doc["body"].encode(), hashlib.sha256).hexdigest(), doc["mac"])
    return json.loads(doc["body"])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    broker = Broker(tmp_path, extra_conf="log_type all\n").start()
    f = Fleet(tmp_path, broker)
    f.broker = broker  # type: ignore[attr-defined]
    try:
        yield f
    finally:
        f.gateway.stop()
        broker.stop()


def configs(listener: Listener, node: str) -> list[dict[str, Any]]:
    """The bodies of `node`'s configuration messages seen so far, MACs checked."""
    return [opened(KEYS[node], doc) for doc in listener.on(f"meetkit/{node}/config")]


def test_register_edits_go_out_as_new_versions_retained_and_signed_and_nothing_else(fleet: Fleet):
    fleetfile.upsert(fleet.register, "ams-001", {"noise_offset_db": -1.3, "config": {
        "interval_s": 60, "wifi": {"ssid": "lab"}, "broker": {"host": "meetkit-gw", "port": 8883, "tls": True}}})
    fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 30, "ntp_host": "ntp.lab"}})
    fleetfile.upsert(fleet.register, "ams-003", {"config": {"wifi": {"ssid": "nowhere"}}})  # no password for it
    fleetfile.upsert(fleet.register, "ams-004", {"config": {"interval_s": 60}})  # no node key
    fleet.start()
    port = fleet.broker.port  # type: ignore[attr-defined]
    seen = Listener("127.0.0.1", port, "meetkit/+/config")
    try:
        for node in ("ams-001", "ams-002"):
            seen.wait(f"meetkit/{node}/config", 1)
        late = Listener("127.0.0.1", port, "meetkit/+/config")  # subscribed after: the broker's retained copies
        for node in ("ams-001", "ams-002"):
            late.wait(f"meetkit/{node}/config", 1)
        late.close()
        assert [r for _, _, r in late.messages] == [True, True] and len(seen.messages) == 2
        (one,) = configs(seen, "ams-001")
        assert one == {"node": "ams-001", "version": 1, "config": {
            "interval_s": 60, "wifi": {"ssid": "lab", "password": WIFI_PW},
            "broker": {"host": "meetkit-gw", "port": 8883, "tls": True, "user": "ams-001",
                       "password": BROKER_PW["ams-001"]},
            "noise_offset_db": -1.3}}
        (two,) = configs(seen, "ams-002")
        assert two == {"node": "ams-002", "version": 1, "config": {"interval_s": 30, "ntp_host": "ntp.lab"}}

        # what cannot be made is held back, said, and not published
        def held() -> dict[str, Any] | None:
            n = fleet.nodes()
            return n if all(n.get(x, {}).get("config") and n[x]["config"]["problem"] for x in ("ams-003", "ams-004")) \
                else None

        nodes = wait_for(held, 15, "the held back configurations")
        assert "'nowhere'" in nodes["ams-003"]["config"]["problem"]
        assert "fleet-secrets.toml" in nodes["ams-003"]["config"]["problem"]
        assert "no key for ams-004" in nodes["ams-004"]["config"]["problem"]
        assert not seen.on("meetkit/ams-003/config") and not seen.on("meetkit/ams-004/config")

        # the node takes it, refusing one key with its rule's reason
        node = FakeNode(port, "ams-001", KEYS["ams-001"],
                        refuses={"noise_offset_db": "not a number from -20 to 20"})
        node.wait_running(1)
        assert node.config["wifi"]["password"] == WIFI_PW and "noise_offset_db" not in node.config
        n = wait_for(lambda: (d := fleet.nodes()["ams-001"])["config"]["running"] == 1 and d, 15, "running 1")
        assert n["config"] | {"last": None} == {
            "wanted": 1, "running": 1, "behind": False, "published": True, "problem": None, "last": None,
            "trial": None, "reverted": None,
            "shown": {"interval_s": 60, "wifi": {"ssid": "lab", "password": "(secret)"},
                      "broker": {"host": "meetkit-gw", "port": 8883, "tls": True, "user": "ams-001",
                                 "password": "(secret)"}, "noise_offset_db": -1.3}}
        assert n["config"]["last"]["refused"] == {"noise_offset_db": "not a number from -20 to 20"}
        assert n["config"]["last"]["applied"] == ["interval_s", "wifi", "broker"]

        # an edit while the node is away: version 2, retained, behind until the node is back
        node.close()
        fleetfile.upsert(fleet.register, "ams-001", {"config": {"interval_s": 120}})
        seen.wait("meetkit/ams-001/config", 2)
        assert [b["version"] for b in configs(seen, "ams-001")] == [1, 2]
        assert configs(seen, "ams-001")[1]["config"]["interval_s"] == 120
        wait_for(lambda: (c := fleet.nodes()["ams-001"]["config"])["published"] and c["wanted"] == 2, 15,
                 "version 2 taken by the broker")
        wait_for(lambda: sample(fleet.metrics(), "meetkit_node_config_behind", node="ams-001") == 1, 15, "behind")
        m = fleet.metrics()
        assert sample(m, "meetkit_node_config_wanted_version", node="ams-001") == 2
        assert sample(m, "meetkit_node_config_running_version", node="ams-001") == 1
        assert sample(m, "meetkit_node_config_refused_keys", node="ams-001") == 1
        assert sample(m, "meetkit_node_config_problem", node="ams-003") == 1
        assert sample(m, "meetkit_node_config_problem", node="ams-001") == 0
        status = fleet.cli("fleet", "status")
        assert status.returncode == 0, status.stderr
        table = status.stdout.split("\n\n")[0]  # the table, then a section per node
        rows = {line.split()[0]: line for line in table.splitlines() if line.startswith("ams-")}
        assert "2 / 1 sent" in rows["ams-001"] and "- / - held back" in rows["ams-003"]
        assert "  refused noise_offset_db: not a number from -20 to 20" in status.stdout
        assert "config held back: the Wi-Fi password of 'nowhere'" in status.stdout
        node = FakeNode(port, "ams-001", KEYS["ams-001"], running=1,
                        refuses={"noise_offset_db": "not a number from -20 to 20"})
        node.wait_running(2)  # the retained version 2 reaches it on its subscription
        wait_for(lambda: sample(fleet.metrics(), "meetkit_node_config_behind", node="ams-001") == 0, 15, "caught up")

        # unchanged: the file rewritten and touched, the gateway restarted: nothing new for ams-001
        wait_for(lambda: fleet.store().node_configs()["ams-001"].published_at, 10, "version 2 taken by the broker")
        fleetfile.upsert(fleet.register, "ams-001", {"config": {"interval_s": 120}})  # the same value, a new file
        os.utime(fleet.register)
        fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 40}})  # something to wait for
        seen.wait("meetkit/ams-002/config", 2)
        fleet.gateway.stop()
        fleet.start()
        fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 50}})
        seen.wait("meetkit/ams-002/config", 3)
        assert [b["version"] for b in configs(seen, "ams-002")] == [1, 2, 3]
        assert [b["version"] for b in configs(seen, "ams-001")] == [1, 2]  # one pass after, nothing new
        assert [b["version"] for b in node.taken()] == [2]

        # removed from the register's configuration: sent an empty one once (the node keeps its values);
        # one that was only ever held back is simply no more
        fleetfile.upsert(fleet.register, "ams-002", {"config": None})
        fleetfile.upsert(fleet.register, "ams-003", {"config": None})
        seen.wait("meetkit/ams-002/config", 4)
        assert configs(seen, "ams-002")[3] == {"node": "ams-002", "version": 4, "config": {}}
        wait_for(lambda: "ams-003" not in fleet.store().node_configs(), 10, "ams-003's held back row gone")
        assert not seen.on("meetkit/ams-003/config")
        node.close()
    finally:
        seen.close()
    assert fleet.leaks() == []


def test_a_node_running_a_version_above_the_wanted_one_gets_the_next(fleet: Fleet):
    """The gateway's database was lost (moved aside as corrupt, or replaced): the node runs 7 and
    would ignore versions 1..7 as replays."""
    fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 90, "wifi": {"ssid": "lab"}}})
    port = fleet.broker.port  # type: ignore[attr-defined]
    node = FakeNode(port, "ams-002", KEYS["ams-002"], running=7)  # its status (cfg 7) is retained
    try:
        fleet.start()
        node.wait_running(8)
        assert node.config == {"interval_s": 90, "wifi": {"ssid": "lab", "password": WIFI_PW}}
        assert [b["version"] for b in node.taken()][-1] == 8
        wait_for(lambda: fleet.nodes()["ams-002"]["config"]["running"] == 8, 30, "running 8")
    finally:
        node.close()
    assert fleet.leaks() == []


def test_a_configuration_the_node_reverted_is_shown_and_not_sent_again(fleet: Fleet):
    fleetfile.upsert(fleet.register, "ams-001", {"config": {"interval_s": 60}})
    fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 60}})
    fleet.start()
    port = fleet.broker.port  # type: ignore[attr-defined]
    seen = Listener("127.0.0.1", port, "meetkit/+/config")
    node = FakeNode(port, "ams-001", KEYS["ams-001"], fails=lambda c: c.get("broker", {}).get("host") == "wrong-gw")
    try:
        node.wait_running(1)
        fleetfile.upsert(fleet.register, "ams-001", {"config": {"interval_s": 60, "broker": {"host": "wrong-gw"}}})
        seen.wait("meetkit/ams-001/config", 2)
        wait_for(lambda: node.reverted == {2}, 20, "the node's revert")

        def shown() -> dict[str, Any] | None:
            c = fleet.nodes()["ams-001"]["config"]
            return c if c["reverted"] and c["running"] == 1 else None
        c = wait_for(shown, 20, "the revert on /api/nodes")
        assert (c["wanted"], c["running"], c["behind"], c["trial"]) == (2, 1, True, None)
        assert c["reverted"] | {"at": 0} == {"at": 0, "state": "reverted", "version": 2, "back_to": 1,
                                              "reason": "no broker within 300 s under version 2"}
        assert sample(fleet.metrics(), "meetkit_node_config_reverted", node="ams-001") == 1
        status = fleet.cli("fleet", "status")
        assert status.returncode == 0, status.stderr
        row = next(ln for ln in status.stdout.splitlines() if ln.startswith("ams-001"))
        assert "2 / 1 reverted" in row
        assert ("config 2 REVERTED by the node at " in status.stdout and ": no broker within 300 s under version 2; "
                "it runs 1 again and will not take 2" in status.stdout)
        dom = browse(fleet.url + "/", "--dump-dom").stdout
        fleet.outputs.append(dom)
        table = re.search(r'<table id="air">.*?</table>', dom, re.S)
        assert table, dom[:3000]
        rows = {m[1]: m[2] for m in re.finditer(r'<tr class="([^"]*)" data-node="ams-001">(.*?)</tr>', table[0], re.S)}
        ((cls, row),) = rows.items()
        assert cls == "bad"
        assert ('<span class="flag refused" title="no broker within 300 s under version 2">reverted by the node</span>'
                in row), row
        assert "runs 1 again; will not take 2: no broker within 300 s under version 2" in row
        # not sent again as new: a pass for another node goes by, ams-001 stays at the version it reverted
        fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 90}})
        seen.wait("meetkit/ams-002/config", 2)
        fleet.gateway.stop()   # nor after a restart
        fleet.start()
        fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 120}})
        seen.wait("meetkit/ams-002/config", 3)
        assert [b["version"] for b in configs(seen, "ams-001")] == [1, 2]
        # the register fixed: the next version, on trial, proved
        fleetfile.upsert(fleet.register, "ams-001", {"config": {"interval_s": 60, "broker": {"host": "meetkit-gw"}}})
        node.wait_running(3)
        c = wait_for(lambda: (c := fleet.nodes()["ams-001"]["config"])["running"] == 3 and c, 20, "running 3")
        assert (c["wanted"], c["behind"], c["reverted"], c["trial"]) == (3, False, None, None)
        assert sample(fleet.metrics(), "meetkit_node_config_reverted", node="ams-001") == 0
    finally:
        node.close()
        seen.close()
    assert fleet.leaks() == []


def test_selftest_a_wrong_key_bad_events_and_crash_reports(fleet: Fleet):
    fleetfile.upsert(fleet.register, "ams-001", {"config": {"interval_s": 60, "wifi": {"ssid": "street"}}})
    fleetfile.upsert(fleet.register, "ams-002", {"config": {"interval_s": 60}})
    fleet.start()
    port = fleet.broker.port  # type: ignore[attr-defined]
    good = FakeNode(port, "ams-001", KEYS["ams-001"],
                    checks={"pm": ["pass", "pms5003, 58 frames"], "mic": ["fail", "no samples"]})
    wrong = FakeNode(port, "ams-002", os.urandom(32))  # provisioned with another key
    bad = Publisher("127.0.0.1", port)
    try:
        good.wait_running(1)
        # the self-test: the signed command out, the node's answer back and shown
        r = fleet.cli("fleet", "selftest", "ams-001", "--wait", "30")
        assert r.returncode == 1, r.stdout + r.stderr  # an item failed
        assert "asked ams-001 for its self-test (command 1)" in r.stdout
        assert "  pm   pass  pms5003, 58 frames" in r.stdout and "  mic  fail  no samples" in r.stdout
        assert [b for b in good.taken() if "cmd" in b] == [{"node": "ams-001", "cmd": "selftest", "id": 1}]
        n = wait_for(lambda: (d := fleet.nodes()["ams-001"])["selftest"] and d, 15, "the self-test on the page")
        assert n["selftest"]["id"] == 1 and n["selftest"]["checks"]["mic"] == ["fail", "no samples"]
        assert sample(fleet.metrics(), "meetkit_node_selftest_failed_items", node="ams-001") == 1
        # a node without a key: the command cannot be sent, said, and taken back
        r = fleet.cli("fleet", "selftest", "ams-004", "--wait", "30")
        assert r.returncode == 1
        assert "the gateway cannot send it" in r.stderr and "no key for ams-004" in r.stderr
        assert r.stderr.rstrip().endswith("; taken back")
        with fleet.store() as s:
            assert s.pending_commands() == []
        # a node that is not there: no answer, and the command stays sent (its answer would be kept)
        r = fleet.cli("fleet", "selftest", "ams-003", "--wait", "2")
        assert r.returncode == 3 and "no answer from ams-003 within 2 s: it was sent" in r.stderr
        assert fleet.cli("fleet", "selftest", "AMS 1").returncode == 2
        # the node with the wrong key takes nothing and says why
        assert wrong.running == 0
        n = wait_for(lambda: (d := fleet.nodes()["ams-002"])["config"]["last"] and d, 15, "the refusal")
        assert n["config"]["last"]["state"] == "refused" and n["config"]["last"]["reason"] == "bad mac"
        assert n["config"]["behind"] is True
        r = fleet.cli("fleet", "selftest", "ams-002", "--wait", "30")
        assert r.returncode == 1 and "ams-002 refused a command it could not read at " in r.stderr, r.stderr
        assert r.stderr.rstrip().endswith(": bad mac")
        status = fleet.cli("fleet", "status", "--node", "ams-002")
        assert "config refused whole at" in status.stdout and ": bad mac" in status.stdout
        assert "command ? refused at " in status.stdout

        # bad events: dead-lettered with a reason; good ones around them stored
        bad.publish("meetkit/ams-001/event", {"v": 1, "node": "ams-001", "kind": "reboot"})
        bad.publish("meetkit/ams-001/event", {"v": 1, "node": "ams-001", "kind": "crash", "boot": 4})
        bad.publish("meetkit/ams-001/event", b"{not json")
        bad.publish("meetkit/ams-002/event", {"v": 1, "node": "ams-001", "kind": "safe_mode", "crashes": 3})
        for i in range(22):  # more than are kept; the last with a password in it, as a careless print would
            good.crash(boot=10 + i, count=i + 1, trace="Traceback (most recent call last):\n  File \"node.py\", "
                       f"line 412, in main\nOSError: [Errno 5] EIO{' ' + WIFI_PW if i == 21 else ''}")
        def counted() -> dict[str, Any] | None:
            m = fleet.metrics()
            return m if m["meetkit_events_total"]["samples"].get(frozenset({("kind", "crash")})) == 22 else None

        fams = wait_for(counted, 20, "22 crash reports counted")
        assert sample(fams, "meetkit_messages_rejected_total", code="bad_value") == 1
        assert sample(fams, "meetkit_messages_rejected_total", code="missing_field") == 1
        assert sample(fams, "meetkit_messages_rejected_total", code="not_json") == 1
        assert sample(fams, "meetkit_messages_rejected_total", code="node_mismatch") == 1
        assert sample(fams, "meetkit_node_crashes_in_a_row", node="ams-001") == 22
        letters = fleet.cli("dead-letters", "list", "--node", "ams-001")
        assert 'kind: "reboot" is not one of config, ota, cmd, crash, safe_mode, selftest' in letters.stdout
        assert "at_up: missing" in letters.stdout
        n = fleet.nodes()["ams-001"]
        assert n["crashes"] == 20 and n["crash"]["boot"] == 31
        assert n["crash"]["trace"].endswith("OSError: [Errno 5] EIO ***")  # the password taken out
        status = fleet.cli("fleet", "status", "--node", "ams-001")
        assert "crash in boot 31 after 3620 s (20 reports kept):" in status.stdout
        assert "  OSError: [Errno 5] EIO ***" in status.stdout
        assert "self-test mic: fail: no samples" in status.stdout

        # the status page in Chromium: the over-the-air table
        done = browse(fleet.url + "/", "--dump-dom")
        dom = done.stdout
        fleet.outputs.append(dom)
        assert 'data-loaded="1"' in dom, done.stderr[-2000:]
        table = re.search(r'<table id="air">.*?</table>', dom, re.S)
        assert table, dom[:3000]
        rows = {m[1]: m[2] for m in re.finditer(r'<tr class="[^"]*" data-node="([^"]+)">(.*?)</tr>', table[0], re.S)}
        assert '<span class="flag failed" title="no samples">mic fail</span>' in rows["ams-001"]
        assert "OSError: [Errno 5] EIO *** (22 in a row, 20 kept)" in rows["ams-001"]
        assert '<span class="flag ok">running</span>' in rows["ams-001"]
        assert '<span class="flag refused">refused whole</span> bad mac' in rows["ams-002"]
        assert '<span class="flag behind">sent, not yet running</span>' in rows["ams-002"]
        assert '<span class="flag refused">command refused</span> bad mac' in rows["ams-002"]
    finally:
        for c in (good, wrong, bad):
            c.close()
    # the store keeps the crash report as the node sent it (password and all); everything shown is redacted
    assert fleet.leaks(store=False) == []
