"""`meetkit-gateway check`: a good file prints what it sets; a bad one names every bad key, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetkit_gateway import config as configuration

from .conftest import cli

EXAMPLE = Path(__file__).parents[2] / "gateway" / "gateway.example.toml"


def test_good_config_prints_a_summary(tmp_path):
    (tmp_path / "gateway.toml").write_text(
        '[mqtt]\nhost = "broker.lan"\nport = 8883\nusername = "gw"\npassword = "s3cret"\n'
        'topic_prefix = "city"\n[store]\npath = "data.db"\n[log]\nlevel = "warning"\n'
    )
    r = cli("check", "--config", str(tmp_path / "gateway.toml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{tmp_path / 'gateway.toml'}: OK",
        "  broker      mqtt://gw@broker.lan:8883 (with password), client id meetkit-gateway, keepalive 60 s",
        "  subscribes  city/+/up, city/+/status, city/+/event",
        "  publishes   city/<node>/ack, city/<node>/config (retained), city/<node>/cmd, city/gateway/alarm (retained)",
        "  http        http://127.0.0.1:8080/ (status page, /healthz, /metrics) (loopback only); times in Europe/Amsterdam",
        f"  store       {tmp_path / 'data.db'} (created on the first run)",  # relative to the file
        "  bounds      at most 2.0 GB in use and 365 days from reception; the oldest records are dropped first",
        "  refused     dead letters within 2000 and 2.0 MB per node, 64.0 MB in all (outside the bound above)",
        "  forward     no targets",
        "  log level   WARNING",
    ]
    assert "s3cret" not in r.stdout + r.stderr


def test_check_lists_http_bounds_and_every_target_without_secrets(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("tok-SECRET\n")
    (tmp_path / "influx.password").write_text("pw-SECRET\n")
    (tmp_path / "gateway.toml").write_text("""
[store]
path = "data.db"
max_bytes = "500 MB"
max_age_days = 30
[http]
host = "0.0.0.0"
port = 9100
[[forward]]
name = "vm"
type = "influx"
url = "http://127.0.0.1:8428/"
db = "lab"
username = "lab"
password_file = "influx.password"
[[forward]]
name = "city"
type = "influx"
url = "https://influx.city.example/base"
api = "v2"
org = "city"
bucket = "meetkit"
token_file = "secrets/token"
enabled = false
""")
    r = cli("check", "--config", str(tmp_path / "gateway.toml"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[4:10] == [
        "  http        http://0.0.0.0:9100/ (status page, /healthz, /metrics); times in Europe/Amsterdam",
        f"  store       {tmp_path / 'data.db'} (created on the first run)",
        "  bounds      at most 500.0 MB in use and 30 days from reception; the oldest records are dropped first",
        "  refused     dead letters within 2000 and 2.0 MB per node, 64.0 MB in all (outside the bound above)",
        "  forward     vm: influx http://127.0.0.1:8428 (api v1, db lab, basic auth as lab), enabled",
        "  forward     city: influx https://influx.city.example/base (api v2, org city, bucket meetkit, "
        f"token from {tmp_path / 'secrets' / 'token'}), DISABLED",
    ]
    assert "SECRET" not in r.stdout + r.stderr


@pytest.mark.parametrize("value, expected", [
    ('"2 GB"', 2_000_000_000), ('"500MB"', 500_000_000), ('"1.5 GiB"', 1_610_612_736), ("3000000", 3_000_000),
    ('"64 mb"', 64_000_000),
])
def test_store_bounds(tmp_path, value, expected):
    (tmp_path / "g.toml").write_text(f'[store]\npath = "g.db"\nmax_bytes = {value}\nmax_age_days = 0\n')
    cfg = configuration.load(tmp_path / "g.toml")
    assert (cfg.store.max_bytes, cfg.store.max_age_days) == (expected, 0)


def test_only_store_path_is_required(tmp_path):
    (tmp_path / "g.toml").write_text('[store]\npath = "g.db"\n')
    cfg = configuration.load(tmp_path / "g.toml")
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix, cfg.mqtt.keepalive, cfg.mqtt.client_id) == (
        "localhost", 1883, "meetkit", 60, "meetkit-gateway")
    assert (cfg.mqtt.username, cfg.mqtt.password, cfg.log.level) == (None, None, "INFO")
    assert (cfg.store.max_bytes, cfg.store.max_age_days) == (2_000_000_000, 365)
    assert cfg.http.timezone == "Europe/Amsterdam"  # the status page's times


def test_the_example_config_is_valid(tmp_path):
    cfg = configuration.load(EXAMPLE)
    assert cfg.mqtt.topic_prefix == "meetkit"
    assert cfg.store.path == Path("/var/lib/meetkit-gateway/gateway.db")
    assert (cfg.store.max_bytes, cfg.store.max_age_days) == (2_000_000_000, 365)  # the defaults, as it says


BAD = [
    ('[mqtt]\nhots = "x"\n[store]\npath = "g.db"\n', ['mqtt.hots: unknown key; did you mean "host"?']),
    ('[mqtt]\nport = "1883"\n[store]\npath = "g.db"\n',
     ['mqtt.port: must be an integer from 1 to 65535, got "1883" (a string)']),
    ('[mqtt]\nport = 70000\n[store]\npath = "g.db"\n',
     ["mqtt.port: must be an integer from 1 to 65535, got 70000 (an integer)"]),
    ('[mqtt]\nhost = "localhost"\n', ["store.path: missing (required)"]),
    ('[store]\npath = "g.db"\n[mqtt]\ntopic_prefix = "meetkit/#"\n',
     ['mqtt.topic_prefix: must not contain MQTT wildcards (+, #), got "meetkit/#"']),
    ('[store]\npath = "g.db"\n[mqtt]\npassword = "x"\n', ["mqtt.password: set, but mqtt.username is not"]),
    ('[store]\npath = "g.db"\n[log]\nlevel = "loud"\n',
     ['log.level: must be one of DEBUG, INFO, WARNING, ERROR, got "loud" (a string)']),
    ('[store]\npath = "g.db"\n[mqt]\nhost = "x"\n', ['mqt: unknown key; did you mean "mqtt"?']),
    ('mqtt = 1\n[store]\npath = "g.db"\n', ["mqtt: must be a table ([mqtt]), got 1 (an integer)"]),
    ('[store]\npath = "g.db"\n[mqtt]\nkeepalive = true\n',
     ["mqtt.keepalive: must be an integer from 5 to 65535, got true (a boolean)"]),
    ('[store]\npath = "g.db"\nmax_bytes = "2 GX"\nmax_age_days = -1\n', [
        'store.max_bytes: must be a size like "2 GB" or "500 MB" or a number of bytes, at least 1 MB, '
        'got "2 GX" (a string)',
        "store.max_age_days: must be an integer from 0 to 36500, got -1 (an integer)"]),
    ('[store]\npath = "g.db"\nmax_bytes = 1000\n', [
        'store.max_bytes: must be a size like "2 GB" or "500 MB" or a number of bytes, at least 1 MB, '
        "got 1000 (an integer)"]),
    ('[store]\npath = "g.db"\nmax_byte = 1000\n', ['store.max_byte: unknown key; did you mean "max_bytes"?']),
    ('[store]\npath = "g.db"\n[http]\ntimezone = "Europe/Amsterdamm"\n', [
        "http.timezone: 'Europe/Amsterdamm' is not a time zone this system knows (an IANA name such as "
        "Europe/Amsterdam or UTC; the tzdata package has them)"]),
    # every problem at once
    ('[mqtt]\nport = 0\nclient_id = ""\nfoo = 1\n[log]\nlevel = 3\n', [
        "mqtt.port: must be an integer from 1 to 65535, got 0 (an integer)",
        "mqtt.client_id: must not be empty",
        "mqtt.foo: unknown key (known: host, port, username, password, password_file, client_id, topic_prefix, keepalive)",
        "log.level: must be one of DEBUG, INFO, WARNING, ERROR, got 3 (an integer)",
        "store.path: missing (required)",
    ]),
]


@pytest.mark.parametrize("text, errors", BAD, ids=[e[0] for _, e in BAD])
def test_bad_config_names_the_key(tmp_path, text, errors):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    r = cli("check", "--config", str(path))
    assert r.returncode == 1
    n = len(errors)
    assert r.stderr.splitlines() == [f"{path}: {n} error{'s' if n > 1 else ''}"] + [f"  {e}" for e in errors]
    assert r.stdout == ""


def test_not_toml(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[mqtt]\nhost = localhost\n')
    r = cli("check", "--config", str(path))
    assert r.returncode == 1
    assert "not valid TOML: Invalid value (at line 2, column 8)" in r.stderr


def test_missing_file(tmp_path):
    r = cli("check", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 1
    assert "cannot read the file: No such file or directory" in r.stderr


def test_store_folder_must_exist(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[store]\npath = "missing/gateway.db"\n')
    r = cli("check", "--config", str(path))
    assert r.returncode == 1
    assert f"  store.path: the folder {tmp_path / 'missing'} does not exist" in r.stderr.splitlines()


def test_run_refuses_a_bad_config_before_connecting(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[mqtt]\nport = "x"\n[store]\npath = "g.db"\n')
    r = cli("run", "--config", str(path), timeout=10)
    assert r.returncode == 1
    assert 'mqtt.port: must be an integer from 1 to 65535, got "x" (a string)' in r.stderr
    assert not (tmp_path / "g.db").exists()


def test_check_says_whether_the_fleet_files_can_be_read_never_what_they_hold(tmp_path):
    (tmp_path / "node-keys.json").write_text('{"nodes": {"ams-001": "' + "ab" * 32 + '"}}')
    (tmp_path / "fleet-secrets.toml").write_text('[wifi]\nlab = "wifi-SECRET"\n')
    (tmp_path / "gateway.toml").write_text(
        '[store]\npath = "data.db"\n[fleet]\nnode_keys = "node-keys.json"\nsecrets = "fleet-secrets.toml"\n'
        'broker_secrets = "broker/secrets.json"\n')
    r = cli("check", "--config", str(tmp_path / "gateway.toml"))
    assert r.returncode == 0, r.stderr
    assert f"  node keys   {tmp_path / 'node-keys.json'}: readable" in r.stdout.splitlines()
    assert f"  secrets     {tmp_path / 'fleet-secrets.toml'}: readable" in r.stdout.splitlines()
    assert (f"  broker pw   {tmp_path / 'broker' / 'secrets.json'}: CANNOT BE READ (what needs it is held back)"
            in r.stdout.splitlines())
    assert "wifi-SECRET" not in r.stdout + r.stderr and "abab" not in r.stdout
