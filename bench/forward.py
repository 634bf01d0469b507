"""Forwarding to an upstream MQTT broker: how close the gateway gets to what the broker can take.

forward_mqtt_vs_paho_ratio: records per second the gateway's MQTT forwarder delivers from its
store to a real Mosquitto (read the batch, encode one JSON message per record, publish QoS 1, wait
for every PUBACK, move the cursor in a committed transaction), divided by the records per second a
bare paho client reaches publishing the SAME pre-encoded messages QoS 1 to the same broker and
waiting for every PUBACK. Both over loopback, no TLS, median of several runs each. Higher is
better; 1.0 would mean the store, the encoding and the bookkeeping cost nothing.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.results import median, record
from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder
from meetkit_gateway.forward.mqtt_upstream import MAX_INFLIGHT, MqttSender, encode_records
from meetkit_gateway.store import Store
from meetkit_tools.services import Mosquitto

RECORDS = 3000
RUNS = 3
T0 = 1795510800
UNITS = {k: q.unit for k, q in payload.QUANTITIES.items()}


def fill(db: Path, records: int) -> None:
    """`records` records of 12 readings each (the example node's), 10 per batch (a node keeps a batch under 4 KB)."""
    with Store(db) as s:
        for first in range(0, records, 10):
            recs = [{"seq": q, "ts": T0 + 60 * q, "up": 60 * q, "dur": 60,
                     "pm1": [3.1, 2, 5, 58], "pm25": [5.2, 4, 7, 58], "pm10": [8.9, 6, 12, 58],
                     "temp": [12.34, 12.3, 12.4, 12], "rh": [81.2, 80.9, 81.5, 12],
                     "press": [1013.21, 1013.1, 1013.3, 12], "LAeq": [55.2, 48.3, 67.1, 60],
                     "LA10": 58.4, "LA50": 53.9, "LA90": 49.6, "LZeq": 63.8, "cov": 1, "f": {"pm25": ["rh_high"]}}
                    for q in range(first, min(first + 10, records))]
            doc = {"v": 1, "node": "ams-001", "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc",
                   "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"}, "units": UNITS, "recs": recs}
            s.add_batch(payload.parse_batch(json.dumps(doc).encode(), "ams-001"))


def ours(db: Path, broker: Mosquitto) -> float:
    """Records per second, store to broker, the cursor committed."""
    cfg = ForwardConfig(name="bench", type="mqtt", url=f"mqtt://127.0.0.1:{broker.port}", client_id="bench-fw")
    f = Forwarder("bench", db, MqttSender(cfg))
    f.reset(0)
    t = time.perf_counter()
    while f.step() == 0.0:
        pass
    dt = time.perf_counter() - t
    assert f.cursor() == RECORDS and f.failures == 0, "the forwarder did not deliver everything"
    f.close()
    return RECORDS / dt


def bare(messages: list, broker: Mosquitto) -> float:
    """Records per second for a bare paho client with the same messages, every PUBACK awaited."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(MAX_INFLIGHT)
    done = threading.Semaphore(0)
    c.on_publish = lambda *a: done.release()
    c.connect(broker.host, broker.port)
    c.loop_start()
    t = time.perf_counter()
    for m in messages:
        c.publish(m.topic, m.payload, qos=1)
    for _ in messages:
        assert done.acquire(timeout=30), "a PUBACK did not come"
    dt = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return len(messages) / dt


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "g.db"
        fill(db, RECORDS)
        broker = Mosquitto(Path(tmp)).start()
        try:
            f = Forwarder("enc", db, MqttSender(ForwardConfig(name="enc", type="mqtt", url="mqtt://x")), batch=10**6)
            messages = encode_records(f.pending().rows, "meetkit/{node}/records")
            f.close()
            assert len(messages) == RECORDS
            a = [ours(db, broker) for _ in range(RUNS)]
            b = [bare(messages, broker) for _ in range(RUNS)]
        finally:
            broker.stop()
    record("forward_mqtt_vs_paho_ratio", round(median(a) / median(b), 3), "ratio", "higher", {
        "ours_records_per_s": [round(x) for x in a], "paho_records_per_s": [round(x) for x in b],
        "records": RECORDS, "readings_per_record": 12, "batch_readings": 5000, "qos": 1, "tls": False,
        "payload_bytes_per_record": len(messages[0].payload), "runs": RUNS})


if __name__ == "__main__":
    run()
