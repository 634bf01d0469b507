"""A real node's backlog against the real gateway: while the gateway is away the node's batches wait
in the broker's session for it, several in flight at the node; the gateway takes them all at once
when it is back and acknowledges a commit's batches of the node in one message (docs/payload.md,
"Acknowledgement"). The node takes that one acknowledgement for every batch it names: each record
acknowledged exactly once, none sent twice, and its spool empties."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from meetkit_tools.dev.waits import wait_for
from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

NODE = "bk-01"
MADE = re.compile(r" I record (\d+): \{")
ACKED = re.compile(r" I ack: (\d+) stored by the gateway")


def seqs(ack: dict) -> list[int]:
    """The seqs an acknowledgement names (a v2 node's is compact: a lone seq as itself)."""
    return [s for r in ack["seq"] for s in ([r] if isinstance(r, int) else range(r[0], r[1] + 1))]


class Spy:
    """What the node publishes on its up topic and what the gateway sends it on its ack topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.ups: list[bytes] = []
        self.acks: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(f"meetkit/{NODE}/up", 1), (f"meetkit/{NODE}/ack", 1)])
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, m: mqtt.MQTTMessage) -> None:
        with self._lock:
            if m.topic.endswith("/up"):
                self.ups.append(m.payload)
            else:
                self.acks.append(json.loads(m.payload))

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self.ups), len(self.acks)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_a_backlog_taken_in_one_commit_is_acknowledged_once_and_the_spool_empties(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    gateway = GatewayProcess(tmp_path / "gw", broker.host, broker.port).start()
    spy = Spy(broker)
    # a record every 10 s of the node's clock, each its own batch, at 8x real time: the 4 batches
    # the node keeps in flight are out within 5 s, far from the 120 s (15 s here) it waits for an ack
    spec = NodeSpec(node_id=NODE, scenario=load_scenario("busy-road"), workdir=tmp_path / "n",
                    broker_port=broker.port, interval_s=10, until_s=400, speed=8, seed=3,
                    extra_config={"batch_records": 1})
    node = SimNode(spec).start()
    try:
        wait_for(lambda: spy.counts()[1] >= 2, 120, "the gateway acknowledging the node's first batches")
        gateway.stop()
        ups_before, acks_before = spy.counts()
        # the node sends what it may keep in flight (4 batches), the broker keeps them for the gateway
        wait_for(lambda: spy.counts()[0] >= ups_before + 4, 60, "4 batches sent while the gateway is away")
        gateway.start()

        def made() -> list[int]:
            return [int(s) for s in MADE.findall(node.console_text())]

        def acked() -> int:
            return sum(int(n) for n in ACKED.findall(node.console_text()))

        # the backlog drained and a few records more: every record made so far acknowledged
        at_start = len(made())
        wait_for(lambda: len(made()) >= at_start + 3 and acked() == len(made()), 120,
                 "every record the node made acknowledged (its spool empty)")
        want = made()
        wait_for(lambda: sum(len(seqs(a)) for a in list(spy.acks)) >= len(want), 30, "the spy to hear every ack")
        console = node.console_text()
    finally:
        node.stop()
        spy.close()
        gateway.stop()
        broker.stop()
    assert "Traceback" not in console and "not understood" not in console, console[-3000:]
    # each record acknowledged exactly once: sent once, so stored and named once
    named = sorted(s for a in spy.acks for s in seqs(a) if s <= max(want))
    assert named == sorted(want), (named, want)
    assert not any(a.get("env") for a in spy.acks)
    # fewer acknowledgements than batches after the restart: the ones the gateway took together
    # were acknowledged in one message (the node's console counts them as one "ack:" line)
    ups, acks = len(spy.ups) - ups_before, len(spy.acks) - acks_before
    assert acks < ups, (ups, acks, spy.acks[acks_before:])
