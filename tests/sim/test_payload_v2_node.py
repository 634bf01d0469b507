"""A node with the default configuration (payload v2; docs/payload.md, "Payload v2") against the
real gateway: it sends v2 (the envelope with its first batch of the session, then the short form),
and the store holds every record of its console exactly as the console showed it, also across a
restart of the gateway and with records batched for a metered link. The firmware runs from source
(the simulator's default heap: recv2 must fit there too) and as .mpy, as provision puts it on a
board. A node whose recv2 cannot be loaded says so and sends v1, which the gateway stores as well."""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest

from meetkit_gateway import packed
from meetkit_gateway.store import Store
from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

RECORD_LINE = re.compile(r" I record (\d+): (\{.*\})$", re.M)
MINUTES = 12


def stored(db: Path, node: str) -> dict[int, dict]:
    """The store's records of `node` as the console's JSON would say them (quantities only)."""
    out: dict[int, dict] = {}
    with Store(db, readonly=True) as s:
        for g in s.readings(node=node):
            v = g.avg if g.n is None else [g.avg, g.min, g.max, g.n]
            out.setdefault(g.seq, {})[g.quantity] = v
    return out


@contextmanager
def site(tmp_path: Path, node: str) -> Iterator[tuple[Mosquitto, GatewayProcess, list[bytes]]]:
    """A broker, the gateway, and what `node` publishes on its up topic (a spy's list)."""
    broker = Mosquitto(tmp_path / "broker").start()
    gateway = GatewayProcess(tmp_path / "gw", broker.host, broker.port).start()
    ups: list[bytes] = []
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy")
    spy.on_message = lambda c, u, m: ups.append(m.payload)
    spy.connect(broker.host, broker.port)
    spy.subscribe(f"meetkit/{node}/up", qos=1)
    spy.loop_start()
    try:
        yield broker, gateway, ups
    finally:
        spy.loop_stop()
        spy.disconnect()
        gateway.stop()
        broker.stop()


@pytest.mark.parametrize("form,batch", [("source", 1), ("mpy", 5)])
def test_a_v2_node_delivers_every_record_as_its_console_says(tmp_path: Path, form: str, batch: int) -> None:
    with site(tmp_path, "v2-01") as (broker, gateway, ups):
        spec = NodeSpec(node_id="v2-01", scenario=load_scenario("busy-road"), workdir=tmp_path / "n",
                        broker_port=broker.port, until_s=MINUTES * 60, seed=5, extra_config={"batch_records": batch})
        if form == "mpy":
            spec.firmware = fleetsim.mpy_firmware(tmp_path / "firmware")
        node = SimNode(spec).start()
        wait_for(lambda: len(ups) >= 2, 300, "two batches")
        gateway.stop()      # the envelope is kept in the store: the next batches, without it, are read
        gateway.start()
        assert node.wait(600) == 0, node.console_text()[-3000:]
        console = node.console_text()
        want = {int(seq): json.loads(rec) for seq, rec in RECORD_LINE.findall(console)}
        wait_for(lambda: len(stored(gateway.db, "v2-01")) >= len(want) - batch, 60, "the records in the store")
        got = stored(gateway.db, "v2-01")
    assert "payload v1: no memory" not in console and "Traceback" not in console
    assert len(want) >= MINUTES - 2
    for seq, rec in got.items():
        assert {k: v for k, v in rec.items()} == {k: v for k, v in want[seq].items()
                                                  if k not in ("seq", "ts", "up", "dur", "f", "err")}, seq
    # every record made early enough to be sent (a batch of `batch` closes) is stored
    assert set(got) >= {s for s in want if s < max(want) - batch}
    docs = [json.loads(p) for p in ups]
    assert all(d[0] == 2 if isinstance(d, list) else d["v"] == 2 for d in docs), "v2 only"
    assert sum(isinstance(d, dict) and "keys" in d for d in docs) >= 1, "the envelope went with a first batch"
    assert sum(isinstance(d, list) for d in docs) >= 1, "the short form for the others"
    # the records packed (docs/payload.md, "Packed records"): one string a batch, `batch` records in
    # it as they close; the few made while the gateway restarted go together, as a backlog does
    codes = {d["boot"]: tuple(d["k"]) for d in docs if isinstance(d, dict) and "k" in d}
    sizes = []
    for d in docs:
        boot, text = (d[1], d[2]) if isinstance(d, list) else (d["boot"], d["recs"])
        assert isinstance(text, str)
        sizes.append(len(packed.records(packed.decode_text(text), boot, codes[boot])))
    assert max(set(sizes), key=sizes.count) == batch and sum(sizes) >= len(got), sizes


def test_a_node_without_room_for_recv2_says_so_and_sends_v1(tmp_path: Path) -> None:
    """From source in a heap below what recv2 needs, its compile fails with MemoryError (here its
    import always does): the node warns once, sends payload v1 and the gateway stores every record."""
    fw = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, fw)
    (fw / "lib" / "recv2.py").write_text('raise MemoryError("memory allocation failed, allocating 1024 bytes")\n')
    with site(tmp_path, "v1-01") as (broker, gateway, ups):
        spec = NodeSpec(node_id="v1-01", scenario=load_scenario("busy-road"), workdir=tmp_path / "n",
                        broker_port=broker.port, until_s=5 * 60, seed=5)
        spec.firmware = fw
        node = SimNode(spec).start()
        assert node.wait(600) == 0, node.console_text()[-3000:]
        console = node.console_text()
        want = {int(seq): json.loads(rec) for seq, rec in RECORD_LINE.findall(console)}
        wait_for(lambda: len(stored(gateway.db, "v1-01")) >= len(want) - 1, 60, "the records in the store")
        got = stored(gateway.db, "v1-01")
    assert console.count(" W payload v1: no memory to load recv2") == 1, console[-3000:]
    assert "Traceback" not in console and "--- reset" not in console
    assert len(want) >= 3 and ups
    assert all(json.loads(p)["v"] == 1 for p in ups), "v1 only"
    for seq, rec in got.items():
        assert rec == {k: v for k, v in want[seq].items() if k not in ("seq", "ts", "up", "dur", "f", "err")}, seq
