"""`meetkit broker`: everything Mosquitto needs to serve a fleet with accounts, an ACL and TLS.

`init` writes, into one folder (docs/operator.md, "Securing the broker"):

    <out>/mosquitto/mosquitto.conf  the broker's whole configuration: a plaintext listener on
                                    127.0.0.1 only (the gateway on the Pi), a TLS listener on the
                                    LAN address(es), no anonymous clients, persistence, a size
                                    limit (MAX_PACKET_BYTES)
    <out>/mosquitto/passwd          made by the real `mosquitto_passwd -U` (hashes only), 0640
    <out>/mosquitto/acl             each node publishes and reads only under its own id; the
                                    monitor account only reads the alarm and the statuses, 0640
    <out>/mosquitto/ca.crt          the lab CA's certificate (also for the nodes and clients)
    <out>/mosquitto/server.crt,     the broker's certificate (the Pi's hostname and IPs as SANs)
    <out>/mosquitto/server.key        and key, 0600
    <out>/ca/ca.crt, ca.key         the lab CA; the key (0600) stays here: it signs server
                                    certificates, never copy it to the broker or the nodes
    <out>/ca/ca.der                 the lab CA's certificate in DER form: `ca.der` on each node's
                                    flash (the firmware's TLS checks the broker against it)
    <out>/secrets.json              0600: the gateway's, the monitor's and every node's password,
                                    in clear
    <out>/node-keys.json            0600: every node's key (32 random bytes, hex), which signs what
                                    the gateway sends the node (docs/payload.md, "Authenticated for
                                    one node"): `meetkit provision` writes it to the node's flash as
                                    node.key, the gateway reads this file ([fleet] node_keys)
    <out>/gateway.password          0600: the gateway's password alone, for gateway.toml's
                                    mqtt.password_file (`gateway_toml()` prints the [mqtt] lines)
    <out>/monitor.password          0600: the monitor account's password alone
    <out>/monitor/mosquitto_sub     0600: `-u monitor` and `-P <its password>`, the options file
                                    mosquitto_sub reads from $XDG_CONFIG_HOME (`monitor_command()`)

Keys and certificates are made with the `cryptography` library (RSA 2048, SHA-256: what the
nodes' mbedtls verifies), passwords with `secrets`; every key and secret is written atomically,
created 0600, and nothing secret is written to the terminal or put on a command line
(`mosquitto_passwd -U` hashes a file).
`init` again keeps what exists (the CA, the keys, the passwords, the node keys) and adds what is
missing; `add-node` adds one node's account to the password file and the secrets, and its node
key, and nothing else (the ACL is made of `pattern` lines, so it does not change).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

GATEWAY_USER = "gateway"
GATEWAY_PASSWORD = "gateway.password"
# Monitoring (alarms, nodes online): reads <prefix>/gateway/alarm and <prefix>/+/status, nothing else.
MONITOR_USER = "monitor"
MONITOR_PASSWORD = "monitor.password"
MONITOR_DIR = "monitor"  # holds `mosquitto_sub`, for XDG_CONFIG_HOME
RESERVED = (GATEWAY_USER, MONITOR_USER)  # accounts that are not nodes: no node may take their ids
NODE_ID = re.compile(r"^[a-z0-9-]{1,32}$")  # as firmware/lib/config.py accepts
PREFIX = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
CA_DAYS = 3650
SERVER_DAYS = 825
SECRETS = "secrets.json"
# secrets.json's neighbours' nodes, {"<node>": {"password", "home"}}: written by `meetkit region
# accounts` (tools/region.py), kept by `init` (in the password file; no node key: this gateway
# sends a visiting node its acks only)
VISITORS = "visitors"
NODE_KEYS = "node-keys.json"
NODE_KEY_BYTES = 32

# The size limit (mosquitto.conf's max_packet_size, one value for every account: Mosquitto 2.0 has
# none per listener or per user). Mosquitto 2.0.11 disconnects a client that sends a bigger packet
# (it counts the type byte and all that follows the length field), at the header, reading no
# further, and nothing of that packet reaches anyone: no message with a payload of
# MAX_PACKET_BYTES or more reaches the gateway (a node's batch is under 2 KB).
# It is sized for what the gateway will send the nodes (issue 15: releases in chunks, remote
# configuration): a payload of GATEWAY_PAYLOAD_BYTES on a topic of up to TOPIC_ROOM_BYTES goes
# through, with room to spare for the header and MQTT 5 properties.
GATEWAY_PAYLOAD_BYTES = 16384
TOPIC_ROOM_BYTES = 256
MAX_PACKET_BYTES = GATEWAY_PAYLOAD_BYTES + 512
MAX_PREFIX = 128  # <prefix>/<node id, 32>/<a level> stays under TOPIC_ROOM_BYTES


class BrokerError(Exception):
    """A problem the operator can fix; the message says which."""


def check_node_id(node: str) -> str:
    if not NODE_ID.match(node):
        raise BrokerError(f"node id {node!r}: must be 1-32 of a-z, 0-9, '-' (as the firmware accepts)")
    if node == GATEWAY_USER:
        raise BrokerError(f"node id {node!r}: reserved for the gateway's account and <prefix>/gateway/alarm")
    if node == MONITOR_USER:
        raise BrokerError(f"node id {node!r}: reserved for the monitoring account")
    return node


def new_password() -> str:
    return secrets.token_urlsafe(24)  # 192 bits, 32 characters of A-Z a-z 0-9 - _


@dataclass
class Fleet:
    """What the files are made from. `install_dir` is where the files of `<out>/mosquitto/` are
    on the broker's machine (the paths in mosquitto.conf); by default that folder itself."""

    prefix: str = "meetkit"
    hostname: str = "meetkit-gw"
    ips: list[str] = field(default_factory=list)  # SANs and the TLS listener's addresses
    plain_port: int = 1883
    tls_port: int = 8883
    tls_bind_all: bool = False  # the TLS listener on all addresses (a Pi whose LAN address changes)
    install_dir: Path | None = None
    persistence_location: str = "/var/lib/mosquitto/"
    pid_file: str | None = "/run/mosquitto/mosquitto.pid"
    log_dest: str = "file /var/log/mosquitto/mosquitto.log"
    user: str | None = None  # mosquitto's default: it drops to the user `mosquitto`

    def check(self) -> None:
        if not PREFIX.match(self.prefix):
            raise BrokerError(f"prefix {self.prefix!r}: letters, digits, '-', '_' in '/'-separated levels")
        if len(self.prefix) > MAX_PREFIX:
            raise BrokerError(f"prefix {self.prefix[:20]!r}...: at most {MAX_PREFIX} characters (every topic "
                              f"must stay under {TOPIC_ROOM_BYTES} bytes, for the broker's size limit)")
        for ip in self.ips:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise BrokerError(f"--ip {ip!r}: not an IP address") from None
        if not re.match(r"^[A-Za-z0-9.-]{1,253}$", self.hostname):
            raise BrokerError(f"hostname {self.hostname!r}: not a host name")


# ---------------------------------------------------------------------------------------------
# The text of the files


def acl_text(prefix: str) -> str:
    p = prefix
    return (
        "# meetkit: generated by `meetkit broker init`; see docs/operator.md, \"Securing the broker\".\n"
        "# Every node's username is its node id. Mosquitto applies `pattern` lines to every user,\n"
        f"# %u being the username: a node publishes only {p}/<its id>/up, status (also its last\n"
        "# will), event and ota/get, and reads only its own ack, config, ota, ota/chunk and cmd, which\n"
        "# only the gateway may publish (docs/payload.md, \"Running the fleet\"). A publish that is\n"
        "# denied is dropped silently; a subscription that is denied gets nothing.\n"
        f"pattern write {p}/%u/up\n"
        f"pattern write {p}/%u/status\n"
        f"pattern write {p}/%u/event\n"
        f"pattern write {p}/%u/ota/get\n"
        f"pattern read {p}/%u/ack\n"
        f"pattern read {p}/%u/config\n"
        f"pattern read {p}/%u/ota\n"
        f"pattern read {p}/%u/ota/chunk\n"
        f"pattern read {p}/%u/cmd\n"
        "\n"
        "# The gateway. (The patterns above also apply to it, under the id `gateway`, which no node\n"
        "# may have.)\n"
        f"user {GATEWAY_USER}\n"
        f"topic read {p}/+/up\n"
        f"topic read {p}/+/status\n"
        f"topic read {p}/+/event\n"
        f"topic read {p}/+/ota/get\n"
        f"topic write {p}/+/ack\n"
        f"topic write {p}/+/config\n"
        f"topic write {p}/+/ota\n"
        f"topic write {p}/+/ota/chunk\n"
        f"topic write {p}/+/cmd\n"
        f"topic write {p}/gateway/alarm\n"
        "\n"
        "# Monitoring: reads the gateway's alarm and the nodes' statuses (online, boot, rssi), and\n"
        "# nothing else: not the batches (the readings reach people through the gateway, and a\n"
        "# monitor's session would make the broker queue every batch a second time), not the acks\n"
        "# or configs (the gateway's to the nodes). It publishes nowhere: the deny line takes from\n"
        f"# it what the patterns above give every username ({p}/{MONITOR_USER}/up would reach the\n"
        "# gateway as a node's batch); Mosquitto applies deny lines first.\n"
        f"user {MONITOR_USER}\n"
        f"topic read {p}/gateway/alarm\n"
        f"topic read {p}/+/status\n"
        f"topic deny {p}/{MONITOR_USER}/#\n"
    )


def conf_text(fleet: Fleet, install_dir: Path) -> str:
    d = install_dir
    lines = [
        "# meetkit: generated by `meetkit broker init`; see docs/operator.md, \"Securing the broker\".",
        "# The whole configuration: it replaces /etc/mosquitto/mosquitto.conf.",
    ]
    if fleet.pid_file:
        lines.append(f"pid_file {fleet.pid_file}")
    if fleet.user:
        lines.append(f"user {fleet.user}")
    lines += [
        f"log_dest {fleet.log_dest}",
        "",
        "# Accounts: no anonymous clients; the same accounts and ACL on every listener.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {d / 'passwd'}",
        f"acl_file {d / 'acl'}",
        "",
        "# Persistence: the gateway's session and its queue survive a restart of the broker.",
        "persistence true",
        f"persistence_location {fleet.persistence_location}",
        "# Seconds; the default 1800 is half an hour of queue lost on a crash.",
        "autosave_interval 60",
        "# Per client (it is the gateway's session that queues while the gateway is away): the",
        "# default 1000 is 20 minutes of 50 nodes; but at most 100 MB of RAM on the Pi. What a full",
        "# queue drops is still in the nodes' spools, unacknowledged: they send it again.",
        "max_queued_messages 100000",
        "max_queued_bytes 100000000",
        "",
        "# Bytes of one MQTT packet (2.0.11 leaves out its length field): a client that sends a bigger",
        "# one is disconnected (the log says `disconnected due to oversize packet`) and nothing of it",
        "# reaches anyone. A node's batch is under 2 KB; the gateway's largest message to the nodes",
        f"# is {GATEWAY_PAYLOAD_BYTES} bytes plus its topic. (message_size_limit would drop a bigger",
        "# message after reading all of it, and keep its sender connected.)",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "",
        "# Plaintext for the gateway on this machine only.",
        f"listener {fleet.plain_port} 127.0.0.1",
        "",
        "# TLS for the nodes and clients on the LAN. The client id is replaced by the username, so",
        "# no client can take over another's session by connecting with its client id.",
    ]
    binds: list[str | None] = [None] if fleet.tls_bind_all or not fleet.ips else list(fleet.ips)
    for addr in binds:
        lines += [
            f"listener {fleet.tls_port}" + (f" {addr}" if addr else ""),
            f"cafile {d / 'ca.crt'}",
            f"certfile {d / 'server.crt'}",
            f"keyfile {d / 'server.key'}",
            "tls_version tlsv1.2",
            "require_certificate false",
            "use_username_as_clientid true",
            "",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Files


def _write(path: Path, data: str | bytes, mode: int) -> None:
    """Atomically, created with `mode` from the start (never readable by others in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(cmd: list[str], what: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise BrokerError(f"{cmd[0]} is not installed: apt-get install "
                          f"{'mosquitto' if cmd[0] == 'mosquitto_passwd' else cmd[0]}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BrokerError(f"{what}: {cmd[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")


def load_secrets(out: Path) -> dict:
    path = out / SECRETS
    if not path.exists():
        raise BrokerError(f"{path}: not found; run `meetkit broker init --out {out}` first")
    return json.loads(path.read_text())


def save_secrets(out: Path, doc: dict) -> Path:
    path = out / SECRETS
    _write(path, json.dumps(doc, indent=2, sort_keys=False) + "\n", 0o600)
    return path


def new_node_key() -> str:
    return secrets.token_bytes(NODE_KEY_BYTES).hex()


def load_node_keys(out: Path) -> dict[str, str]:
    """node id -> key (hex) from the folder's node-keys.json ({"nodes": {"<id>": "<64 hex>"}}, the shape
    of secrets.json's `nodes`, as the gateway reads it: gateway/signed.py); {} when there is none yet."""
    path = Path(out) / NODE_KEYS
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BrokerError(f"{path}: cannot be read ({e}); restore it from a copy (the nodes hold these keys)") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, dict) or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                                              for v in nodes.values()):
        raise BrokerError(f'{path}: not {{"nodes": {{"<node id>": "<64 hex digits>"}}}}; restore it from a copy')
    return dict(nodes)


def save_node_keys(out: Path, keys: dict[str, str]) -> Path:
    path = Path(out) / NODE_KEYS
    _write(path, json.dumps({"nodes": keys}, indent=2) + "\n", 0o600)
    return path


def node_key(out: Path, node: str) -> bytes:
    """The node's key from the folder's node-keys.json; BrokerError when it has none."""
    keys = load_node_keys(out)
    if node not in keys:
        raise BrokerError(f"{Path(out) / NODE_KEYS}: no key for node {node} (`meetkit broker add-node {node}` "
                          "or `meetkit broker init` again makes one)")
    return bytes.fromhex(keys[node])


def ensure_node_key(out: Path, node: str) -> tuple[bytes, bool]:
    """The node's key, made now if the folder has none for it (a folder from before node keys);
    (key, whether it was made)."""
    check_node_id(node)
    keys = load_node_keys(out)
    if node in keys:
        return bytes.fromhex(keys[node]), False
    keys[node] = new_node_key()
    save_node_keys(out, keys)
    return bytes.fromhex(keys[node]), True


def hash_passwords(users: dict[str, str], workdir: Path) -> list[str]:
    """`user:hash` lines from the real mosquitto_passwd (-U: the passwords go through a 0600 file,
    never through a command line)."""
    fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".passwd.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{u}:{p}\n" for u, p in users.items()))
        _run(["mosquitto_passwd", "-U", tmp], "hashing the passwords")
        lines = [ln for ln in Path(tmp).read_text().splitlines() if ln.strip()]
    finally:
        Path(tmp).unlink(missing_ok=True)
    if [ln.split(":", 1)[0] for ln in lines] != list(users):
        raise BrokerError("mosquitto_passwd -U did not return one line per user")
    return lines


def write_passwd(out: Path, users: dict[str, str]) -> Path:
    path = out / "mosquitto" / "passwd"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, "\n".join(hash_passwords(users, path.parent)) + "\n", 0o640)
    return path


# ---------------------------------------------------------------------------------------------
# The lab CA and the server certificate (the `cryptography` library)

# RSA 2048 with SHA-256, as the openssl command line made them before: what the nodes' TLS (mbedtls
# in MicroPython, on the ESP32 as in the unix port the tests run) has verified since the first
# fleet. A stronger choice must be proven on the firmware's TLS first (tests/e2e/test_secure_fleet.py).
KEY_BITS = 2048
CA_NAME = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meetkit"),
                     x509.NameAttribute(NameOID.COMMON_NAME, "meetkit lab CA")])


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _write_key(path: Path, key: PrivateKey) -> None:
    # PKCS#8 PEM, unencrypted, as `openssl genpkey` wrote it: Mosquitto reads it without a passphrase.
    _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()), 0o600)


def load_key(path: Path) -> PrivateKey:
    """A private key in PEM (PKCS#8 or the older PKCS#1, as openssl made them), unencrypted."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # not PEM, encrypted, unknown type
        raise BrokerError(f"{path}: not an unencrypted private key in PEM form ({e})") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise BrokerError(f"{path}: a {type(key).__name__}; the nodes' TLS takes RSA or EC keys only")
    return key


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as e:
        raise BrokerError(f"{path}: not a certificate in PEM form ({e})") from None


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    # From now (to the second, as openssl did) for `days` days.
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    return builder.not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))


def make_ca(ca_dir: Path, days: int = CA_DAYS) -> None:
    """A new lab CA: ca.key (0600) and its self-signed ca.crt, valid for `days` days, that may sign
    server certificates and nothing that signs further (pathlen 0)."""
    key = _new_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    crt = (_validity(x509.CertificateBuilder(), days)
           .subject_name(CA_NAME).issuer_name(CA_NAME)
           .public_key(key.public_key()).serial_number(x509.random_serial_number())
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                        key_encipherment=False, data_encipherment=False, key_agreement=False,
                                        key_cert_sign=True, crl_sign=True, encipher_only=False,
                                        decipher_only=False), critical=True)
           .add_extension(ski, critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
           .sign(key, hashes.SHA256()))
    # The key first: a certificate without its key would be kept by the next `init`.
    _write_key(ca_dir / "ca.key", key)
    _write(ca_dir / "ca.crt", crt.public_bytes(serialization.Encoding.PEM), 0o644)


def server_sans(fleet: Fleet) -> list[str]:
    """The names the broker's certificate must carry: `DNS:<name>`, `IP:<address>` (an address in
    Python's spelling, so 0:0::1 and ::1 are one)."""
    sans = [f"DNS:{fleet.hostname}"]
    if "." not in fleet.hostname:
        sans.append(f"DNS:{fleet.hostname}.local")  # mDNS, as Raspberry Pi OS announces it
    return sans + [f"IP:{ipaddress.ip_address(ip)}" for ip in fleet.ips]


def _san_entries(sans: list[str]) -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address(s[3:])) if s.startswith("IP:") else x509.DNSName(s[4:])
            for s in sans]


def cert_sans(crt: Path) -> set[str]:
    """The subjectAltName entries of a certificate, in server_sans' spelling; none if the file is
    not a certificate (`init` then signs a new one)."""
    try:
        ext = x509.load_pem_x509_certificate(crt.read_bytes()).extensions
        names = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return ({f"DNS:{n}" for n in names.get_values_for_type(x509.DNSName)}
            | {f"IP:{a}" for a in names.get_values_for_type(x509.IPAddress)})


def make_server_cert(ca_dir: Path, dest: Path, fleet: Fleet, days: int = SERVER_DAYS) -> None:
    """The broker's certificate for `fleet`'s host name(s) and addresses, signed by the lab CA in
    `ca_dir`, valid for `days` days; its key (0600) is kept if there is one."""
    ca_key, ca_crt = load_key(ca_dir / "ca.key"), load_cert(ca_dir / "ca.crt")
    if _spki(ca_key.public_key()) != _spki(ca_crt.public_key()):
        raise BrokerError(f"{ca_dir / 'ca.key'} is not the key of {ca_dir / 'ca.crt'}: "
                          "restore the pair, or move both away to make a new CA (the nodes then need the new ca.der)")
    key_path, crt_path = dest / "server.key", dest / "server.crt"
    if key_path.exists():
        key = load_key(key_path)
        os.chmod(key_path, 0o600)
    else:
        key = _new_key()
        _write_key(key_path, key)
    try:
        ca_ski = ca_crt.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:  # a CA made elsewhere without one
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_crt.public_key())
    crt = (_validity(x509.CertificateBuilder(), days)
           .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meetkit"),
                                    x509.NameAttribute(NameOID.COMMON_NAME, fleet.hostname)]))
           .issuer_name(ca_crt.subject)
           .public_key(key.public_key()).serial_number(x509.random_serial_number())
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                        key_encipherment=True, data_encipherment=False, key_agreement=False,
                                        key_cert_sign=False, crl_sign=False, encipher_only=False,
                                        decipher_only=False), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
           .add_extension(aki, critical=False)
           .add_extension(x509.SubjectAlternativeName(_san_entries(server_sans(fleet))), critical=False)
           .sign(ca_key, hashes.SHA256()))
    _write(crt_path, crt.public_bytes(serialization.Encoding.PEM), 0o644)


def ca_der(ca_dir: Path) -> None:
    """ca.der: the lab CA's certificate in DER form, which the firmware's TLS (mbedtls) reads."""
    _write(ca_dir / "ca.der", load_cert(ca_dir / "ca.crt").public_bytes(serialization.Encoding.DER), 0o644)


# ---------------------------------------------------------------------------------------------
# The commands


@dataclass
class Result:
    out: Path
    written: list[Path]
    kept: list[Path]
    nodes_added: list[str]


def init(out: Path, fleet: Fleet, nodes: list[str], renew_server_cert: bool = False) -> Result:
    """Write everything; keep what exists (CA, keys, passwords), add what is missing."""
    fleet.check()
    for n in nodes:
        check_node_id(n)
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    mdir, cadir = out / "mosquitto", out / "ca"
    mdir.mkdir(exist_ok=True)
    install_dir = Path(fleet.install_dir) if fleet.install_dir else mdir
    written: list[Path] = []
    kept: list[Path] = []

    doc = load_secrets(out) if (out / SECRETS).exists() else {}
    if doc and doc.get("prefix") != fleet.prefix:
        raise BrokerError(f"{out / SECRETS}: made for prefix {doc.get('prefix')!r}, not {fleet.prefix!r}")
    gateway = doc.get("gateway") or {"username": GATEWAY_USER, "password": new_password()}
    monitor = doc.get("monitor") or {"username": MONITOR_USER, "password": new_password()}
    known: dict[str, str] = dict(doc.get("nodes", {}))
    for user in RESERVED:
        if user in known:  # made before the id was reserved: it would share the account's password line
            raise BrokerError(f"{out / SECRETS}: has a node {user!r}, an id reserved for the {user} account; "
                              "remove it from `nodes` and give that node another id")
    added = [n for n in dict.fromkeys(nodes) if n not in known]
    # A neighbour's nodes (`meetkit region accounts`): kept, with the password their node holds.
    visitors: dict[str, dict] = dict(doc.get(VISITORS) or {})
    for n in added:
        if n in visitors:
            raise BrokerError(f"node id {n!r}: a node of gateway {visitors[n].get('home')!r} has an account here "
                              "already (`meetkit region accounts`); a node has one id in the region")
        known[n] = new_password()
    doc = {"prefix": fleet.prefix, "gateway": gateway, "monitor": monitor, "nodes": known,
           **({VISITORS: visitors} if visitors else {})}
    # The secrets first: a password the file does not hold must never be in the password file.
    written.append(save_secrets(out, doc))
    keys = load_node_keys(out)
    if any(n not in keys for n in known) or not (out / NODE_KEYS).exists():
        keys.update({n: new_node_key() for n in known if n not in keys})  # a node's key is kept: the node holds it
        written.append(save_node_keys(out, keys))
    else:
        os.chmod(out / NODE_KEYS, 0o600)
        kept.append(out / NODE_KEYS)
    written.append(write_passwd(out, {GATEWAY_USER: gateway["password"], MONITOR_USER: monitor["password"],
                                      **known, **{n: v["password"] for n, v in visitors.items()}}))
    _write(out / GATEWAY_PASSWORD, gateway["password"] + "\n", 0o600)
    _write(out / MONITOR_PASSWORD, monitor["password"] + "\n", 0o600)
    _write(out / MONITOR_DIR / "mosquitto_sub", mosquitto_sub_options(monitor["password"]), 0o600)
    written += [out / GATEWAY_PASSWORD, out / MONITOR_PASSWORD, out / MONITOR_DIR / "mosquitto_sub"]

    if (cadir / "ca.key").exists() and (cadir / "ca.crt").exists():
        kept += [cadir / "ca.key", cadir / "ca.crt"]
    else:
        make_ca(cadir)
        written += [cadir / "ca.key", cadir / "ca.crt"]
        renew_server_cert = True  # a new CA: the old server certificate is not signed by it
    # A new host name or address (the TLS listener binds it) needs a certificate that names it,
    # or every node fails the name check: signed again by the same CA, the nodes need nothing new.
    if (mdir / "server.crt").exists() and cert_sans(mdir / "server.crt") != set(server_sans(fleet)):
        renew_server_cert = True
    if renew_server_cert or not (mdir / "server.crt").exists():
        make_server_cert(cadir, mdir, fleet)
        written += [mdir / "server.key", mdir / "server.crt"]
    else:
        kept += [mdir / "server.key", mdir / "server.crt"]
    _write(mdir / "ca.crt", (cadir / "ca.crt").read_bytes(), 0o644)
    ca_der(cadir)
    written.append(cadir / "ca.der")
    _write(mdir / "acl", acl_text(fleet.prefix), 0o640)
    _write(mdir / "mosquitto.conf", conf_text(fleet, install_dir), 0o644)
    written += [mdir / "ca.crt", mdir / "acl", mdir / "mosquitto.conf"]
    return Result(out, written, kept, added)


def add_node(out: Path, node: str, new_password_if_known: bool = False, new_key_if_known: bool = False) -> Result:
    """One more node: its password in the secrets and the password file, its node key; nothing else
    changes. A known node keeps its password and key unless told to replace them."""
    check_node_id(node)
    out = Path(out).absolute()
    doc = load_secrets(out)
    nodes = doc.setdefault("nodes", {})
    keys = load_node_keys(out)
    known = node in nodes
    if node in (doc.get(VISITORS) or {}):
        raise BrokerError(f"node id {node!r}: a node of gateway {doc[VISITORS][node].get('home')!r} has an account "
                          "here already (`meetkit region accounts`); a node has one id in the region")
    if known and not (new_password_if_known or new_key_if_known):
        raise BrokerError(f"node {node}: has an account already (--new-password to replace its password, "
                          "--new-key its node key)")
    paths: list[Path] = []
    if not known or new_password_if_known:
        nodes[node] = new_password()
        passwd = out / "mosquitto" / "passwd"
        if not passwd.exists():
            raise BrokerError(f"{passwd}: not found; run `meetkit broker init --out {out}` first")
        (line,) = hash_passwords({node: nodes[node]}, passwd.parent)
        kept = [ln for ln in passwd.read_text().splitlines() if ln.strip() and ln.split(":", 1)[0] != node]
        paths.append(save_secrets(out, doc))
        _write(passwd, "\n".join(kept + [line]) + "\n", 0o640)
        paths.append(passwd)
    if node not in keys or new_key_if_known:
        keys[node] = new_node_key()
        paths.append(save_node_keys(out, keys))
    return Result(out, paths, [], [node])


def gateway_toml(out: Path, fleet: Fleet) -> str:
    """The [mqtt] table of gateway.toml for the gateway's own account, over the loopback listener."""
    return "\n".join([
        "[mqtt]",
        'host = "127.0.0.1"',
        f"port = {fleet.plain_port}",
        f'username = "{GATEWAY_USER}"',
        f'password_file = "{Path(out).absolute() / GATEWAY_PASSWORD}"',
        f'topic_prefix = "{fleet.prefix}"',
    ])


def mosquitto_sub_options(password: str) -> str:
    """mosquitto_sub's options file (`$XDG_CONFIG_HOME/mosquitto_sub`, one `-option value` a line,
    read before the command line): the monitor's password stays off the command line and `ps`."""
    return ("# meetkit: the monitor account, made by `meetkit broker init`. mosquitto_sub reads it as\n"
            "# $XDG_CONFIG_HOME/mosquitto_sub: XDG_CONFIG_HOME=<this folder> mosquitto_sub ...\n"
            f"-u {MONITOR_USER}\n"
            f"-P {password}\n")


def monitor_command(out: Path, fleet: Fleet, tls_host: str | None = None, cafile: Path | None = None) -> str:
    """The shell command that follows the alarm and the nodes' statuses with the monitor account:
    on the broker's machine over the loopback listener, or with `tls_host` over TLS from the LAN
    (`cafile`: where the lab CA's certificate is on that machine)."""
    opts = Path(out).absolute() / MONITOR_DIR
    where = (f"-h {tls_host} -p {fleet.tls_port} --cafile {cafile or Path(out).absolute() / 'ca' / 'ca.crt'}"
             if tls_host else f"-h 127.0.0.1 -p {fleet.plain_port}")
    return (f"env XDG_CONFIG_HOME={opts} mosquitto_sub {where} -v "
            f"-t '{fleet.prefix}/gateway/alarm' -t '{fleet.prefix}/+/status'")


def next_steps(res: Result, install_dir: Path | None = None, fleet: Fleet | None = None) -> str:
    m = res.out / "mosquitto"
    inst = install_dir or m
    fleet = fleet or Fleet()
    return "\n".join([
        f"secrets (passwords, mode 0600): {res.out / SECRETS}",
        f"node keys (mode 0600; provision puts each on its node, the gateway reads the file): {res.out / NODE_KEYS}",
        f"lab CA (keep {res.out / 'ca' / 'ca.key'} off the broker): {res.out / 'ca' / 'ca.crt'}",
        "next:",
        *([f"  on the broker, with {m}/ copied there if it is another machine:",
           f"  sudo install -d -o root -g mosquitto -m 0750 {inst}",
           f"  sudo install -o root -g mosquitto -m 0640 {m}/* {inst}/"] if inst != m else []),
        f"  sudo cp {inst / 'mosquitto.conf'} /etc/mosquitto/mosquitto.conf && sudo systemctl restart mosquitto",
        f"  each node: config.json broker.user = its node id, broker.password from {SECRETS}, broker.tls = true,",
        f"    broker.host = the broker's host name or --ip; {res.out / 'ca' / 'ca.der'} on its flash as ca.der",
        "  monitoring: the account `monitor` reads the gateway's alarm and the nodes' statuses and nothing",
        f"    else (password in {res.out / MONITOR_PASSWORD}); on the broker's machine:",
        f"  {monitor_command(res.out, fleet)}",
        "  the gateway: these lines in gateway.toml (under systemd: docs/operator.md, \"Securing the broker\"):",
        "",
        gateway_toml(res.out, fleet),
        "",
        "  and, for configuration and updates over the air (docs/operator.md, \"Running the fleet over the air\"):",
        "",
        "[fleet]",
        f'node_keys = "{res.out / NODE_KEYS}"',
    ])
