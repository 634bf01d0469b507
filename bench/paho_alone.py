"""The ceiling of the gateway's MQTT side: paho alone on the ingest benchmark's stream (issue 17:
"if the paho network thread becomes the limit, measure it and say so").

gateway_paho_alone_vs_mosquitto_sub_ratio: the gateway's own `Source` (gateway/mqtt.py: paho-mqtt
in the gateway's persistent session, QoS 1, manual acknowledgement) takes bench/gateway.py's
ingest stream and does nothing with it but acknowledge each message to the broker at once (the
PUBACK the gateway sends after its commit), storing nothing and sending no acknowledgement to the
nodes: what the gateway could take were its writer free. Its rate (first publish until every
message was acknowledged to the broker) over mosquitto_sub's on the same stream from the same
publishers, the two run alternately, each on a fresh broker; median of RUNS. The gateway's own
ratio (gateway_ingest_vs_mosquitto_sub_ratio) cannot go above this one on the same machine.

    .venv/bin/python -m bench.paho_alone
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from bench.gateway import IngestRun, RUNS, TIMEOUT_S, ingest_stream, mosquitto_sub_run, new_broker, publish
from bench.results import median, record
from meetkit_gateway.config import MqttConfig
from meetkit_gateway.ingest import Inbound
from meetkit_gateway.mqtt import Source
from meetkit_gateway.topics import Topics
from meetkit_tools.dev import batches


def paho_alone_run(workdir: Path, streams: list[batches.NodeStream], files: dict[str, Path]) -> IngestRun:
    messages = sum(len(s.messages) for s in streams)
    broker = new_broker(workdir)
    source: Source | None = None
    try:
        all_acked = threading.Event()
        taken: list[int] = [0]

        def sink(msg: Inbound) -> None:  # in the network thread, as the writer's acks are not: a ceiling
            assert source is not None
            source.ack(msg)
            taken[0] += 1
            if taken[0] == messages:
                all_acked.set()

        source = Source(MqttConfig(host=broker.host, port=broker.port, client_id="bench-paho-alone"),
                        Topics(), sink)
        source.start()
        if not source.wait_settled(30):
            raise SystemExit("benchmark: paho did not subscribe")
        t0 = time.time()
        publish_s = publish(broker, streams, files)
        if not all_acked.wait(TIMEOUT_S):
            raise SystemExit(f"benchmark: paho took {taken[0]} of {messages} messages")
        seconds = time.time() - t0
        if source.acked != messages:
            raise SystemExit(f"benchmark: paho acknowledged {source.acked} of {messages} messages")
    finally:
        if source is not None:
            source.stop()
        broker.stop()
    return IngestRun(seconds, publish_s)


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-paho-") as tmp:
        streams, files = ingest_stream(Path(tmp))
        readings = sum(s.readings for s in streams)
        messages = sum(len(s.messages) for s in streams)
        paho: list[float] = []
        sub: list[float] = []
        for i in range(RUNS):  # alternately, which goes first changing too
            pair = [("sub", mosquitto_sub_run), ("paho", paho_alone_run)]
            for kind, fn in pair if i % 2 == 0 else reversed(pair):
                r = fn(Path(tmp) / f"{kind}{i}", streams, files)
                (paho if kind == "paho" else sub).append(readings / r.seconds)
    record("gateway_paho_alone_vs_mosquitto_sub_ratio", round(median(paho) / median(sub), 3), "ratio", "higher",
           {"paho_readings_per_s": round(median(paho)), "mosquitto_sub_readings_per_s": round(median(sub)),
            "paho_readings_per_s_runs": [round(r) for r in paho],
            "mosquitto_sub_readings_per_s_runs": [round(r) for r in sub],
            "pair_ratios": [round(p / s, 3) for p, s in zip(paho, sub)],
            "readings": readings, "messages": messages, "runs": RUNS,
            "what": "the gateway's Source (paho-mqtt, QoS 1, manual ack) acknowledging each message to the "
                    "broker at once, nothing stored, no acknowledgement to the nodes: the ceiling of "
                    "gateway_ingest_vs_mosquitto_sub_ratio on this machine",
            "clock": "first publish until every message was acknowledged to the broker"})


if __name__ == "__main__":
    run()
