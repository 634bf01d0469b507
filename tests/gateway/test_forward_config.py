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
        'forward[0] ("a b").type: must be one of influx, sensorthings, got "kafka" (a string)',
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
