"""The node's broker section (user, password, tls, ca) and its TLS context, under micropython: TLS
takes the lab CA in DER form from the flash; anything unclear switches the uplink off with a
message naming the key, rather than risk sending the password in clear. The connection itself, to
a real Mosquitto, is in tests/e2e/test_secure_fleet.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meetkit_tools.dev.micropython import FIRMWARE_LIB, MPYLIB, SIM_MPY, run_mpy
from tests.firmware.test_config import GOOD, load

SECRET = "s3cret-broker-pw"


def broker(**kw: object) -> dict:
    return dict(GOOD, broker=dict({"host": "10.0.0.2", "user": "ams-001", "password": SECRET}, **kw))


def test_tls_defaults_to_port_8883_and_ca_der(tmp_path: Path) -> None:
    r, out = load(tmp_path, broker(tls=True))
    b = r["cfg"]["broker"]
    assert r["problems"] == [] and (b["tls"], b["port"], b["ca"]) == (True, 8883, "ca.der")
    r, _ = load(tmp_path, broker(tls=True, port=9883, ca="lab.der"))
    assert (r["cfg"]["broker"]["port"], r["cfg"]["broker"]["ca"]) == (9883, "lab.der")
    r, _ = load(tmp_path, broker())
    assert (r["cfg"]["broker"]["tls"], r["cfg"]["broker"]["port"]) == (False, 1883)


@pytest.mark.parametrize("section, message", [
    (dict(tls="yes"), "config.broker.tls: 'yes' is not true or false; measuring without an uplink"),
    (dict(tls=1), "config.broker.tls: 1 is not true or false; measuring without an uplink"),
    (dict(user=""), "config.broker.user: must be a non-empty string; measuring without an uplink"),
    (dict(password=7), "config.broker.password: must be a non-empty string; measuring without an uplink"),
    (dict(user=None), "config.broker.password: set, but broker.user is not; measuring without an uplink"),
    (dict(password=None), "config.broker.password: missing, but broker.user is set; measuring without an uplink"),
    (dict(tls=True, ca=""), "config.broker.ca: must be a non-empty string; measuring without an uplink"),
])
def test_an_unclear_broker_section_switches_the_uplink_off(tmp_path: Path, section: dict, message: str) -> None:
    cfg = broker(**section)
    for key in ("user", "password"):
        if section.get(key, "x") is None:
            del cfg["broker"][key]
    r, out = load(tmp_path, cfg)
    assert r["cfg"]["broker"] is None and r["problems"] == [message.removeprefix("config: ")]
    assert "W config: " + message in out and SECRET not in out


TLS_CONTEXT = r"""
import uplink
ctx = uplink._tls_context("ca.der")
print("CTX", type(ctx).__name__)
"""


def tls_context(tmp_path: Path, ca: bytes | None) -> str:
    (tmp_path / "ca.der").unlink(missing_ok=True)
    if ca is not None:
        (tmp_path / "ca.der").write_bytes(ca)
    res = run_mpy(TLS_CONTEXT, cwd=tmp_path, path=[FIRMWARE_LIB, SIM_MPY, MPYLIB])
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    return out


def test_the_tls_context_takes_the_lab_ca_in_der_form_only(tmp_path: Path) -> None:
    pem, der = tmp_path / "ca.pem", tmp_path / "ca.bin"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(pem), "-subj", "/CN=lab CA", "-days", "30"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-in", str(pem), "-outform", "DER", "-out", str(der)], check=True,
                   capture_output=True)
    assert "CTX SSLContext" in tls_context(tmp_path, der.read_bytes())
    out = tls_context(tmp_path, pem.read_bytes())
    assert "E mqtt: tls: ca.der is not a CA certificate in DER form (invalid cert): no uplink" in out
    assert "CTX NoneType" in out
    out = tls_context(tmp_path, None)
    assert "E mqtt: tls: ca.der is missing on the flash: no uplink (copy the lab CA's ca.der next to config.json)" in out
    assert "CTX NoneType" in out
