"""Forwarding to an upstream MQTT broker: a SECOND real Mosquitto as the city's broker, TLS only
(a lab CA made with openssl), a password file and an ACL; what arrives is read back by a paho
subscriber with an account of its own."""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder, Forwarders
from meetkit_gateway.forward.mqtt_upstream import MqttSender, encode_records
from meetkit_gateway.http import metrics_text
from meetkit_gateway.store import Store
from meetkit_tools import broker as labca
from meetkit_tools.services import SecureMosquitto
from tests.metrics import parse_exposition, sample

from .conftest import batch, encode, example, wait_for

GW, GW_PW = "meetkit-gw", "gw-s3cret-pw"
READER, READER_PW = "city-reader", "reader-pw-2"
ACL = (f"user {GW}\ntopic write city/meetkit/+/records\ntopic write city/retained/#\n\n"
       f"user {READER}\ntopic read city/#\n")
TOPIC = "city/meetkit/{node}/records"
T0 = 1795510800


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMosquitto]:
    b = SecureMosquitto(tmp_path_factory.mktemp("upstream"), {GW: GW_PW, READER: READER_PW}, ACL).start()
    try:
        yield b
    finally:
        b.stop()


class Reader:
    """The city's consumer: a persistent session (QoS 1), so what is published while it reconnects
    is kept for it; every message with its topic, payload and flags, in arrival order."""

    def __init__(self, b: SecureMosquitto, topic: str = "city/meetkit/#") -> None:
        self.b = b
        self.got: list[tuple[str, bytes, bool, int]] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{time.monotonic_ns()}",
                             protocol=mqtt.MQTTv311, clean_session=False)
        self.c.username_pw_set(READER, READER_PW)
        self.c.tls_set_context(ssl.create_default_context(cafile=str(b.ca)))
        self.c.reconnect_delay_set(1, 1)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect(b.host, b.port)
        self.c.loop_start()
        assert subscribed.wait(10), "the reader did not subscribe"

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, m.payload, bool(m.retain), m.qos))

    def messages(self) -> list[tuple[str, bytes, bool, int]]:
        with self.lock:
            return list(self.got)

    def docs(self) -> list[dict[str, Any]]:
        return [json.loads(p) for _, p, _, _ in self.messages()]

    def wait(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.messages()) >= n, timeout, f"{n} messages upstream")
        return self.docs()

    def settled(self) -> list[tuple[str, bytes, bool, int]]:
        """Every message published upstream before this call, once it has all arrived: a marker
        published now (acknowledged by the broker) comes after them, as Mosquitto delivers to a
        subscriber in the order it took the messages. The marker is not kept."""
        marker = f"marker-{time.monotonic_ns()}".encode()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"marker-{time.monotonic_ns()}", protocol=mqtt.MQTTv311)
        c.username_pw_set(GW, GW_PW)
        c.tls_set_context(ssl.create_default_context(cafile=str(self.b.ca)))
        c.connect(self.b.host, self.b.port)
        c.loop_start()
        try:
            info = c.publish("city/meetkit/marker/records", marker, qos=1)
            info.wait_for_publish(20)
            assert info.is_published(), "the marker not acknowledged upstream"
        finally:
            c.disconnect()
            c.loop_stop()
        wait_for(lambda: any(p == marker for _, p, _, _ in self.messages()), 20, "the marker upstream")
        with self.lock:
            self.got = [m for m in self.got if m[1] != marker]
            return list(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def reader(upstream: SecureMosquitto) -> Iterator[Reader]:
    r = Reader(upstream)
    try:
        yield r
    finally:
        r.close()


def target(tmp_path: Path, b: SecureMosquitto, name: str = "city", password: str = GW_PW, **kw: Any) -> ForwardConfig:
    pw = tmp_path / f"{name}.password"
    if not pw.exists():
        pw.write_text(password + "\n")
    kw.setdefault("url", f"mqtts://127.0.0.1:{b.port}")
    kw.setdefault("ca_file", b.ca)
    kw.setdefault("timeout", 5.0)
    return ForwardConfig(name=name, type="mqtt", username=GW, password_file=pw, topic=kw.pop("topic", TOPIC), **kw)


def fill(db: Path, node: str = "ams-001", seqs: range = range(5), boot: int = 3) -> None:
    with Store(db) as s:
        s.add_batch(payload.parse_batch(encode(batch(node=node, seqs=seqs, boot=boot, ts0=T0)), node))


def drain(f: Forwarder, limit: int = 100) -> None:
    for _ in range(limit):
        if f.step() > 0:
            return
    raise AssertionError("the forwarder did not idle")


def keys(docs: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(d["node"], d["boot"], d["seq"]) for d in docs]


def test_every_record_arrives_once_with_its_values_units_and_flags(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    with Store(db) as s:
        s.add_batch(payload.parse_batch(encode(example()), "ams-001"))  # seq 16 (no clock: start derived), 17
    fill(db, node="ams-002", seqs=range(5))
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream)), batch=4)  # several batches
    drain(f)
    docs = reader.wait(7)
    assert len(reader.settled()) == 7  # once each
    assert keys(docs) == [("ams-001", 3, 16), ("ams-001", 3, 17)] + [("ams-002", 3, s) for s in range(5)]
    assert {(t, retain, qos) for t, _, retain, qos in reader.messages()} == {
        ("city/meetkit/ams-001/records", False, 1), ("city/meetkit/ams-002/records", False, 1)}
    assert docs[1] == {
        "v": 1, "node": "ams-001", "boot": 3, "seq": 17, "start": 1795510800, "time": "2026-11-24T09:00:00Z",
        "dur": 60, "fw": "0.2.0", "board": "esp32-devkitc",
        "readings": {
            "LA10": {"avg": 58.4, "min": None, "max": None, "n": None, "unit": "dB", "flags": []},
            "LA50": {"avg": 53.9, "min": None, "max": None, "n": None, "unit": "dB", "flags": []},
            "LA90": {"avg": 49.6, "min": None, "max": None, "n": None, "unit": "dB", "flags": []},
            "LAeq": {"avg": 55.2, "min": 48.3, "max": 67.1, "n": 60, "unit": "dB", "flags": []},
            "LZeq": {"avg": 63.8, "min": None, "max": None, "n": None, "unit": "dB", "flags": []},
            "cov": {"avg": 1.0, "min": None, "max": None, "n": None, "unit": "1", "flags": []},
            "pm1": {"avg": 3.1, "min": 2.0, "max": 5.0, "n": 58, "unit": "ug/m3", "flags": []},
            "pm10": {"avg": 8.9, "min": 6.0, "max": 12.0, "n": 58, "unit": "ug/m3", "flags": []},
            "pm25": {"avg": 5.2, "min": 4.0, "max": 7.0, "n": 58, "unit": "ug/m3", "flags": ["rh_high"]},
            "press": {"avg": 1013.21, "min": 1013.1, "max": 1013.3, "n": 12, "unit": "hPa", "flags": []},
            "rh": {"avg": 81.2, "min": 80.9, "max": 81.5, "n": 12, "unit": "%", "flags": []},
            "temp": {"avg": 12.34, "min": 12.3, "max": 12.4, "n": 12, "unit": "degC", "flags": []},
        }}
    assert docs[0]["start"] == T0 - 60 and docs[0]["readings"]["pm25"] == {
        "avg": None, "min": None, "max": None, "n": None, "unit": "ug/m3", "flags": ["missing"]}
    assert docs[2]["readings"]["pm25"]["avg"] == 5.0 and docs[6]["readings"]["pm25"]["max"] == 11.0
    st = f.status()
    assert (st["kind"], st["up"], st["queue_rows"], st["sent"], st["retries"], st["dead_letters"]) == (
        "mqtt", True, 0, 15 + 10, 0, 0)
    with Store(db, readonly=True) as s:
        fams = parse_exposition(metrics_text(s, lambda: [f.status()]))
    assert sample(fams, "meetkit_forward_sent_rows_total", target="city", kind="mqtt") == 25
    assert sample(fams, "meetkit_forward_up", target="city", kind="mqtt") == 1
    f.close()


def test_anonymous_and_other_accounts_cannot_publish_upstream(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    fill(db, seqs=range(1))
    no_user = ForwardConfig(name="anon", type="mqtt", url=f"mqtts://127.0.0.1:{upstream.port}", ca_file=upstream.ca)
    f = Forwarder("anon", db, MqttSender(no_user))
    assert f.step() > 0
    assert "the broker refused the connection: Not authorized" in f.status()["last_error"]
    f.close()
    assert reader.messages() == []


def test_a_wrong_password_is_retried_the_queue_grows_and_a_fixed_file_delivers(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    fill(db, seqs=range(3))
    cfg = target(tmp_path, upstream, password="not-the-password")
    f = Forwarder("city", db, MqttSender(cfg), rng=lambda: 1.0)
    assert [f.step() for _ in range(3)] == [0.5, 1.0, 2.0]  # backoff, never dead-lettered
    st = f.status()
    assert st["up"] is False and st["retries"] == 3 and st["dead_letters"] == 0 and st["queue_rows"] == 6
    assert st["last_error"] == (f"mqtts://127.0.0.1:{upstream.port}: the broker refused the connection: "
                                f"Not authorized (user {GW})")
    fill(db, seqs=range(3, 5))
    assert f.status()["queue_rows"] == 10  # nothing is lost meanwhile
    cfg.password_file.write_text(GW_PW + "\n")  # the operator fixes the file; no restart
    drain(f)
    assert keys(reader.wait(5)) == [("ams-001", 3, s) for s in range(5)]
    st = f.status()
    assert (st["up"], st["queue_rows"], st["sent"], st["last_error"], st["dead_letters"]) == (True, 0, 10, None, 0)
    f.close()


def test_an_acl_refusal_puback_0x87_is_retried_not_dead_lettered(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    fill(db, seqs=range(2))
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream, topic="other/{node}")))  # not ours to write
    assert f.step() > 0
    st = f.status()
    assert st["last_error"] == (f"mqtts://127.0.0.1:{upstream.port}: PUBACK 0x87 Not authorized: not authorised by "
                                "the broker's ACL for topic other/ams-001 (2 of 2 messages refused)")
    assert (st["up"], st["retries"], st["dead_letters"], st["sent"], f.cursor()) == (False, 1, 0, 0, 0)
    f.close()
    # The operator corrects the topic and restarts: the same cursor, everything is delivered.
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream)))
    drain(f)
    assert keys(reader.wait(2)) == [("ams-001", 3, 0), ("ams-001", 3, 1)]
    assert [t for t, *_ in reader.messages()] == ["city/meetkit/ams-001/records"] * 2
    f.close()


def test_a_record_bigger_than_the_brokers_maximum_packet_size_is_dead_lettered(tmp_path):
    """Mosquitto announces its max_packet_size in the CONNACK and drops a client that sends more:
    such a record is never sent and is dead-lettered; the others go. The limit is set to the exact
    size of the first record's PUBLISH packet (436 bytes), which must pass."""
    b = SecureMosquitto(tmp_path / "small", {GW: GW_PW, READER: READER_PW}, ACL, more_conf="max_packet_size 436\n")
    b.start()
    r = Reader(b)
    try:
        db = tmp_path / "g.db"
        with Store(db) as s:
            s.add_batch(payload.parse_batch(encode(example()), "ams-001"))  # ids 1 (436 bytes), 2 (1094 bytes)
        fill(db, node="ams-002", seqs=range(1))  # id 3 (350 bytes)
        f = Forwarder("city", db, MqttSender(target(tmp_path, b)))
        drain(f)
        with Store(db, readonly=True) as s:
            dead = s.db.execute("SELECT first_id, last_id, readings, status, reason FROM forward_dead_letters").fetchall()
        assert dead == [(2, 2, 12, None, f"mqtts://127.0.0.1:{b.port}: a message of 1094 bytes for "
                         "city/meetkit/ams-001/records, more than the Maximum Packet Size of 436 bytes the broker takes")]
        assert keys(r.wait(2)) == [("ams-001", 3, 16), ("ams-002", 3, 0)]
        st = f.status()
        assert (st["dead_letters"], st["sent"], st["queue_rows"], st["retries"], st["up"]) == (12, 5, 0, 0, True)
        f.close()
    finally:
        r.close()
        b.stop()


def test_a_broker_that_is_down_then_up_gets_everything_and_the_cursor_is_consistent(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    fill(db, seqs=range(4))
    Store(db).close()
    fw = Forwarders.start(db, [target(tmp_path, upstream, batch=4)], poll_s=0.05)
    try:
        reader.wait(4)
        wait_for(lambda: fw.status()[0]["queue_rows"] == 0, 10, "the first batch's cursor")  # none in flight
        upstream.stop()
        fill(db, seqs=range(4, 10))  # while the broker is away
        fw.wake()
        wait_for(lambda: fw.status()[0]["retries"] >= 2, 10, "the stopped broker to be retried")
        st = fw.status()[0]
        assert st["up"] is False and st["queue_rows"] == 12 and "ConnectionRefusedError" in st["last_error"]
        upstream.start()
        wait_for(lambda: fw.status()[0]["queue_rows"] == 0, 60, "the queue to drain once the broker is back")
        docs = reader.wait(10, timeout=30)
        (f,) = fw
        assert f.cursor() == 10
        st = fw.status()[0]
        assert (st["up"], st["sent"], st["dead_letters"], st["last_error"]) == (True, 20, 0, None)
    finally:
        fw.stop()
    reader.settled()
    assert sorted(set(keys(reader.docs()))) == [("ams-001", 3, s) for s in range(10)]  # nothing lost
    assert len(docs) == len(set(keys(docs)))  # a batch is never half-sent: each message once


def test_no_puback_in_time_is_retried_and_the_batch_is_sent_again(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    fill(db, seqs=range(3))
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream, timeout=1.0)))
    assert f.step() == 0.0 and f.cursor() == 3  # connected, delivered: the broker answers
    fill(db, seqs=range(3, 5))
    assert upstream.proc is not None
    os.kill(upstream.proc.pid, signal.SIGSTOP)  # the broker hangs: no PUBACK comes
    try:
        assert f.step() > 0  # a retry, after the timeout (the reason says so)
        st = f.status()
        assert "no PUBACK within 1 s (0 of 2 messages acknowledged)" in st["last_error"] and f.cursor() == 3
    finally:
        os.kill(upstream.proc.pid, signal.SIGCONT)
    # the broker runs again: a step delivers (one more may time out while it catches up)
    wait_for(lambda: f.step() == 0.0, 30, "a step delivering once the broker runs again")
    assert f.cursor() == 5
    docs = reader.wait(5)
    assert sorted(set(keys(docs))) == [("ams-001", 3, s) for s in range(5)]
    f.close()


def test_replay_after_a_restart_mid_way_is_harmless(tmp_path, upstream, reader):
    """A crash between the broker's PUBACKs and the cursor's commit: the batch comes again, the
    same bytes under the same (node, boot, seq), so a consumer that keys on it keeps one of each."""
    db = tmp_path / "g.db"
    fill(db, seqs=range(6))
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream)), batch=6)
    p = f.pending()
    assert f.sender.send(p.rows).ok  # the broker took records 1..3; then the gateway died
    f.close()
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream)), batch=6)  # the restarted gateway
    assert f.cursor() == 0
    drain(f)
    got = reader.wait(9)
    msgs = reader.settled()
    assert len(msgs) == 9 and keys(got) == [("ams-001", 3, s) for s in (0, 1, 2, 0, 1, 2, 3, 4, 5)]
    assert msgs[:3] == msgs[3:6]  # byte for byte
    unique = {(d["node"], d["boot"], d["seq"]): d for d in got}
    assert sorted(unique) == [("ams-001", 3, s) for s in range(6)]
    assert f.status()["sent"] == 12 and f.cursor() == 6
    f.close()


def test_tls_failures_say_what_is_wrong(tmp_path, upstream, reader):
    db = tmp_path / "g.db"
    fill(db, seqs=range(1))
    other = tmp_path / "other-ca"
    labca.make_ca(other)
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream, ca_file=other / "ca.crt")))
    assert f.step() > 0
    err = f.status()["last_error"]
    assert err == (f"mqtts://127.0.0.1:{upstream.port}: TLS: the broker's certificate is not trusted "
                   f"(self-signed certificate in certificate chain); is ca_file {other / 'ca.crt'} the CA that signed it?")
    f.close()
    # The right CA, but a host name the certificate does not name: refused too.
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream, url=f"mqtts://localhost:{upstream.port}")))
    assert f.step() > 0
    assert f.status()["last_error"] == (
        f"mqtts://localhost:{upstream.port}: TLS: the broker's certificate does not name localhost (Hostname mismatch, "
        "certificate is not valid for 'localhost'.); put a name the certificate was made for in url")
    f.close()
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream, ca_file=tmp_path / "missing.crt")))
    assert f.step() > 0
    assert f.status()["last_error"].startswith("TLS setup: cannot use ca_file/cert_file/key_file: [Errno 2]")
    f.close()
    assert reader.messages() == []


def test_mqtt_3_1_1_qos_0_and_retained_also_deliver(tmp_path, upstream):
    db = tmp_path / "g.db"
    fill(db, seqs=range(3))
    live = Reader(upstream, "city/retained/#")
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream, protocol="v3.1.1", qos=0, retain=True,
                                                client_id="gw-311", topic="city/retained/{node}")))
    try:
        drain(f)
        live.wait(3)
        assert {(t, qos) for t, _, _, qos in live.messages()} == {("city/retained/ams-001", 0)}
        assert f.status()["sent"] == 6
        late = Reader(upstream, "city/retained/#")  # retained: a late subscriber gets the node's last record
        try:
            wait_for(lambda: late.messages(), 5, "the retained message")
            assert late.messages()[0][2] is True and late.docs()[0]["seq"] == 2
        finally:
            late.close()
    finally:
        live.close()
        f.close()
        clear = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="clear-retained")  # leave nothing retained
        clear.username_pw_set(GW, GW_PW)
        clear.tls_set_context(ssl.create_default_context(cafile=str(upstream.ca)))
        clear.connect(upstream.host, upstream.port)
        clear.loop_start()
        clear.publish("city/retained/ams-001", b"", qos=1, retain=True).wait_for_publish(5)
        clear.disconnect()
        clear.loop_stop()


def test_a_big_batch_is_awaited_in_chunks_of_unique_message_ids(tmp_path, upstream, reader, monkeypatch):
    from meetkit_gateway.forward import mqtt_upstream

    monkeypatch.setattr(mqtt_upstream, "CHUNK", 3)  # as 10 000 are, with 65 535 message ids
    db = tmp_path / "g.db"
    fill(db, seqs=range(8))
    f = Forwarder("city", db, MqttSender(target(tmp_path, upstream)))
    assert f.step() == 0.0 and f.cursor() == 8  # one batch, three chunks
    assert keys(reader.wait(8)) == [("ams-001", 3, s) for s in range(8)]
    f.close()


def test_encode_records_one_message_per_record_in_order():
    from meetkit_gateway.forward import Row

    rows = [Row(7, "n-1", T0, 60, "b", "0.2.0", "pm25", 5.0, 4.0, 7.0, 58, "ug/m3", "rh_high,partial", boot=2, seq=9),
            Row(7, "n-1", T0, 60, "b", "0.2.0", "temp", 12.5, 12.0, 13.0, 12, "degC", "", boot=2, seq=9),
            Row(8, "n-2", T0, 60, "b", "0.2.0", "LA90", 49.6, None, None, None, "dB", "", boot=1, seq=0)]
    msgs = encode_records(rows, "x/{node}/r")
    assert [(m.record_id, m.readings, m.topic) for m in msgs] == [(7, 2, "x/n-1/r"), (8, 1, "x/n-2/r")]
    assert msgs[0].payload == (
        b'{"v":1,"node":"n-1","boot":2,"seq":9,"start":1795510800,"time":"2026-11-24T09:00:00Z","dur":60,'
        b'"fw":"0.2.0","board":"b","readings":{"pm25":{"avg":5.0,"min":4.0,"max":7.0,"n":58,"unit":"ug/m3",'
        b'"flags":["rh_high","partial"]},"temp":{"avg":12.5,"min":12.0,"max":13.0,"n":12,"unit":"degC","flags":[]}}}')
    assert encode_records([], "x") == []
