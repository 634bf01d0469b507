"""A node's configuration from the register (fleet.py's `config` table), the secrets files
(fleet_secrets.py) and the node keys (signed.py): what is sent, what people see, what is held back
and why, and never a secret in a message about it."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from meetkit_gateway import signed
from meetkit_gateway.fleet import FleetError, parse
from meetkit_gateway.fleet_secrets import FleetSecrets
from meetkit_gateway.signed import NodeKeys, SignatureError, envelope, opened
from meetkit_gateway.wanted import wanted

PW = "lab-SECRET-pw"
NODE_PW = "node-SECRET-pw"


def register(text: str) -> dict:
    return parse(tomllib.loads(text), Path("fleet.toml"))


def secrets(tmp_path: Path, wifi: str | None = f'[wifi]\nlab = "{PW}"\n',
            broker: dict | None = None) -> FleetSecrets:
    w = b = None
    if wifi is not None:
        (w := tmp_path / "fleet-secrets.toml").write_text(wifi)
    if broker is not None:
        (b := tmp_path / "secrets.json").write_text(json.dumps(broker))
    return FleetSecrets(w, b)


def test_the_config_table_is_read_in_the_form_the_firmware_takes(tmp_path):
    nodes = register('''
[nodes."ams-001"]
noise_offset_db = -1.3
[nodes."ams-001".config]
interval_s = 60
climate_every_s = 5
ntp_host = "ntp.lab"
ntp_every_s = 3600
rh_high_pct = 85
spool_kb = 1700
topic_prefix = "meetkit"
wifi = { ssid = "lab" }
broker = { host = "meetkit-gw", port = 8883, tls = true, ca = "ca.der" }
''')
    s = secrets(tmp_path, broker={"nodes": {"ams-001": NODE_PW}})
    w = wanted("ams-001", nodes["ams-001"], s, "meetkit")
    assert w is not None and w.problem is None
    assert w.config == {"interval_s": 60, "climate_every_s": 5, "ntp_host": "ntp.lab", "ntp_every_s": 3600,
                        "rh_high_pct": 85, "spool_kb": 1700, "topic_prefix": "meetkit",
                        "wifi": {"ssid": "lab", "password": PW},
                        "broker": {"host": "meetkit-gw", "port": 8883, "tls": True, "ca": "ca.der", "user": "ams-001",
                                   "password": NODE_PW},
                        "noise_offset_db": -1.3}
    assert PW not in json.dumps(w.shown) and NODE_PW not in json.dumps(w.shown)
    assert w.shown["wifi"] == {"ssid": "lab", "password": "(secret)"}


def test_a_node_the_register_configures_nothing_for_is_sent_nothing(tmp_path):
    nodes = register('[nodes."ams-001"]\nname = "Dam"\n[nodes."ams-002"]\nnoise_offset_db = 0.5\n')
    assert wanted("ams-001", nodes["ams-001"], secrets(tmp_path), "meetkit") is None
    w = wanted("ams-002", nodes["ams-002"], secrets(tmp_path), "meetkit")
    assert w is not None and w.config == {"noise_offset_db": 0.5}  # the calibration alone is a configuration


@pytest.mark.parametrize("table, error", [
    ('[nodes."a".config]\ninterval_s = "60"',
     'nodes."a".config.interval_s: must be a whole number, got "60" (a string)'),
    ('[nodes."a".config]\ninterval_s = 60.0',
     'nodes."a".config.interval_s: must be a whole number, got 60.0 (a number)'),
    ('[nodes."a".config]\nntp_host = ""', 'nodes."a".config.ntp_host: must be a non-empty string, got "" (a string)'),
    ('[nodes."a".config]\nnoise_offset_db = 1.0',
     'nodes."a".config.noise_offset_db: the calibration is the node\'s own'),
    ('[nodes."a".config]\nnode_id = "b"', 'nodes."a".config.node_id: a node\'s id is never changed remotely'),
    ('[nodes."a".config]\nintervals = 60', 'nodes."a".config.intervals: unknown key; did you mean "interval_s"?'),
    ('[nodes."a".config]\nwifi = { ssid = "lab", password = "hunter2-SECRET" }',
     'nodes."a".config.wifi.password: never in the register: the password goes in the secrets file'),
    ('[nodes."a".config]\nbroker = { host = "gw", user = "a" }',
     'nodes."a".config.broker.user: never in the register: the node\'s account'),
    ('[nodes."a".config]\nbroker = { host = "gw", port = "8883" }',
     'nodes."a".config.broker.port: must be a whole number, got "8883" (a string)'),
    ('[nodes."a".config]\nbroker = { port = 8883 }', 'nodes."a".config.broker.host: missing'),
    ('[nodes."a".config]\nwifi = []', 'nodes."a".config.wifi: an empty array; give one table or more'),
    ('[nodes."a".config]\nwifi = [{ ssid = "lab" }, "street"]',
     'nodes."a".config.wifi[1]: must be a table like { ssid = "..." }, got "street" (a string)'),
    ('[nodes."a"]\nconfig = 5', 'nodes."a".config: must be a table [nodes."<id>".config], got 5 (an integer)'),
])
def test_a_bad_config_table_names_the_key_and_never_a_password(table, error):
    with pytest.raises(FleetError) as e:
        register(table)
    (got,) = e.value.errors
    assert got.startswith(error), got
    assert "hunter2-SECRET" not in str(e.value)


def test_what_cannot_be_made_is_held_back_naming_the_file_and_key_never_a_value(tmp_path):
    nodes = register('''
[nodes."ams-001".config]
wifi = [{ ssid = "lab" }, { ssid = "street" }]
broker = { host = "gw" }
[nodes."ams-002".config]
topic_prefix = "elsewhere"
''')
    s = secrets(tmp_path, broker={"nodes": {"ams-009": NODE_PW}})
    w = wanted("ams-001", nodes["ams-001"], s, "meetkit")
    assert w is not None and w.problem is not None
    assert "the Wi-Fi password of 'street': not in" in w.problem and "fleet-secrets.toml" in w.problem
    assert "the broker password of ams-001: not in" in w.problem and "meetkit broker add-node ams-001" in w.problem
    assert PW not in w.problem and NODE_PW not in w.problem
    w = wanted("ams-002", nodes["ams-002"], s, "meetkit")
    assert w is not None and "this gateway listens on 'meetkit'; the node would leave it" in (w.problem or "")
    none = FleetSecrets(None, None)
    w = wanted("ams-001", nodes["ams-001"], none, "meetkit")
    assert w is not None and "no [fleet] secrets in gateway.toml" in (w.problem or "")
    assert "no [fleet] broker_secrets in gateway.toml" in (w.problem or "")


def test_a_secrets_file_that_is_wrong_says_so_without_its_values(tmp_path):
    s = secrets(tmp_path, wifi=f'[wifi]\nlab = "{PW}"\nbroken = 5\n')
    password, problem = s.wifi_password("lab")
    assert password is None and problem is not None and "wifi.broken: the password must be a string" in problem
    assert PW not in problem
    (tmp_path / "fleet-secrets.toml").write_text(f'[wifi]\nlab = "{PW}\n')  # not TOML
    password, problem = s.wifi_password("lab")
    assert password is None and "not valid TOML" in (problem or "") and PW not in (problem or "")
    (tmp_path / "fleet-secrets.toml").write_text(f'[wifi]\nlab = "{PW}-2"\n')  # fixed: read again
    assert s.wifi_password("lab") == (f"{PW}-2", None)
    assert s.redact(f"OSError: {PW}-2 refused") == "OSError: *** refused"


def test_node_keys_sign_what_only_that_node_opens(tmp_path):
    keys = {"ams-001": os.urandom(32).hex(), "ams-002": os.urandom(32).hex(), "ams-003": "not hex"}
    (tmp_path / "node-keys.json").write_text(json.dumps({"nodes": keys}))
    nk = NodeKeys(tmp_path / "node-keys.json")
    k1 = nk.key("ams-001")
    assert k1 == bytes.fromhex(keys["ams-001"]) and nk.problem("ams-001") is None
    assert nk.key("ams-003") is None and "the key of ams-003 is not 64 hex digits" in (nk.problem("ams-003") or "")
    assert "no key for ams-004" in (nk.problem("ams-004") or "")
    assert keys["ams-001"] not in (nk.problem("ams-003") or "") + (nk.problem("ams-004") or "")
    body = {"node": "ams-001", "version": 3, "config": {"interval_s": 60}}
    data = envelope(k1, body)  # type: ignore[arg-type]
    assert opened(k1, data) == body  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="bad mac"):
        opened(nk.key("ams-002"), data)  # type: ignore[arg-type]
    doc = json.loads(data)
    doc["body"] = doc["body"].replace("60", "10")  # tampered on the way
    with pytest.raises(SignatureError, match="bad mac"):
        opened(k1, json.dumps(doc).encode())  # type: ignore[arg-type]
    assert doc["mac"] == signed.mac(k1, json.dumps(body, separators=(",", ":")))  # type: ignore[arg-type]
    assert "cannot read the node keys" in (NodeKeys(tmp_path / "nowhere.json").problem("ams-001") or "")
    assert "[fleet] node_keys" in (NodeKeys(None).problem("ams-001") or "")
