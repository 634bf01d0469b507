"""`meetkit broker`: the generated configuration, password file, ACL and certificates, proven
against a real Mosquitto started on free loopback ports (a plaintext and a TLS listener)."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import queue
import re
import shlex
import signal
import socket
import ssl
import stat
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from meetkit_tools import broker
from meetkit_tools.cli import main
from meetkit_tools.services import free_port, mosquitto_bin, stop_process, wait_listening

NODES = ["ams-001", "ams-002"]
P = "meetkit"


def fleet(tmp: Path, plain_port: int = 1883, tls_port: int = 8883) -> broker.Fleet:
    # As on the Pi, except what a test must have of its own: ports, persistence, log, no pid file,
    # and the user that runs us (root would switch to `mosquitto`, which may not read tmp files).
    return broker.Fleet(prefix=P, hostname="meetkit-gw", ips=["127.0.0.1"], plain_port=plain_port,
                        tls_port=tls_port, persistence_location=f"{tmp}/", pid_file=None,
                        log_dest=f"file {tmp / 'mosquitto.log'}", user=pwd.getpwuid(os.geteuid()).pw_name)


class Running:
    def __init__(self, out: Path, plain: int, tls: int, proc: subprocess.Popen, fleet: broker.Fleet,
                 log: Path) -> None:
        self.out, self.plain, self.tls, self.proc, self.fleet, self.log = out, plain, tls, proc, fleet, log
        self.ca = out / "ca" / "ca.crt"

    @property
    def secrets(self) -> dict:
        return json.loads((self.out / broker.SECRETS).read_text())

    def password(self, user: str) -> str:
        s = self.secrets
        return s[user]["password"] if user in broker.RESERVED else s["nodes"][user]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("broker")
    plain, tls = free_port(), free_port()
    f = fleet(tmp, plain, tls)
    res = broker.init(tmp / "out", f, NODES)
    conf = res.out / "mosquitto" / "mosquitto.conf"
    with (tmp / "mosquitto.out").open("ab") as log:
        proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", plain, proc, "mosquitto")
        wait_listening("127.0.0.1", tls, proc, "mosquitto (TLS)")
        yield Running(res.out, plain, tls, proc, f, tmp / "mosquitto.log")
    finally:
        stop_process(proc)


class Client:
    """A paho client, connected synchronously; what it receives goes to `self.got`."""


    def __init__(self, b: Running, user: str | None, *, password: str | None = None, tls: bool = False,
                 cafile: Path | None = None, client_id: str | None = None,
                 will: tuple[str, str] | None = None) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}")
        if user is not None:
            self.c.username_pw_set(user, b.password(user) if password is None else password)
        if tls:
            ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
            self.c.tls_set_context(ctx)
        if will:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connack: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.put(rc)
        # Retained messages sent on subscribing (earlier tests' statuses) are kept apart.
        self.retained: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.c.on_message = lambda c, u, m: (self.retained if m.retain else self.got).put((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.c.connect("127.0.0.1", b.tls if tls else b.plain, keepalive=30)
        self.c.loop_start()
        try:
            self.rc = self.connack.get(timeout=5)
        except queue.Empty:
            self.rc = None
        if self.rc is None or self.rc.is_failure:
            self.close()

    @property
    def ok(self) -> bool:
        return self.rc is not None and not self.rc.is_failure

    def sub(self, *topics: str) -> list:
        self.c.subscribe([(t, 1) for t in topics])
        return self.subacks.get(timeout=5)

    def pub(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def next(self, timeout: float = 5) -> tuple[str, bytes]:
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def gateway(running: Running) -> Iterator[Client]:
    g = Client(running, broker.GATEWAY_USER)
    assert g.ok, g.rc
    g.sub(f"{P}/+/up", f"{P}/+/status")
    yield g
    g.close()


# ---------------------------------------------------------------------------------------------
# The files


def test_layout_modes_and_contents(tmp_path: Path) -> None:
    res = broker.init(tmp_path / "out", fleet(tmp_path), NODES)
    out = res.out
    mode = lambda p: stat.S_IMODE((out / p).stat().st_mode)  # noqa: E731
    assert mode("secrets.json") == 0o600
    assert mode("ca/ca.key") == 0o600
    assert mode("mosquitto/server.key") == 0o600
    assert mode("mosquitto/passwd") == 0o640 and mode("mosquitto/acl") == 0o640
    s = json.loads((out / "secrets.json").read_text())
    assert s["prefix"] == P and set(s["nodes"]) == set(NODES) and s["gateway"]["username"] == "gateway"
    assert s["monitor"]["username"] == "monitor"
    pwds = [s["gateway"]["password"], s["monitor"]["password"], *s["nodes"].values()]
    assert len(set(pwds)) == 4 and all(len(p) >= 32 for p in pwds)
    passwd = (out / "mosquitto/passwd").read_text()
    assert [ln.split(":")[0] for ln in passwd.splitlines()] == ["gateway", "monitor", *NODES]
    assert all(p not in passwd for p in pwds) and passwd.count("$7$") == 4  # hashed by mosquitto_passwd
    conf = (out / "mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 1883 127.0.0.1" in conf and "listener 8883 127.0.0.1" in conf
    assert f"\nmax_packet_size {broker.MAX_PACKET_BYTES}\n" in conf and broker.MAX_PACKET_BYTES == 16896
    assert "\nmax_queued_bytes 100000000\n" in conf  # the gateway's queue while it is away stays generous
    assert f"password_file {out}/mosquitto/passwd" in conf and f"acl_file {out}/mosquitto/acl" in conf
    acl = (out / "mosquitto/acl").read_text()
    assert ("pattern write meetkit/%u/up\npattern write meetkit/%u/status\npattern write meetkit/%u/event\n"
            "pattern write meetkit/%u/ota/get\npattern read meetkit/%u/ack\n") in acl
    # one key per node, 32 random bytes, readable by the owner only
    assert mode("node-keys.json") == 0o600
    keys = json.loads((out / "node-keys.json").read_text())["nodes"]
    assert set(keys) == set(NODES) and len(set(keys.values())) == 2
    assert all(len(bytes.fromhex(k)) == 32 for k in keys.values())
    text = subprocess.run(["openssl", "x509", "-in", str(out / "mosquitto/server.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:meetkit-gw, DNS:meetkit-gw.local, IP Address:127.0.0.1" in text
    subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca/ca.crt"), str(out / "mosquitto/server.crt")],
                   check=True, capture_output=True)
    assert (out / "mosquitto/ca.crt").read_bytes() == (out / "ca/ca.crt").read_bytes()
    # the nodes' copy: the same certificate in DER form (the firmware's mbedtls reads DER)
    der = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(out / "ca/ca.der"), "-outform", "PEM"],
                         capture_output=True, text=True, check=True).stdout
    assert der == (out / "ca/ca.crt").read_text()
    # the gateway's password alone, for gateway.toml's mqtt.password_file
    assert mode("gateway.password") == 0o600
    assert (out / "gateway.password").read_text() == s["gateway"]["password"] + "\n"
    # the monitor's: alone, and as mosquitto_sub's options file
    assert mode("monitor.password") == 0o600 and mode("monitor/mosquitto_sub") == 0o600
    assert (out / "monitor.password").read_text() == s["monitor"]["password"] + "\n"
    opts = [ln for ln in (out / "monitor/mosquitto_sub").read_text().splitlines() if not ln.startswith("#")]
    assert opts == ["-u monitor", f"-P {s['monitor']['password']}"]


def test_init_again_keeps_ca_keys_and_passwords(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broker.init(out, fleet(tmp_path), ["ams-001"])
    before = {p: (out / p).read_bytes() for p in ("ca/ca.key", "ca/ca.crt", "mosquitto/server.key", "mosquitto/server.crt")}
    s1 = json.loads((out / "secrets.json").read_text())
    res = broker.init(out, fleet(tmp_path), ["ams-001", "ams-003"])
    assert res.nodes_added == ["ams-003"]
    assert before == {p: (out / p).read_bytes() for p in before}
    s2 = json.loads((out / "secrets.json").read_text())
    assert s2["gateway"] == s1["gateway"] and s2["nodes"]["ams-001"] == s1["nodes"]["ams-001"]
    assert s2["monitor"] == s1["monitor"]
    assert (out / "monitor.password").read_text() == s1["monitor"]["password"] + "\n"
    broker.init(out, fleet(tmp_path), [], renew_server_cert=True)
    assert (out / "mosquitto/server.crt").read_bytes() != before["mosquitto/server.crt"]
    assert (out / "ca/ca.key").read_bytes() == before["ca/ca.key"]


def test_node_keys_are_kept_like_passwords(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broker.init(out, fleet(tmp_path), ["ams-001"])
    k1 = json.loads((out / "node-keys.json").read_text())["nodes"]
    os.chmod(out / "node-keys.json", 0o644)
    broker.init(out, fleet(tmp_path), ["ams-001", "ams-003"])
    k2 = json.loads((out / "node-keys.json").read_text())["nodes"]
    assert k2["ams-001"] == k1["ams-001"] and set(k2) == {"ams-001", "ams-003"}  # the node holds its key: kept
    assert stat.S_IMODE((out / "node-keys.json").stat().st_mode) == 0o600
    broker.add_node(out, "ams-004")
    k3 = json.loads((out / "node-keys.json").read_text())["nodes"]
    assert {n: k3[n] for n in k2} == k2 and len(bytes.fromhex(k3["ams-004"])) == 32
    pw = json.loads((out / "secrets.json").read_text())["nodes"]["ams-004"]
    broker.add_node(out, "ams-004", new_key_if_known=True)  # a stolen board: a new key, the password kept
    k4 = json.loads((out / "node-keys.json").read_text())["nodes"]
    assert k4["ams-004"] != k3["ams-004"] and json.loads((out / "secrets.json").read_text())["nodes"]["ams-004"] == pw
    assert broker.node_key(out, "ams-004") == bytes.fromhex(k4["ams-004"])
    from meetkit_gateway.signed import NodeKeys  # the gateway reads the same file ([fleet] node_keys)

    assert NodeKeys(out / "node-keys.json").key("ams-004") == bytes.fromhex(k4["ams-004"])
    # a folder made before node keys: init again gives every known node one, ensure_node_key one node
    (out / "node-keys.json").unlink()
    assert broker.ensure_node_key(out, "ams-001")[1] is True
    broker.init(out, fleet(tmp_path), [])
    assert set(json.loads((out / "node-keys.json").read_text())["nodes"]) == {"ams-001", "ams-003", "ams-004"}
    # a damaged file is said, never replaced by new keys the nodes do not have
    (out / "node-keys.json").write_text("{not json")
    with pytest.raises(broker.BrokerError, match="node-keys.json: cannot be read"):
        broker.init(out, fleet(tmp_path), [])
    with pytest.raises(broker.BrokerError, match="node-keys.json: cannot be read"):
        broker.add_node(out, "ams-005")


def test_init_again_with_a_new_address_signs_a_certificate_that_names_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broker.init(out, fleet(tmp_path), ["ams-001"])
    crt, ca = (out / "mosquitto/server.crt").read_bytes(), (out / "ca/ca.crt").read_bytes()
    moved = dataclasses.replace(fleet(tmp_path), ips=["127.0.0.1", "192.168.1.20"])
    res = broker.init(out, moved, [])
    assert (out / "mosquitto/server.crt").read_bytes() != crt and out / "mosquitto/server.crt" in res.written
    assert broker.cert_sans(out / "mosquitto/server.crt") == {
        "DNS:meetkit-gw", "DNS:meetkit-gw.local", "IP:127.0.0.1", "IP:192.168.1.20"}
    assert (out / "ca/ca.crt").read_bytes() == ca  # the nodes' ca.der stays valid


@pytest.mark.parametrize("bad", ["gateway", "monitor", "AMS-001", "a/b", "+", "#", "", "x" * 33])
def test_bad_node_ids_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(broker.BrokerError):
        broker.init(tmp_path / "out", fleet(tmp_path), [bad])


def test_init_again_on_files_from_before_the_monitor_account(tmp_path: Path) -> None:
    out = tmp_path / "out"
    broker.init(out, fleet(tmp_path), ["ams-001"])
    s = json.loads((out / "secrets.json").read_text())
    del s["monitor"]  # secrets.json as `init` wrote it before it made the monitor account
    (out / "secrets.json").write_text(json.dumps(s))
    broker.init(out, fleet(tmp_path), [])
    s2 = json.loads((out / "secrets.json").read_text())
    assert s2["gateway"] == s["gateway"] and s2["nodes"] == s["nodes"] and len(s2["monitor"]["password"]) >= 32
    assert [ln.split(":")[0] for ln in (out / "mosquitto/passwd").read_text().splitlines()] == \
        ["gateway", "monitor", "ams-001"]
    # a node that took the id `monitor` before it was reserved: said, not merged into the account
    s2["nodes"]["monitor"] = "its-password"
    (out / "secrets.json").write_text(json.dumps(s2))
    with pytest.raises(broker.BrokerError, match="reserved for the monitor account"):
        broker.init(out, fleet(tmp_path), [])


def test_cli_prints_paths_never_passwords(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["broker", "init", "--out", str(out), "--node", "ams-001", "--hostname", "gw",
                 "--ip", "192.168.1.10"]) == 0  # --install-dir /etc/mosquitto/meetkit by default
    assert main(["broker", "add-node", "ams-002", "--out", str(out)]) == 0
    assert main(["broker", "add-node", "ams-002", "--out", str(out)]) == 1  # known: not replaced silently
    text = capsys.readouterr()
    s = json.loads((out / "secrets.json").read_text())
    keys = json.loads((out / "node-keys.json").read_text())["nodes"]
    for pw in [s["gateway"]["password"], s["monitor"]["password"], *s["nodes"].values(), *keys.values()]:
        assert pw not in text.out and pw not in text.err
    assert f'[fleet]\nnode_keys = "{out / "node-keys.json"}"\n' in text.out  # for gateway.toml
    # how to follow the alarm with the monitor account: the command, its options file named, no password
    assert f"  {broker.monitor_command(out, broker.Fleet())}\n" in text.out
    assert f"XDG_CONFIG_HOME={out / 'monitor'} mosquitto_sub -h 127.0.0.1 -p 1883 " in text.out
    assert str(out / "monitor.password") in text.out
    assert str(out / "secrets.json") in text.out and "has an account already" in text.err
    # the [mqtt] lines for gateway.toml, ready to paste: they name the password file, not the password
    lines = text.out.splitlines()
    start = lines.index("[mqtt]")
    assert lines[start:start + 6] == ["[mqtt]", 'host = "127.0.0.1"', "port = 1883", 'username = "gateway"',
                                      f'password_file = "{out / "gateway.password"}"', 'topic_prefix = "meetkit"']
    conf = (out / "mosquitto/mosquitto.conf").read_text()
    assert "password_file /etc/mosquitto/meetkit/passwd" in conf and "listener 8883 192.168.1.10" in conf
    # how the files get to where Mosquitto (user mosquitto) can read them
    assert f"sudo install -o root -g mosquitto -m 0640 {out / 'mosquitto'}/* /etc/mosquitto/meetkit/\n" in text.out


# ---------------------------------------------------------------------------------------------
# A real Mosquitto with the generated files


def test_anonymous_and_wrong_passwords_refused(running: Running) -> None:
    for tls in (False, True):
        anon = Client(running, None, tls=tls, cafile=running.ca)
        assert not anon.ok and anon.rc is not None
        wrong = Client(running, "ams-001", password="not-the-password", tls=tls, cafile=running.ca)
        assert not wrong.ok and wrong.rc is not None


def test_node_publishes_its_own_topics_and_the_gateway_receives(running: Running, gateway: Client) -> None:
    a = Client(running, "ams-001", tls=True, cafile=running.ca, client_id="ams-001",
               will=(f"{P}/ams-001/status", '{"online":false}'))
    assert a.ok, a.rc
    a.pub(f"{P}/ams-001/status", '{"online":true}', retain=True)
    a.pub(f"{P}/ams-001/up", "batch")
    assert gateway.next() == (f"{P}/ams-001/status", b'{"online":true}')
    assert gateway.next() == (f"{P}/ams-001/up", b"batch")
    a.c.loop_stop()
    a.c.socket().close()  # gone without a DISCONNECT: the broker publishes the last will
    assert gateway.next() == (f"{P}/ams-001/status", b'{"online":false}')


def test_node_cannot_publish_as_another_node(running: Running, gateway: Client) -> None:
    a = Client(running, "ams-001", tls=True, cafile=running.ca)
    assert a.ok
    for topic in (f"{P}/ams-002/up", f"{P}/ams-002/status", f"{P}/ams-001/ack", f"{P}/gateway/alarm",
                  f"{P}/ams-001/up/x", "other/ams-001/up"):
        a.pub(topic, "forged")
    a.pub(f"{P}/ams-001/up", "control")  # after the others on the same connection, QoS 1
    assert gateway.next() == (f"{P}/ams-001/up", b"control")
    with pytest.raises(queue.Empty):
        gateway.next(timeout=0.3)
    a.close()
    # nor with the other node's will
    w = Client(running, "ams-001", tls=True, cafile=running.ca, will=(f"{P}/ams-002/status", "forged"))
    if w.ok:
        w.c.loop_stop()
        w.c.socket().close()
    # (Mosquitto 2.0 accepts the connection and drops the will when it is due.)
    b = Client(running, "ams-002", client_id="ams-002")
    b.pub(f"{P}/ams-002/up", "control")
    assert gateway.next() == (f"{P}/ams-002/up", b"control")
    with pytest.raises(queue.Empty):
        gateway.next(timeout=0.5)
    b.close()


def test_node_reads_only_its_own_ack(running: Running, gateway: Client) -> None:
    a = Client(running, "ams-001", tls=True, cafile=running.ca)
    # Mosquitto 2.0 grants the subscriptions (MQTT 3.1.1) and checks the ACL on each delivery.
    a.sub(f"{P}/ams-002/ack", f"{P}/+/ack", "#", f"{P}/ams-001/ack", f"{P}/ams-001/config")
    gateway.pub(f"{P}/ams-002/ack", "for b")
    gateway.pub(f"{P}/gateway/alarm", "alarm")
    gateway.pub(f"{P}/ams-001/ack", "for a")
    got = [a.next()]
    with pytest.raises(queue.Empty):
        got.append(a.next(timeout=0.3))
    assert {t for t, _ in got} == {f"{P}/ams-001/ack"}
    a.close()


def test_gateway_account(running: Running, gateway: Client) -> None:
    mon = Client(running, broker.GATEWAY_USER, client_id="second-gateway")  # a second gateway session
    mon.sub(f"{P}/gateway/alarm", f"{P}/ams-001/ack", f"{P}/ams-001/up")  # it writes the first two only
    n = Client(running, "ams-001")
    n.sub(f"{P}/ams-001/ack")
    gateway.pub(f"{P}/gateway/alarm", "alarm")
    gateway.pub(f"{P}/ams-001/ack", "ack")
    assert n.next() == (f"{P}/ams-001/ack", b"ack")
    n.pub(f"{P}/ams-001/up", "control")
    assert mon.next() == (f"{P}/ams-001/up", b"control")
    assert mon.got.empty()
    mon.close()
    n.close()


def test_tls_needs_the_lab_ca(running: Running) -> None:
    trusting = Client(running, "ams-001", tls=True, cafile=running.ca)
    assert trusting.ok
    trusting.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(running, "ams-001", tls=True, cafile=None)  # the system's CAs only


def test_client_id_is_the_username_on_tls(running: Running, gateway: Client) -> None:
    # b uses its username as its client id, as a node does; a claims that id with its own account:
    # without use_username_as_clientid the broker would hand a b's session and disconnect b
    b = Client(running, "ams-002", tls=True, cafile=running.ca, client_id="ams-002")
    b.sub(f"{P}/ams-002/ack")
    a = Client(running, "ams-001", tls=True, cafile=running.ca, client_id="ams-002")
    assert a.ok
    gateway.pub(f"{P}/ams-002/ack", "still here")
    assert b.next() == (f"{P}/ams-002/ack", b"still here") and not b.disconnected.is_set()
    a.close()
    b.close()


def test_add_node_with_the_broker_running(running: Running, gateway: Client) -> None:
    assert not Client(running, "ams-009", password="x").ok
    before = {u: running.password(u) for u in ("gateway", *NODES)}
    broker.add_node(running.out, "ams-009")
    assert {u: running.password(u) for u in before} == before
    assert stat.S_IMODE((running.out / broker.SECRETS).stat().st_mode) == 0o600
    running.proc.send_signal(signal.SIGHUP)  # `systemctl reload mosquitto`
    deadline = time.monotonic() + 20   # the broker reads its password file again
    while not (c := Client(running, "ams-009", tls=True, cafile=running.ca)).ok and time.monotonic() < deadline:
        time.sleep(0.1)  # waits on: the broker taking the new account
    assert c.ok
    c.pub(f"{P}/ams-009/up", "new")
    c.pub(f"{P}/ams-001/up", "forged")
    c.pub(f"{P}/ams-009/up", "control")
    assert [gateway.next(), gateway.next()] == [(f"{P}/ams-009/up", b"new"), (f"{P}/ams-009/up", b"control")]
    old = Client(running, "ams-001")
    assert old.ok
    c.close()
    old.close()


def test_a_prefix_too_long_for_the_size_limit_refused(tmp_path: Path) -> None:
    long = dataclasses.replace(fleet(tmp_path), prefix="p" * (broker.MAX_PREFIX + 1))
    with pytest.raises(broker.BrokerError, match="at most 128 characters"):
        broker.init(tmp_path / "out", long, [])


# ---------------------------------------------------------------------------------------------
# The size limit (max_packet_size), with a real Mosquitto


def _remaining_length(n: int) -> bytes:
    out = b""
    while True:
        n, digit = n >> 7, n & 0x7F
        out += bytes([digit | (0x80 if n else 0)])
        if not n:
            return out


def _s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


class RawNode:
    """A node's account over TLS, speaking MQTT 3.1.1 by hand, as a node gone wrong might: it writes
    its packets without waiting for anything, so what the broker does with each one shows."""

    def __init__(self, b: Running, user: str) -> None:
        ctx = ssl.create_default_context(cafile=str(b.ca))
        self.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", b.tls), timeout=5),
                                    server_hostname="127.0.0.1")
        body = (_s(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30) + _s(user.encode())
                + _s(user.encode()) + _s(b.password(user).encode()))
        self.sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        assert self._read(4) == b"\x20\x02\x00\x00", "CONNACK: accepted"
        self.mid = 0

    def _read(self, n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = self.sock.recv(n - len(got))
            if not chunk:
                raise ConnectionError("closed by the broker")
            got += chunk
        return got

    def header(self, topic: str, payload_len: int) -> bytes:
        """A QoS 1 PUBLISH's fixed header and variable header, for a payload of `payload_len` bytes."""
        self.mid += 1
        var = _s(topic.encode()) + struct.pack("!H", self.mid)
        return b"\x32" + _remaining_length(len(var) + payload_len) + var

    def publish(self, topic: str, payload: bytes) -> bool:
        """False when the broker had closed the connection already."""
        try:
            self.sock.sendall(self.header(topic, len(payload)) + payload)
            return True
        except OSError:
            return False

    def closed_by_broker(self, timeout: float = 5) -> bool:
        """Whether the broker closes the connection within `timeout` (PUBACKs are read past)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
            return True
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def wait_log(b: Running, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := b.log.read_text(errors="replace")):
        if time.monotonic() > deadline:
            raise AssertionError(f"mosquitto log: no {text!r} within {timeout} s")
        time.sleep(0.05)  # waits on: the log line
    return log


def largest_payload(topic: str) -> int:
    """The largest QoS 1 payload on `topic` that Mosquitto 2.0.11 takes under max_packet_size: it
    counts the packet's remaining length (topic, packet id, payload) plus one byte."""
    return broker.MAX_PACKET_BYTES - 1 - (2 + len(topic.encode()) + 2)


def test_a_node_over_the_limit_is_disconnected_and_gets_nothing_through(running: Running, gateway: Client) -> None:
    up = f"{P}/ams-001/up"
    n = RawNode(running, "ams-001")
    # back to back on one connection: a batch, a message over the limit, another batch
    assert n.publish(up, b"batch 1")
    n.publish(up, b"x" * 70_000)
    n.publish(up, b"batch 2")
    assert n.closed_by_broker()
    assert gateway.next() == (up, b"batch 1")
    with pytest.raises(queue.Empty):
        gateway.next(timeout=0.5)  # neither the big one nor what followed it on that connection
    assert "Client ams-001 disconnected due to oversize packet." in wait_log(running, "oversize packet")
    # the account is not locked out: connected again, the node sends what it still holds
    n = RawNode(running, "ams-001")
    assert n.publish(up, b"batch 2")
    assert gateway.next() == (up, b"batch 2")
    n.close()


def test_the_limit_to_the_byte(running: Running, gateway: Client) -> None:
    up = f"{P}/ams-002/up"
    n = RawNode(running, "ams-002")
    fits = largest_payload(up)
    assert fits == broker.MAX_PACKET_BYTES - 23 and fits < broker.MAX_PACKET_BYTES
    assert n.publish(up, b"a" * fits)
    got = gateway.next()
    assert got[0] == up and len(got[1]) == fits
    n.publish(up, b"b" * (fits + 1))
    assert n.closed_by_broker()
    n.close()
    control = Client(running, "ams-002", tls=True, cafile=running.ca)
    control.pub(up, "control")
    assert gateway.next() == (up, b"control")
    control.close()


def test_the_broker_reads_no_further_than_the_header(running: Running) -> None:
    # A PUBLISH that announces a megabyte: the broker closes the connection at its header, with
    # the megabyte not sent; it never holds it in memory.
    n = RawNode(running, "ams-001")
    n.sock.sendall(n.header(f"{P}/ams-001/up", 1_000_000) + b"x" * 1000)
    assert n.closed_by_broker()
    n.close()


def test_a_batch_and_the_gateways_16_kb_go_through(running: Running, gateway: Client) -> None:
    a = Client(running, "ams-001", tls=True, cafile=running.ca)
    a.sub(f"{P}/ams-001/ack")
    batch = ('{"v":1,"node":"ams-001","recs":[' + ",".join(["[1,2,3,4.5,6.7]"] * 120))[:1800].encode()
    a.pub(f"{P}/ams-001/up", batch)
    assert gateway.next() == (f"{P}/ams-001/up", batch)
    chunk = bytes(range(256)) * (broker.GATEWAY_PAYLOAD_BYTES // 256)  # a release chunk to come (issue 15)
    gateway.pub(f"{P}/ams-001/ack", chunk)
    assert a.next() == (f"{P}/ams-001/ack", chunk) and len(chunk) == 16384
    # the room the limit keeps: 16384 bytes on a topic of TOPIC_ROOM_BYTES still fits
    assert largest_payload("t" * broker.TOPIC_ROOM_BYTES) >= broker.GATEWAY_PAYLOAD_BYTES
    a.close()


def test_one_garbage_spewing_node_gets_nothing_above_the_limit_to_the_gateway(
        running: Running, gateway: Client) -> None:
    """The audit's scenario: a node spews 70 KB messages (150 of them, and a megabyte) as fast as
    it can write them, reconnecting whenever the broker drops it; another node sends its batches
    meanwhile. The gateway gets every batch of both, and nothing at or over the limit."""
    garbage = bytes(range(256)) * (70_000 // 256)
    spewer_up, honest_up = f"{P}/ams-001/up", f"{P}/ams-002/up"
    honest = Client(running, "ams-002", tls=True, cafile=running.ca)
    expected: list[tuple[str, bytes]] = []
    spewed = 0
    for round_ in range(15):
        s = RawNode(running, "ams-001")
        s.publish(spewer_up, f"spewer's batch {round_}".encode())  # what it sends between the garbage goes through
        expected.append((spewer_up, f"spewer's batch {round_}".encode()))
        for _ in range(10):
            s.publish(spewer_up, garbage)  # False once the broker has closed the connection
            spewed += 1
        if round_ == 7:
            s.publish(spewer_up, b"y" * 1_000_000)
        assert s.closed_by_broker()
        s.close()
        honest.pub(honest_up, f"honest batch {round_}")
        expected.append((honest_up, f"honest batch {round_}".encode()))
    honest.pub(honest_up, "the last")  # every spewer connection is closed by now: all it got through is in
    got: list[tuple[str, bytes]] = []
    while (m := gateway.next()) != (honest_up, b"the last"):
        got.append(m)
    assert spewed == 150
    assert sorted(got) == sorted(expected)
    assert max(len(p) for _, p in got) < broker.MAX_PACKET_BYTES
    honest.close()


# ---------------------------------------------------------------------------------------------
# The monitor account


def follow(cmd: str, until: str | re.Pattern, timeout: float = 10) -> list[str]:
    """Run the shell command `cmd` (split as a shell would) and read its lines until one equals
    `until` (or matches it whole); then stop it. The lines up to that one."""
    proc = subprocess.Popen(shlex.split(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln.rstrip("\n")) for ln in proc.stdout or ()], daemon=True).start()
    seen: list[str] = []
    done = (lambda ln: until.fullmatch(ln) is not None) if isinstance(until, re.Pattern) else until.__eq__
    try:
        deadline = time.monotonic() + timeout
        while not seen or not done(seen[-1]):
            try:
                seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"{cmd}: no {until!r} within {timeout} s; it printed {seen}") from None
        return seen
    finally:
        stop_process(proc)


@pytest.mark.parametrize("tls", [False, True], ids=["loopback", "tls"])
def test_the_printed_monitor_command_reads_the_retained_alarm(running: Running, gateway: Client, tls: bool) -> None:
    alarm = f'{{"v":1,"alarm":"disk_full","active":true,"at":1795510800,"reason":"test {tls}"}}'
    gateway.pub(f"{P}/gateway/alarm", alarm, retain=True)
    cmd = broker.monitor_command(running.out, running.fleet, tls_host="127.0.0.1" if tls else None)
    assert "-P" not in cmd and running.password("monitor") not in cmd  # the password stays off `ps`
    assert f"{P}/gateway/alarm {alarm}" in follow(cmd, f"{P}/gateway/alarm {alarm}")
    # it follows the nodes' statuses too (online, and the last will when one is gone)
    n = Client(running, "ams-002", tls=True, cafile=running.ca)
    n.pub(f"{P}/ams-002/status", f'{{"online":true,"tls":{str(tls).lower()}}}', retain=True)
    follow(cmd, f'{P}/ams-002/status {{"online":true,"tls":{str(tls).lower()}}}')
    n.close()


def test_the_monitor_publishes_nowhere(running: Running, gateway: Client) -> None:
    node = Client(running, "ams-001", tls=True, cafile=running.ca)
    node.sub(f"{P}/ams-001/ack", f"{P}/ams-001/config")
    reader = Client(running, broker.MONITOR_USER)
    reader.sub(f"{P}/gateway/alarm")
    mon = Client(running, broker.MONITOR_USER, tls=True, cafile=running.ca,
                 will=(f"{P}/ams-001/status", "forged will"))
    assert mon.ok and reader.ok
    # its own id's topics too: the node patterns of the ACL would give it those
    for topic in (f"{P}/ams-001/up", f"{P}/ams-001/status", f"{P}/ams-001/ack", f"{P}/ams-001/config",
                  f"{P}/gateway/alarm", f"{P}/monitor/up", f"{P}/monitor/status", f"{P}/monitor/ack"):
        mon.c.publish(topic, "forged", qos=1, retain=topic.endswith("alarm")).wait_for_publish(5)
    mon.c.loop_stop()
    mon.c.socket().close()  # gone without a DISCONNECT: its will is due, and denied
    node.pub(f"{P}/ams-001/up", "control")
    assert gateway.next() == (f"{P}/ams-001/up", b"control")  # not forged, nor the will
    gateway.pub(f"{P}/ams-001/ack", "control")
    assert node.next() == (f"{P}/ams-001/ack", b"control")
    gateway.pub(f"{P}/gateway/alarm", "control")
    assert reader.next() == (f"{P}/gateway/alarm", b"control")
    assert gateway.got.empty() and node.got.empty() and reader.got.empty()
    fresh = Client(running, broker.MONITOR_USER)
    fresh.sub(f"{P}/gateway/alarm")
    assert fresh.retained.get(timeout=5)[1] != b"forged"  # the retained alarm is still the gateway's
    for c in (node, reader, fresh):
        c.close()


def test_the_monitor_reads_the_alarm_and_the_statuses_only(running: Running, gateway: Client) -> None:
    mon = Client(running, broker.MONITOR_USER)
    mon.sub("#", f"{P}/+/up", f"{P}/+/ack", f"{P}/ams-001/ack", f"{P}/+/config", f"{P}/+/ota", f"{P}/+/ota/#",
            f"{P}/+/cmd", f"{P}/+/event", "$SYS/#")
    node = Client(running, "ams-001", tls=True, cafile=running.ca)
    node.sub(f"{P}/ams-001/ack")
    node.pub(f"{P}/ams-001/up", "a batch")
    node.pub(f"{P}/ams-001/status", '{"online":true}')
    assert gateway.next() == (f"{P}/ams-001/up", b"a batch")
    gateway.pub(f"{P}/ams-001/ack", "an ack")
    assert node.next() == (f"{P}/ams-001/ack", b"an ack")
    # the gateway's messages to the node and the node's events are the gateway's and the node's alone
    for kind in ("config", "ota", "ota/chunk", "cmd"):
        gateway.pub(f"{P}/ams-001/{kind}", f"for the node: {kind}")
    node.pub(f"{P}/ams-001/event", "an event")
    node.pub(f"{P}/ams-001/ota/get", "a request")
    gateway.pub(f"{P}/gateway/alarm", "the alarm")
    got = [mon.next(), mon.next()]
    assert got == [(f"{P}/ams-001/status", b'{"online":true}'), (f"{P}/gateway/alarm", b"the alarm")]
    with pytest.raises(queue.Empty):
        mon.next(timeout=0.3)
    mon.close()
    node.close()


def test_nodes_cannot_read_the_alarm(running: Running, gateway: Client) -> None:
    gateway.pub(f"{P}/gateway/alarm", "retained alarm", retain=True)
    n = Client(running, "ams-002", tls=True, cafile=running.ca)
    n.sub(f"{P}/gateway/alarm", "#", f"{P}/ams-002/ack")
    gateway.pub(f"{P}/gateway/alarm", "live alarm")
    gateway.pub(f"{P}/ams-002/ack", "control")
    assert n.next() == (f"{P}/ams-002/ack", b"control")
    assert n.got.empty() and all(t != f"{P}/gateway/alarm" for t, _ in list(n.retained.queue))
    n.close()


# ---------------------------------------------------------------------------------------------
# Running the fleet over the air (docs/payload.md): configuration, releases and commands come
# from the gateway's account only; a node writes only its own event and ota/get

TO_NODE = ("config", "ota", "ota/chunk", "cmd")


def test_only_the_gateway_publishes_to_a_nodes_config_ota_and_cmd(running: Running) -> None:
    gw = Client(running, broker.GATEWAY_USER)
    a = Client(running, "ams-001", tls=True, cafile=running.ca, client_id="ams-001")
    b = Client(running, "ams-002", tls=True, cafile=running.ca, client_id="ams-002")
    mon = Client(running, broker.MONITOR_USER)
    assert gw.ok and a.ok and b.ok and mon.ok
    a.sub(*(f"{P}/ams-001/{k}" for k in TO_NODE))
    for kind in TO_NODE:
        b.pub(f"{P}/ams-001/{kind}", f"b pushes to a: {kind}")  # node B cannot push to node A
        a.pub(f"{P}/ams-001/{kind}", f"a pushes to itself: {kind}")  # nor A to itself
        mon.pub(f"{P}/ams-001/{kind}", f"the monitor: {kind}")
    for kind in TO_NODE:
        gw.pub(f"{P}/ams-001/{kind}", f"from the gateway: {kind}")
    got = [a.next() for _ in TO_NODE]
    assert got == [(f"{P}/ams-001/{k}", f"from the gateway: {k}".encode()) for k in TO_NODE]
    with pytest.raises(queue.Empty):
        a.next(timeout=0.3)
    for c in (gw, a, b, mon):
        c.close()


def test_a_node_reads_only_its_own_config_ota_and_cmd(running: Running) -> None:
    gw = Client(running, broker.GATEWAY_USER)
    a = Client(running, "ams-001", tls=True, cafile=running.ca)
    b = Client(running, "ams-002", tls=True, cafile=running.ca)
    # Mosquitto grants the subscriptions and checks the ACL on each delivery
    b.sub("#", f"{P}/+/config", f"{P}/+/ota", f"{P}/+/ota/chunk", f"{P}/+/cmd", f"{P}/ams-001/ota/chunk",
          f"{P}/ams-002/ota/chunk")
    a.sub(f"{P}/ams-001/ota/chunk")
    gw.pub(f"{P}/ams-001/ota/chunk", b"a's piece")
    for kind in TO_NODE:
        gw.pub(f"{P}/ams-001/{kind}", "for a")
    gw.pub(f"{P}/ams-002/ota/chunk", b"b's piece")
    assert a.next() == (f"{P}/ams-001/ota/chunk", b"a's piece")
    assert b.next() == (f"{P}/ams-002/ota/chunk", b"b's piece")
    with pytest.raises(queue.Empty):
        b.next(timeout=0.3)
    for c in (gw, a, b):
        c.close()


def test_a_node_writes_only_its_own_event_and_ota_get(running: Running) -> None:
    gw = Client(running, broker.GATEWAY_USER)
    gw.sub(f"{P}/+/event", f"{P}/+/ota/get")
    a = Client(running, "ams-001", tls=True, cafile=running.ca)
    for topic in (f"{P}/ams-002/event", f"{P}/ams-002/ota/get", f"{P}/gateway/event", f"{P}/ams-001/event/x"):
        a.pub(topic, "forged")
    a.pub(f"{P}/ams-001/event", "a's event")
    a.pub(f"{P}/ams-001/ota/get", "a's request")
    assert [gw.next(), gw.next()] == [(f"{P}/ams-001/event", b"a's event"), (f"{P}/ams-001/ota/get", b"a's request")]
    with pytest.raises(queue.Empty):
        gw.next(timeout=0.3)
    for c in (gw, a):
        c.close()
