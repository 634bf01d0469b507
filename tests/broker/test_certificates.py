"""The lab CA and the broker's certificate that `meetkit broker init` makes with the `cryptography`
library: what they carry (names, CA flags, key usage, validity, key sizes), checked by verifiers
that are not the library that made them (`openssl verify`, Python's ssl module and the nodes'
own TLS, mbedtls in the MicroPython unix port, both against a real Mosquitto serving them); files
made by the earlier openssl-based version are kept and signed with again; keys never exist under
their name readable by others, and no subprocess but mosquitto_passwd is run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meetkit_tools import broker
from meetkit_tools.dev.micropython import FIRMWARE_LIB, MPYLIB, SIM_MPY, run_mpy
from meetkit_tools.services import free_port, mosquitto_bin, stop_process, wait_listening
from tests.broker.test_broker import fleet

SANS = {"DNS:meetkit-gw", "DNS:meetkit-gw.local", "IP:127.0.0.1"}


def openssl(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("openssl") is None:
        pytest.fail("openssl not found: the independent verifier (`make setup` installs it)")
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def openssl_verify(out: Path, *names: str) -> None:
    """The chain as OpenSSL checks it for a TLS server: strict X.509, the serverAuth purpose, and
    each name (`DNS:x` or `IP:a`) in the certificate."""
    checks = [a for n in names for a in (("-verify_ip", n[3:]) if n.startswith("IP:") else ("-verify_hostname", n[4:]))]
    for check in [checks[i:i + 2] for i in range(0, len(checks), 2)] or [[]]:
        r = openssl("verify", "-x509_strict", "-purpose", "sslserver", *check, "-CAfile", str(out / "ca/ca.crt"),
                    str(out / "mosquitto/server.crt"))
        assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), (check, r.stdout + r.stderr)


@contextmanager
def serving(out: Path, f: broker.Fleet) -> Iterator[None]:
    """A real Mosquitto running the generated configuration."""
    with (out / "mosquitto.out").open("ab") as log:
        proc = subprocess.Popen([mosquitto_bin(), "-c", str(out / "mosquitto/mosquitto.conf")], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", f.tls_port, proc, "mosquitto (TLS)")
        yield
    finally:
        stop_process(proc)


def python_tls(ca: Path, port: int, name: str) -> str:
    """Python's ssl module (OpenSSL, strict X.509) as a client: the TLS version, or the reason it
    refused the broker."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            with ctx.wrap_socket(s, server_hostname=name) as t:
                return str(t.version())
        except ssl.SSLCertVerificationError as e:
            return f"refused: {e.verify_message}"


NODE_TLS = r"""
import socket, uplink
ctx = uplink._tls_context("ca.der")
for name in NAMES:
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", PORT)[0][-1])
    try:
        ctx.wrap_socket(s, server_hostname=name).close()
        print("TLS", name, "ok")
    except Exception as e:
        print("TLS", name, "refused", repr(e))
        s.close()
"""


def node_tls(out: Path, port: int, names: list[str]) -> dict[str, str]:
    """The firmware's own TLS context (ca.der, mbedtls under the real MicroPython) handshaking with
    the broker under each name: {name: "ok" | "refused ..."}."""
    work = out / "node"
    work.mkdir(exist_ok=True)
    (work / "ca.der").write_bytes((out / "ca/ca.der").read_bytes())
    code = f"NAMES = {names!r}\nPORT = {port}\n" + NODE_TLS
    res = run_mpy(code, cwd=work, path=[FIRMWARE_LIB, SIM_MPY, MPYLIB])
    text = res.stdout.decode()
    assert res.returncode == 0, text + res.stderr.decode()
    got = {ln.split(" ", 2)[1]: ln.split(" ", 2)[2] for ln in text.splitlines() if ln.startswith("TLS ")}
    assert set(got) == set(names), text
    return got


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_certificates_carry_what_the_broker_and_the_nodes_need(tmp_path: Path) -> None:
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    out = broker.init(tmp_path / "out", fleet(tmp_path), ["ams-001"]).out
    end = dt.datetime.now(dt.timezone.utc)
    ca, srv = load(out / "ca/ca.crt"), load(out / "mosquitto/server.crt")
    name = lambda *cn: x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meetkit"),  # noqa: E731
                                  *[x509.NameAttribute(NameOID.COMMON_NAME, c) for c in cn]])
    ext = lambda c, cls: c.extensions.get_extension_for_class(cls)  # noqa: E731

    # The CA: self-signed, may sign certificates (and CRLs) and nothing else, no CA under it.
    assert ca.subject == ca.issuer == name("meetkit lab CA")
    bc = ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not (ku.value.digital_signature or ku.value.key_encipherment)
    ca_ski = ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert ca_ski == x509.SubjectKeyIdentifier.from_public_key(ca.public_key()).digest
    # The server: not a CA, a TLS server's key usage, its names, signed by the CA (by key id).
    assert srv.issuer == ca.subject and srv.subject == name("meetkit-gw")
    bc = ext(srv, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(srv, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment and not ku.value.key_cert_sign
    assert list(ext(srv, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ext(srv, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
    assert broker.cert_sans(out / "mosquitto/server.crt") == SANS
    san = ext(srv, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["meetkit-gw", "meetkit-gw.local"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # Validity: from the moment `init` ran, CA_DAYS and SERVER_DAYS long.
    for c, days in ((ca, broker.CA_DAYS), (srv, broker.SERVER_DAYS)):
        assert start <= c.not_valid_before_utc <= end
        assert c.not_valid_after_utc - c.not_valid_before_utc == dt.timedelta(days=days)
        # RSA 2048 and SHA-256, as the nodes' mbedtls has verified from the start
        assert isinstance(c.public_key(), rsa.RSAPublicKey) and c.public_key().key_size == 2048
        assert isinstance(c.signature_hash_algorithm, hashes.SHA256)
        assert 0 < c.serial_number < 2 ** 159  # positive, at most 20 octets (RFC 5280)
    assert ca.serial_number != srv.serial_number
    # Each key is its certificate's, unencrypted PEM (Mosquitto reads it without a passphrase).
    for key, c in (("ca/ca.key", ca), ("mosquitto/server.key", srv)):
        k = serialization.load_pem_private_key((out / key).read_bytes(), password=None)
        assert k.public_key() == c.public_key()
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    # ca.der: the very certificate, in DER (decoded by the standard library, not by cryptography)
    assert (out / "ca/ca.der").read_bytes() == ssl.PEM_cert_to_DER_cert((out / "ca/ca.crt").read_text())
    # OpenSSL's own verifier agrees: the chain, the purpose, every name
    openssl_verify(out, *SANS)
    r = openssl("verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname", "localhost",
                "-CAfile", str(out / "ca/ca.crt"), str(out / "mosquitto/server.crt"))
    assert r.returncode != 0 and "hostname mismatch" in r.stdout + r.stderr  # a name it does not carry


def test_clients_and_nodes_verify_the_broker_by_each_of_its_names(tmp_path: Path) -> None:
    f = fleet(tmp_path, free_port(), free_port())
    out = broker.init(tmp_path / "out", f, ["ams-001"]).out
    other = broker.init(tmp_path / "other", fleet(tmp_path), []).out  # another lab's CA
    with serving(out, f):
        for n in ("meetkit-gw", "meetkit-gw.local", "127.0.0.1"):
            assert python_tls(out / "ca/ca.crt", f.tls_port, n) in ("TLSv1.2", "TLSv1.3")
        assert python_tls(out / "ca/ca.crt", f.tls_port, "localhost").startswith("refused: Hostname mismatch")
        assert python_tls(other / "ca/ca.crt", f.tls_port, "meetkit-gw").startswith("refused: ")
        got = node_tls(out, f.tls_port, ["meetkit-gw", "meetkit-gw.local", "127.0.0.1", "localhost"])
        assert got["meetkit-gw"] == got["meetkit-gw.local"] == got["127.0.0.1"] == "ok", got
        assert got["localhost"].startswith("refused") and "certificate" in got["localhost"], got
        assert node_tls(other, f.tls_port, ["meetkit-gw"])["meetkit-gw"].startswith("refused")


def openssl_made(out: Path, f: broker.Fleet, key_format: str) -> None:
    """The CA and server certificate as the openssl-based `broker init` made them (its very
    commands); `traditional`: keys in the older PKCS#1 PEM form of `openssl genrsa -traditional`."""
    ca, m = out / "ca", out / "mosquitto"
    ca.mkdir(parents=True)
    m.mkdir(parents=True)

    def genkey(path: Path) -> None:
        cmd = (["genrsa", "-traditional", "-out", str(path), "2048"] if key_format == "traditional" else
               ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(path)])
        assert openssl(*cmd).returncode == 0
        path.chmod(0o600)

    genkey(ca / "ca.key")
    r = openssl("req", "-x509", "-new", "-key", str(ca / "ca.key"), "-sha256", "-days", str(broker.CA_DAYS),
                "-subj", "/O=meetkit/CN=meetkit lab CA", "-out", str(ca / "ca.crt"),
                "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash")
    assert r.returncode == 0, r.stderr
    genkey(m / "server.key")
    (out / "ext.cnf").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        "subjectAltName=DNS:meetkit-gw,DNS:meetkit-gw.local,IP:127.0.0.1\n")
    r = openssl("req", "-new", "-key", str(m / "server.key"), "-subj", "/O=meetkit/CN=meetkit-gw",
                "-out", str(out / "server.csr"))
    assert r.returncode == 0, r.stderr
    r = openssl("x509", "-req", "-in", str(out / "server.csr"), "-CA", str(ca / "ca.crt"), "-CAkey",
                str(ca / "ca.key"), "-set_serial", "12345", "-sha256", "-days", str(broker.SERVER_DAYS),
                "-extfile", str(out / "ext.cnf"), "-out", str(m / "server.crt"))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("key_format", ["pkcs8", "traditional"])
def test_files_the_openssl_version_made_are_kept_and_signed_with(tmp_path: Path, key_format: str) -> None:
    f = fleet(tmp_path, free_port(), free_port())
    out = tmp_path / "out"
    openssl_made(out, f, key_format)
    files = ("ca/ca.key", "ca/ca.crt", "mosquitto/server.key", "mosquitto/server.crt")
    before = {p: (out / p).read_bytes() for p in files}
    res = broker.init(out, f, ["ams-001"])
    assert {p: (out / p).read_bytes() for p in files} == before  # kept, byte for byte
    assert {out / p for p in files} <= set(res.kept)
    assert (out / "ca/ca.der").read_bytes() == ssl.PEM_cert_to_DER_cert((out / "ca/ca.crt").read_text())
    # A new address: the openssl-made CA key (loaded from its PEM) signs a certificate naming it;
    # the server's key, the CA and so the nodes' ca.der stay.
    moved = dataclasses.replace(f, ips=["127.0.0.1", "127.0.0.2"])  # (the broker binds it: loopback)
    broker.init(out, moved, [])
    assert (out / "mosquitto/server.crt").read_bytes() != before["mosquitto/server.crt"]
    for p in ("ca/ca.key", "ca/ca.crt", "mosquitto/server.key"):
        assert (out / p).read_bytes() == before[p], p
    assert broker.cert_sans(out / "mosquitto/server.crt") == SANS | {"IP:127.0.0.2"}
    openssl_verify(out, *SANS, "IP:127.0.0.2")
    with serving(out, moved):
        assert python_tls(out / "ca/ca.crt", f.tls_port, "meetkit-gw") in ("TLSv1.2", "TLSv1.3")
        assert node_tls(out, f.tls_port, ["127.0.0.2", "meetkit-gw"]) == {"127.0.0.2": "ok", "meetkit-gw": "ok"}


def test_an_ipv6_address_is_named_once_and_kept(tmp_path: Path) -> None:
    # The openssl version compared `IP:::1` with openssl's `0:0:0:0:0:0:0:1` and signed anew at
    # every `init`; an address is compared as an address now, however it is written.
    out = tmp_path / "out"
    v6 = dataclasses.replace(fleet(tmp_path), ips=["127.0.0.1", "0:0::1"])
    broker.init(out, v6, [])
    crt = (out / "mosquitto/server.crt").read_bytes()
    assert broker.cert_sans(out / "mosquitto/server.crt") == SANS | {"IP:::1"}
    res = broker.init(out, dataclasses.replace(v6, ips=["127.0.0.1", "::1"]), [])
    assert (out / "mosquitto/server.crt").read_bytes() == crt and out / "mosquitto/server.crt" in res.kept
    openssl_verify(out, "IP:::1")


def test_a_new_ca_signs_a_new_server_certificate(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broker.init(out, fleet(tmp_path), [])
    key = (out / "mosquitto/server.key").read_bytes()
    shutil.rmtree(out / "ca")  # the CA lost: a new one, and the server certificate signed by it
    broker.init(out, fleet(tmp_path), [])
    openssl_verify(out, *SANS)
    assert (out / "mosquitto/server.key").read_bytes() == key
    assert (out / "mosquitto/ca.crt").read_bytes() == (out / "ca/ca.crt").read_bytes()


def test_keys_are_0600_before_they_have_their_name_and_only_mosquitto_passwd_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with umask 0: each key is written to a temporary file created 0600 and renamed into
    place (so no moment exists where another user could open it), and no command line but
    mosquitto_passwd's (given a file name, no password) is run."""
    renamed: dict[str, int] = {}
    real_replace = os.replace

    def recording_replace(src: str, dst: str | Path) -> None:
        renamed[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)
        real_replace(src, dst)

    commands: list[list[str]] = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, args, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            commands.append([str(x) for x in args])
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(os, "replace", recording_replace)
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    old = os.umask(0)
    try:
        out = broker.init(tmp_path / "out", fleet(tmp_path), ["ams-001"]).out
        broker.init(out, fleet(tmp_path), [], renew_server_cert=True)
    finally:
        os.umask(old)
    assert renamed["ca.key"] == renamed["server.key"] == renamed["secrets.json"] == 0o600
    for key in ("ca/ca.key", "mosquitto/server.key"):
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file left behind
    assert commands and {c[0] for c in commands} == {"mosquitto_passwd"}
    s = json.loads((out / broker.SECRETS).read_text())
    passwords = [s["gateway"]["password"], s["monitor"]["password"], *s["nodes"].values()]
    assert not [c for c in commands if any(p in arg for p in passwords for arg in c)]


def test_a_ca_key_that_cannot_sign_is_refused_with_its_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broker.init(out, fleet(tmp_path), [])
    crt = (out / "mosquitto/server.crt").read_bytes()
    key = out / "ca/ca.key"
    good = key.read_bytes()
    another = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        b"not a key\n": "ca.key: not an unencrypted private key in PEM form",
        another.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.BestAvailableEncryption(b"pass")): "not an unencrypted private key",
        another.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()): "ca.key is not the key of .*ca.crt",
    }
    for data, message in cases.items():
        key.write_bytes(data)
        with pytest.raises(broker.BrokerError, match=message):
            broker.init(out, fleet(tmp_path), [], renew_server_cert=True)
        assert (out / "mosquitto/server.crt").read_bytes() == crt  # the broker's certificate untouched
    key.write_bytes(good)
    (out / "ca/ca.crt").write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    with pytest.raises(broker.BrokerError, match="ca.crt: not a certificate in PEM form"):
        broker.init(out, fleet(tmp_path), [], renew_server_cert=True)
