"""[http] and [[forward]] in gateway.toml: defaults, relative secret files, every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetkit_gateway import config as configuration
from meetkit_gateway.config import ConfigError, ForwardConfig, HttpConfig

STORE = '[store]\npath = "g.db"\n'


def load(tmp_path: Path, text: str) -> configuration.Config:
    (tmp_path / "g.toml").write_text(STORE + text)
    return configuration.load(tmp_path / "g.toml")


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    return e.value.errors


def test_defaults_no_targets_and_loopback_http(tmp_path):
    cfg = load(tmp_path, "")
    assert cfg.http == HttpConfig("127.0.0.1", 8080)
    assert cfg.forward == ()


def test_http_section(tmp_path):
    assert load(tmp_path, '[http]\nhost = "0.0.0.0"\nport = 9100\n').http == HttpConfig("0.0.0.0", 9100)
    assert load(tmp_path, '[http]\nport = 0\n').http.port == 0  # any free port (the tests use it)
    assert errors(tmp_path, '[http]\nport = 65536\nhots = "x"\n') == [
        "http.port: must be an integer from 0 to 65535, got 65536 (an integer)",
        'http.hots: unknown key; did you mean "host"?',
    ]


def test_influx_v1_and_v2_targets(tmp_path):
    cfg = load(tmp_path, """
[[forward]]
name = "vm"
type = "influx"
url = "http://127.0.0.1:8428/"
db = "lab"
[[forward]]
name = "city"
type = "influx"
url = "https://influx.city.example/base"
api = "v2"
org = "city"
bucket = "meetkit"
token_file = "secrets/token"
batch = 100
timeout = 3
enabled = false
""")
    assert cfg.forward == (
        ForwardConfig(name="vm", type="influx", url="http://127.0.0.1:8428", db="lab"),
        ForwardConfig(name="city", type="influx", url="https://influx.city.example/base", api="v2", org="city",
                      bucket="meetkit", token_file=tmp_path / "secrets" / "token", batch=100, timeout=3.0,
                      enabled=False),
    )


def test_the_example_config_has_no_active_targets():
    cfg = configuration.load(Path(__file__).parents[2] / "gateway" / "gateway.example.toml")
    assert cfg.forward == () and cfg.http == HttpConfig()


def test_every_forward_problem_is_named(tmp_path):
    assert errors(tmp_path, """
[[forward]]
name = "a b"
type = "kafka"
url = "ftp://x"
batch = 0
[[forward]]
name = "v2"
type = "influx"
url = "http://h:8086"
api = "v2"
db = "x"
[[forward]]
name = "v2"
type = "influx"
url = "http://h:8086?db=x"
db = "x"
enabled = "yes"
tokn_file = "t"
""") == [
        'forward[0] ("a b").name: must be letters, digits, "-", "_" or "." only, got "a b"',
        'forward[0] ("a b").type: must be one of influx, mqtt, sensor.community, sensorthings, got "kafka" (a string)',
        'forward[0] ("a b").url: must be an http:// or https:// URL with a host, got "ftp://x"',
        'forward[0] ("a b").batch: must be an integer from 1 to 100000, got 0 (an integer)',
        'forward[1] ("v2").org: missing (required with api = "v2")',
        'forward[1] ("v2").bucket: missing (required with api = "v2")',
        'forward[1] ("v2").token_file: missing (required with api = "v2")',
        'forward[1] ("v2").db: not used with api = "v2"',
        'forward[2] ("v2").url: must not have a query or fragment (set db/org/bucket instead), got "http://h:8086?db=x"',
        'forward[2] ("v2").enabled: must be true or false, got "yes" (a string)',
        'forward[2] ("v2").tokn_file: unknown key; did you mean "token_file"?',
        'forward[2] ("v2").name: "v2" is used by another [[forward]] target',
    ]


def test_forward_must_be_an_array_of_tables(tmp_path):
    assert errors(tmp_path, '[forward]\nname = "x"\n') == [
        "forward: must be an array of tables ([[forward]]), got a table"]


def test_sensorthings_targets_with_their_auth_fleet_and_batch(tmp_path):
    cfg = load(tmp_path, """
[fleet]
path = "fleet.toml"
[[forward]]
name = "frost"
type = "sensorthings"
url = "https://sta.city.example/FROST-Server/v1.1/"
username = "lab"
password_file = "secrets/sta.password"
[[forward]]
name = "frost2"
type = "sensorthings"
url = "http://127.0.0.1:8080/v1.1"
token_file = "/etc/meetkit-gateway/sta.token"
fleet = "/srv/other-fleet.toml"
batch = 200
timeout = 20
""")
    assert cfg.fleet == tmp_path / "fleet.toml"
    assert cfg.forward == (
        ForwardConfig(name="frost", type="sensorthings", url="https://sta.city.example/FROST-Server/v1.1",
                      username="lab", password_file=tmp_path / "secrets" / "sta.password",
                      fleet=tmp_path / "fleet.toml", batch=1000),  # [fleet] path unless the target has its own
        ForwardConfig(name="frost2", type="sensorthings", url="http://127.0.0.1:8080/v1.1",
                      token_file=Path("/etc/meetkit-gateway/sta.token"), fleet=Path("/srv/other-fleet.toml"),
                      batch=200, timeout=20.0),
    )
    assert load(tmp_path, '[[forward]]\nname = "s"\ntype = "sensorthings"\nurl = "http://h/v1.1"\n').forward[0].fleet is None


def test_every_sensorthings_problem_is_named(tmp_path):
    assert errors(tmp_path, """
[fleet]
path = 3
[[forward]]
name = "sta"
type = "sensorthings"
url = "http://h/v1.1"
db = "x"
measurement = "m"
username = "lab"
[[forward]]
name = "sta2"
type = "sensorthings"
url = "http://h/v1.1"
token_file = "t"
username = "lab"
password_file = "p"
[[forward]]
name = "vm"
type = "influx"
url = "http://h:8428"
db = "lab"
fleet = "fleet.toml"
""") == [
        "fleet.path: must be a string, got 3 (an integer)",
        'forward[0] ("sta").db: not used with type = "sensorthings"',
        'forward[0] ("sta").measurement: not used with type = "sensorthings"',
        'forward[0] ("sta"): username and password_file go together',
        'forward[1] ("sta2").token_file: not used with username (basic auth); choose one',
        'forward[2] ("vm").fleet: not used with type = "influx"',
    ]


# -- type = "mqtt" and type = "sensor.community" ---------------------------------------------------------


def test_mqtt_targets_defaults_and_tls_files(tmp_path):
    cfg = load(tmp_path, """
[[forward]]
name = "city-mqtt"
type = "mqtt"
url = "mqtts://broker.city.example:8883"
username = "meetkit-gw"
password_file = "secrets/mqtt.password"
ca_file = "secrets/city-ca.crt"
cert_file = "/etc/meetkit-gateway/client.crt"
key_file = "/etc/meetkit-gateway/client.key"
topic = "city/air/{node}/records"
qos = 0
retain = true
client_id = "gw-ams"
protocol = "v3.1.1"
[[forward]]
name = "plain"
type = "mqtt"
url = "mqtt://10.0.0.2"
""")
    assert cfg.forward == (
        ForwardConfig(name="city-mqtt", type="mqtt", url="mqtts://broker.city.example:8883", username="meetkit-gw",
                      password_file=tmp_path / "secrets" / "mqtt.password", ca_file=tmp_path / "secrets" / "city-ca.crt",
                      cert_file=Path("/etc/meetkit-gateway/client.crt"), key_file=Path("/etc/meetkit-gateway/client.key"),
                      topic="city/air/{node}/records", qos=0, retain=True, client_id="gw-ams", protocol="v3.1.1"),
        ForwardConfig(name="plain", type="mqtt", url="mqtt://10.0.0.2"),
    )
    plain = cfg.forward[1]
    assert (plain.topic, plain.qos, plain.retain, plain.client_id, plain.protocol) == (
        "meetkit/{node}/records", 1, False, None, "v5")


def test_every_mqtt_problem_is_named(tmp_path):
    assert errors(tmp_path, """
[[forward]]
name = "m1"
type = "mqtt"
url = "http://broker:1883"
qos = 2
topic = "city/{node}/#"
[[forward]]
name = "m2"
type = "mqtt"
url = "mqtt://broker"
username = "gw"
ca_file = "ca.crt"
cert_file = "c.crt"
db = "x"
[[forward]]
name = "m3"
type = "mqtt"
url = "mqtts://broker"
topic = "city/{station}"
client_id = "a/b"
protocol = "5"
[[forward]]
name = "m4"
type = "mqtt"
url = "mqtt://broker/extra"
""") == [
        'forward[0] ("m1").url: must be an mqtt:// or mqtts:// URL with a host, got "http://broker:1883"',
        'forward[0] ("m1").qos: must be an integer from 0 to 1, got 2 (an integer)',
        'forward[0] ("m1").topic: must be an MQTT topic without wildcards, "$", empty levels or a leading/trailing "/", '
        'got "city/{node}/#"',
        'forward[1] ("m2").db: not used with type = "mqtt"',
        'forward[1] ("m2"): username and password_file go together',
        'forward[1] ("m2"): cert_file and key_file go together',
        'forward[1] ("m2").ca_file: only used with an mqtts:// url',
        'forward[1] ("m2").cert_file: only used with an mqtts:// url',
        "forward[2] (\"m3\").topic: may contain {node}, {town} and no other placeholder (KeyError: 'station'), "
        'got "city/{station}"',
        'forward[2] ("m3").client_id: must be at most 128 bytes without "+", "#" or "/", got "a/b"',
        'forward[2] ("m3").protocol: must be one of v5, v3.1.1, got "5" (a string)',
        'forward[3] ("m4").url: must be mqtt[s]://host[:port] only (set topic instead), got "mqtt://broker/extra"',
    ]


def test_sensor_community_target_defaults_to_the_real_api(tmp_path):
    cfg = load(tmp_path, """
[[forward]]
name = "sc"
type = "sensor.community"
sensors = { "ams-001" = "esp32-12345678", "ams-002" = "esp32-87654321" }
max_age = 120
""")
    (sc,) = cfg.forward
    assert sc == ForwardConfig(name="sc", type="sensor.community", url="https://api.sensor.community/v1/push-sensor-data/",
                               sensors=(("ams-001", "esp32-12345678"), ("ams-002", "esp32-87654321")), max_age=120.0)
    other = load(tmp_path, '[[forward]]\nname = "sc"\ntype = "sensor.community"\nurl = "http://127.0.0.1:9/x/"\n'
                 'sensors = { "a" = "esp32-1" }\n').forward[0]
    assert (other.url, other.max_age) == ("http://127.0.0.1:9/x/", 300.0)  # the path's "/" is kept


def test_every_sensor_community_problem_is_named(tmp_path):
    assert errors(tmp_path, """
[[forward]]
name = "sc1"
type = "sensor.community"
[[forward]]
name = "sc2"
type = "sensor.community"
sensors = { "AMS 1" = "esp32-1" }
max_age = 5
topic = "x"
[[forward]]
name = "sc3"
type = "sensor.community"
sensors = { "ams-001" = "12345678" }
[[forward]]
name = "sc4"
type = "sensor.community"
sensors = []
""") == [
        'forward[0] ("sc1").sensors: missing (required)',
        'forward[1] ("sc2").sensors: "AMS 1": not a node id (1-32 of a-z, 0-9, "-")',
        'forward[1] ("sc2").max_age: must be a number of seconds from 30 to 3600, got 5 (an integer)',
        'forward[1] ("sc2").topic: not used with type = "sensor.community"',
        'forward[2] ("sc3").sensors: "ams-001": must be the sensor id as registered, like "esp32-12345678", '
        'got "12345678" (a string)',
        'forward[3] ("sc4").sensors: must be a non-empty table of node id = "esp32-<chip id>", got an array',
    ]


def test_influx_targets_refuse_the_other_types_keys(tmp_path):
    assert errors(tmp_path, '[[forward]]\nname = "vm"\ntype = "influx"\nurl = "http://h"\ndb = "x"\nqos = 1\n') == [
        'forward[0] ("vm").qos: not used with type = "influx"']
