"""Wi-Fi as the firmware sees it, and a real MQTT connection (umqtt.simple -> simsocket -> the real
unix socket -> a real Mosquitto) that a `wifi_down` fault really cuts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.sim.harness import run_sim, scenario

FIRMWARE = """
import time, json, network
from umqtt.simple import MQTTClient
PORT = %(port)d
log = []
w = network.WLAN(network.STA_IF)
try:
    w.connect("lab", "pw")
except OSError as e:
    log.append(["inactive", str(e)])
w.active(True)
t0 = time.ticks_ms()
w.connect("meetkit-lab", "pw")
log.append(["status", w.status(), w.isconnected()])
while not w.isconnected():
    time.sleep_ms(100)
log.append(["up_ms", time.ticks_diff(time.ticks_ms(), t0), w.status(), w.ifconfig()[0], w.status("rssi")])

def attempt(tag):
    try:
        c = MQTTClient("simtest-" + tag, "127.0.0.1", port=PORT)
        c.connect()
        c.publish(b"simtest/x", tag.encode(), qos=1)
        c.disconnect()
        log.append([tag, "ok"])
    except (OSError, IndexError) as e:
        log.append([tag, "error", e.args[0] if e.args else None])

attempt("before")
c = MQTTClient("longlived", "127.0.0.1", port=PORT, keepalive=600)
c.connect()
c.publish(b"simtest/x", b"long1", qos=1)
time.sleep(65)                       # the fault runs from 60 to 120 s
log.append(["during", w.isconnected(), w.status(), w.ifconfig()[0]])
attempt("during")
try:
    c.publish(b"simtest/x", b"long2", qos=1)
    log.append(["long2", "ok"])
except OSError as e:
    log.append(["long2", "error", e.args[0]])
while not w.isconnected():           # the ESP32 reconnects by itself
    time.sleep_ms(100)
log.append(["back_s", time.time(), w.status()])
attempt("after")
try:
    c.publish(b"simtest/x", b"long3", qos=1)   # made over the old link: dead
    log.append(["long3", "ok"])
except OSError as e:
    log.append(["long3", "error", e.args[0]])
print("@" + json.dumps(log))
"""


def test_a_wifi_outage_cuts_mqtt_and_it_works_again_after(tmp_path: Path, broker) -> None:
    got: list[str] = []
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("simtest/#", qos=1)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = lambda c, u, m: got.append(m.payload.decode())
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    try:
        assert ready.wait(10)
        sc = scenario()
        sc["faults"] = [{"kind": "wifi_down", "from": 60, "to": 120}]
        r = run_sim(tmp_path, FIRMWARE % {"port": broker.port}, scenario=sc, until_ms=None)
        assert r.code == 2, r.out + r.err
        # a marker after the node's messages: once it is back, whatever the node got through is too
        sub.publish("simtest/x", b"marker", qos=1).wait_for_publish(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "marker" not in got:
            time.sleep(0.05)  # waits on: the condition polled above
        assert "marker" in got, "the marker did not come back"
    finally:
        sub.loop_stop()
        sub.disconnect()
    log = {e[0]: e[1:] for e in r.json_lines()[0]}
    assert log["inactive"] == ["Wifi Not Started"]
    assert log["status"] == [1001, False]                          # STAT_CONNECTING
    up_ms, stat, ip, rssi = log["up_ms"]
    assert 1000 <= up_ms <= 3100 and stat == 1010 and ip.startswith("192.168.") and -80 < rssi < -40
    assert log["before"] == ["ok"]
    assert log["during"] == [False, 201, "0.0.0.0"] or log["during"][0] == "error"
    assert log["long2"] == ["error", 104]                          # ECONNRESET
    back, stat = log["back_s"]
    assert 121 <= back <= 123.5 and stat == 1010
    assert log["after"] == ["ok"]
    assert log["long3"] == ["error", 104]
    assert sorted(got) == ["after", "before", "long1", "marker"]
    assert r.state["stats"]["socket_cut"] >= 2


def test_connecting_during_an_outage_fails_like_the_board(tmp_path: Path, broker) -> None:
    sc = scenario()
    sc["faults"] = [{"kind": "wifi_down", "from": 0, "to": 30}]
    r = run_sim(tmp_path, """
        import time, socket, network
        w = network.WLAN(network.STA_IF)
        w.active(True)
        w.connect("lab", "pw")
        time.sleep(5)
        out = [w.isconnected(), w.status(), w.scan()]
        try:
            socket.getaddrinfo("127.0.0.1", %d)
        except OSError as e:
            out.append(e.args[0])
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", %d))
        except OSError as e:
            out.append(e.args[0])
        try:
            w.connect("lab", "pw")
        except OSError as e:
            out.append(str(e))
        print("@", out)
        """ % (broker.port, broker.port), scenario=sc, until_ms=None)
    assert r.lines[0] == "@ [False, 201, [], -202, 113, 'Wifi Internal Error']", r.out + r.err
