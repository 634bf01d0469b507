"""What the node spends on the wire and on flash per measured value.

wire_bytes_per_value: payload v2 (docs/payload.md), MQTT bytes on the wire (TCP payload both ways between node and broker:
CONNECT, SUBSCRIBE, status, batches, PUBACKs, the gateway's acknowledgements, pings) per measured
value the gateway stored. A measured value is one number a data user gets: the avg, min or max of
one quantity over one interval (n, flags and timestamps are not counted as values). Lower is
better; airRohr spends about 40 bytes per value (one JSON object {"value_type","value"} per value,
over HTTP). The bytes are counted by a TCP relay between node and broker, not by the simulator.
wire_bytes_per_value_batch5, _batch15: the same with the node's `batch_records` 5 and 15 (a metered
link: a record waits until that many are there).

spool_days_at_1min: days of 1-minute records the default spool budget holds, from the bytes the
records of that run take on flash: the spool's segment files (sp/s<n>, littlefs file sizes, which
the budget counts) over the records in them, decoded on the host by the firmware's own recline
(tools/dev/spoolfile.py), key frames and length bytes included. The boot's envelope file (sp/b<n>)
and the state file are a few hundred bytes per boot and not counted. Higher is better; issue 17
asks for at least 30 (all sensors: PMS5003, BME280, ICS43434).
"""

from __future__ import annotations

import re
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench.results import record
from meetkit_gateway.store import Store
from meetkit_tools.dev import fleetsim, spoolfile
from meetkit_tools.services import GatewayProcess, Mosquitto, free_port
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

HOURS = 2.0
AIRROHR_BYTES_PER_VALUE = 40.0
SPOOL_BUDGET = 1700 * 1024   # firmware/lib/config.py's default spool_kb
#: records per batch (the node's batch_records): 1 is the default, a record out when it closes
BATCHES = (1, 5, 15)


class Relay:
    """A TCP relay that counts the bytes it passes each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self._srv.accept()
            except OSError:
                return
            b = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(a, b, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, a, "down"), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    setattr(self, way, getattr(self, way) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._srv.close()


def _measure(w: Path, batch: int) -> tuple[Relay, int, int, int, int]:
    """(relay, values stored, records stored, spool bytes, records in them) of a node sending `batch`
    records a batch."""
    broker = Mosquitto(w / "broker").start()
    gw = GatewayProcess(w / "gw", broker.host, broker.port, client_id="bench-gateway").start()
    relay = Relay((broker.host, broker.port))
    try:
        # payload v2 (the default, said anyway), the firmware as .mpy as provision puts it on a board
        node = SimNode(NodeSpec(node_id="bench-wire", scenario=load_scenario("busy-road"), workdir=w / "n",
                                broker_port=relay.port, until_s=HOURS * 3600,
                                extra_config={"batch_records": batch, "payload": 2},
                                firmware=fleetsim.mpy_firmware(w / "firmware")))
        node.prepare()
        node.start()
        node.wait(1800)
        time.sleep(2)
        with Store(gw.db, readonly=True) as st:  # a record's readings are in its row (store/values.py)
            values = sum((g.avg is not None) + (g.min is not None) + (g.max is not None) for g in st.readings())
            recs = st.counts().records
        segs = [node.read_flash(path) or b"" for path in node.list_flash("sp") if re.fullmatch(r"sp/s\d+", path)]
        spool = sum(len(s) for s in segs)
        on_flash = sum(len(spoolfile.segment_records(s)) for s in segs)
    finally:
        relay.close()
        gw.stop()
        broker.stop()
    return relay, values, recs, spool, on_flash


def run() -> None:
    for batch in BATCHES:
        with tempfile.TemporaryDirectory() as tmp:
            relay, values, recs, spool, on_flash = _measure(Path(tmp), batch)
        total = relay.up + relay.down
        name = "wire_bytes_per_value" + ("" if batch == 1 else f"_batch{batch}")
        record(name, round(total / values, 2), "bytes/value", "lower",
               {"bytes_node_to_broker": relay.up, "bytes_broker_to_node": relay.down, "values": values,
                "records": recs, "hours": HOURS, "batch_records": batch, "payload": 2,
                "board": "esp32-devkitc (PMS5003, BME280, ICS43434)",
                "vs_airrohr_ratio": round(total / values / AIRROHR_BYTES_PER_VALUE, 3),
                "value": "one avg, min or max of one quantity over one interval"})
        if batch != 1:
            continue
        per_rec = spool / on_flash if on_flash else float("nan")
        record("spool_days_at_1min", round(SPOOL_BUDGET / per_rec / 1440, 2), "days", "higher",
               {"spool_bytes": spool, "records": on_flash, "records_stored_by_gateway": recs,
                "bytes_per_record": round(per_rec, 1), "budget_bytes": SPOOL_BUDGET, "goal_days": 30,
                "scenario": "busy-road", "hours": HOURS})


if __name__ == "__main__":
    run()
