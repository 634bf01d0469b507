"""`meetkit broker`: the generated configuration, password file, ACL and certificates, proven
against a real Mosquitto started on free loopback ports (a plaintext and a TLS listener)."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import queue
import signal
import ssl
import stat
import subprocess
import threading
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
    def __init__(self, out: Path, plain: int, tls: int, proc: subprocess.Popen) -> None:
        self.out, self.plain, self.tls, self.proc = out, plain, tls, proc
        self.ca = out / "ca" / "ca.crt"

    @property
    def secrets(self) -> dict:
        return json.loads((self.out / broker.SECRETS).read_text())

    def password(self, user: str) -> str:
        s = self.secrets
        return s["gateway"]["password"] if user == broker.GATEWAY_USER else s["nodes"][user]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("broker")
    plain, tls = free_port(), free_port()
    res = broker.init(tmp / "out", fleet(tmp, plain, tls), NODES)
    conf = res.out / "mosquitto" / "mosquitto.conf"
    with (tmp / "mosquitto.out").open("ab") as log:
        proc = subprocess.Popen([mosquitto_bin(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_listening("127.0.0.1", plain, proc, "mosquitto")
        wait_listening("127.0.0.1", tls, proc, "mosquitto (TLS)")
        yield Running(res.out, plain, tls, proc)
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

    def pub(self, topic: str, payload: str, retain: bool = False) -> None:
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
    pwds = [s["gateway"]["password"], *s["nodes"].values()]
    assert len(set(pwds)) == 3 and all(len(p) >= 32 for p in pwds)
    passwd = (out / "mosquitto/passwd").read_text()
    assert [ln.split(":")[0] for ln in passwd.splitlines()] == ["gateway", *NODES]
    assert all(p not in passwd for p in pwds) and passwd.count("$7$") == 3  # hashed by mosquitto_passwd
    conf = (out / "mosquitto/mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 1883 127.0.0.1" in conf and "listener 8883 127.0.0.1" in conf
    assert f"password_file {out}/mosquitto/passwd" in conf and f"acl_file {out}/mosquitto/acl" in conf
    acl = (out / "mosquitto/acl").read_text()
    assert "pattern write meetkit/%u/up\npattern write meetkit/%u/status\npattern read meetkit/%u/ack\n" in acl
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
    broker.init(out, fleet(tmp_path), [], renew_server_cert=True)
    assert (out / "mosquitto/server.crt").read_bytes() != before["mosquitto/server.crt"]
    assert (out / "ca/ca.key").read_bytes() == before["ca/ca.key"]


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


@pytest.mark.parametrize("bad", ["gateway", "AMS-001", "a/b", "+", "#", "", "x" * 33])
def test_bad_node_ids_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(broker.BrokerError):
        broker.init(tmp_path / "out", fleet(tmp_path), [bad])


def test_cli_prints_paths_never_passwords(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["broker", "init", "--out", str(out), "--node", "ams-001", "--hostname", "gw",
                 "--ip", "192.168.1.10"]) == 0  # --install-dir /etc/mosquitto/meetkit by default
    assert main(["broker", "add-node", "ams-002", "--out", str(out)]) == 0
    assert main(["broker", "add-node", "ams-002", "--out", str(out)]) == 1  # known: not replaced silently
    text = capsys.readouterr()
    s = json.loads((out / "secrets.json").read_text())
    for pw in [s["gateway"]["password"], *s["nodes"].values()]:
        assert pw not in text.out and pw not in text.err
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
    mon = Client(running, broker.GATEWAY_USER, client_id="monitor")  # a second gateway session
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
    for _ in range(50):
        c = Client(running, "ams-009", tls=True, cafile=running.ca)
        if c.ok:
            break
        threading.Event().wait(0.1)
    assert c.ok
    c.pub(f"{P}/ams-009/up", "new")
    c.pub(f"{P}/ams-001/up", "forged")
    c.pub(f"{P}/ams-009/up", "control")
    assert [gateway.next(), gateway.next()] == [(f"{P}/ams-009/up", b"new"), (f"{P}/ams-009/up", b"control")]
    old = Client(running, "ams-001")
    assert old.ok
    c.close()
    old.close()
