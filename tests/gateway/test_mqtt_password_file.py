"""mqtt.password_file: the gateway's broker password from a file (as `meetkit broker init` writes
it), never printed; every problem with it named by `meetkit-gateway check`. The login itself, with
the generated account against the generated Mosquitto, is in tests/e2e/test_secure_fleet.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetkit_gateway import config as configuration

from .conftest import cli

SECRET = "Zq8-generated_password_of_32chars"


def write(tmp: Path, mqtt: str) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(f'[mqtt]\nhost = "127.0.0.1"\n{mqtt}\n[store]\npath = "g.db"\n')
    return path


def test_password_file_is_read_relative_to_the_config_and_never_printed(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "gateway.password").write_text(f"  {SECRET}\n")
    path = write(tmp_path, 'username = "gateway"\npassword_file = "secrets/gateway.password"')
    cfg = configuration.load(path)
    assert cfg.mqtt.password == SECRET  # the newline (and any surrounding blanks) are not part of it
    assert cfg.mqtt.password_file == tmp_path / "secrets" / "gateway.password"
    r = cli("check", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert (f"  broker      mqtt://gateway@127.0.0.1:1883 (password from {tmp_path / 'secrets' / 'gateway.password'}), "
            "client id meetkit-gateway, keepalive 60 s") in r.stdout.splitlines()
    assert SECRET not in r.stdout + r.stderr


def test_a_changed_password_file_is_a_changed_configuration(tmp_path: Path) -> None:
    # SIGHUP applies a configuration only when it differs: a new password must count.
    (tmp_path / "pw").write_text("old\n")
    path = write(tmp_path, 'username = "gateway"\npassword_file = "pw"')
    before = configuration.load(path)
    assert configuration.load(path) == before
    (tmp_path / "pw").write_text("new\n")
    after = configuration.load(path)
    assert after != before and after.mqtt.password == "new"


@pytest.mark.parametrize("mqtt, content, error", [
    ('username = "gateway"\npassword_file = "missing.password"', None,
     "mqtt.password_file: cannot read {tmp}/missing.password: No such file or directory"),
    ('username = "gateway"\npassword_file = "pw"', "\n", "mqtt.password_file: {tmp}/pw is empty"),
    ('username = "gateway"\npassword_file = "pw"', b"\xff\xfe", "mqtt.password_file: cannot read {tmp}/pw: "),
    ('username = "gateway"\npassword = "x"\npassword_file = "pw"', "pw\n",
     "mqtt.password_file: set together with mqtt.password; keep only the file"),
    ('password_file = "pw"', "pw\n", "mqtt.password_file: set, but mqtt.username is not"),
    ('username = "gateway"\npassword_file = 3', None,
     "mqtt.password_file: must be a string, got 3 (an integer)"),
], ids=["missing", "empty", "not-utf8", "both", "no-username", "not-a-string"])
def test_password_file_problems_are_named(tmp_path: Path, mqtt: str, content: str | bytes | None, error: str) -> None:
    if content is not None:
        pw = tmp_path / "pw"
        pw.write_bytes(content if isinstance(content, bytes) else content.encode())
    path = write(tmp_path, mqtt)
    r = cli("check", "--config", str(path))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == f"{path}: 1 error", r.stderr
    assert lines[1].startswith("  " + error.format(tmp=tmp_path)), r.stderr
    assert "pw\n" not in r.stderr
