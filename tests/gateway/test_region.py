"""A gateway in a region (`[region]` in gateway.toml; docs/payload.md, "Safe in the region";
docs/operator.md, "A region of gateways"): real Mosquittos, the real `meetkit-gateway run`, a real
VictoriaMetrics (Debian's, `-dedup.minScrapeInterval=1ms`) and the SensorThings contract server.

- every acknowledgement carries the node's safe pair, which moves once the region's store took the
  records; standalone safe acknowledgements follow the forwarder when the store comes back;
- two gateways with stores of their own forwarding the same records (as after a failover) write
  every record once into VictoriaMetrics, its series carrying the town and not the gateway;
- the central MQTT topic names the town; SensorThings creates one Observation per record across
  two gateways;
- without [region] nothing changes (tests/gateway/test_acks.py holds the exact form)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meetkit_gateway import config as configuration
from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig, RegionConfig
from meetkit_gateway.forward import Forwarder
from meetkit_gateway.forward.sensorthings import SensorThingsSender
from meetkit_gateway.store import Store
from meetkit_tools.dev.sensorthings_server import SensorThingsServer
from meetkit_tools.services import GatewayProcess, Mosquitto, VictoriaMetrics

from .conftest import Publisher, Running, batch, encode, wait_for, write_config

NODE = "ams-001"
TOWN = "utrecht"


def region_toml(vm_url: str, gateway: str = "ut-1", town: str = TOWN, visitors: Path | None = None) -> str:
    table = "" if visitors is None else f'visitors = "{visitors}"\n'
    return (f'\n[region]\ntown = "{town}"\ngateway = "{gateway}"\nsafe_targets = ["vm-region"]\n{table}\n'
            f'[[forward]]\nname = "vm-region"\ntype = "influx"\nurl = "{vm_url}"\ndb = "meetkit"\n')


class Acks:
    """The node's side: every message on its ack topic, with when it came."""

    def __init__(self, broker: Mosquitto, node: str = NODE) -> None:
        self.got: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"acks-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"meetkit/{node}/ack", 1)
        assert subscribed.wait(5)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((time.monotonic(), json.loads(msg.payload)))

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d for _, d in self.got]

    def alone(self) -> list[tuple[float, dict[str, Any]]]:
        """The standalone safe acknowledgements (no boot, no seq), with when they came."""
        with self._lock:
            return [(t, d) for t, d in self.got if "seq" not in d]

    def next_batch_ack(self, before: int, timeout: float = 15) -> dict[str, Any]:
        """The first batch acknowledgement after the first `before` messages."""
        return wait_for(lambda: next((d for d in self.all()[before:] if "seq" in d), None), timeout,
                        "the batch's acknowledgement")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ready(gw: GatewayProcess) -> str:
    """Once the gateway subscribed (what a node sends before then is not queued for it): its URL."""
    gw.wait_log("subscribed to ")
    return gw.status_url()


def metric(url: str, name: str, node: str = NODE) -> float | None:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    m = re.search(rf'^{name}{{node="{node}"}} (\S+)$', text, re.M)
    return None if m is None else float(m[1])


def metrics_text(url: str) -> str:
    return urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    v = VictoriaMetrics(tmp_path / "vm").start()
    try:
        yield v
    finally:
        v.stop()


def series(vm: VictoriaMetrics, node: str = NODE) -> list[dict[str, Any]]:
    return vm.export(f'{{__name__="meetkit_avg",node="{node}"}}')


# -- (1) the safe pair in every acknowledgement, and alone after the store came back ------------------

def retries(url: str) -> float:
    m = re.search(r'^meetkit_forward_retries_total\{kind="influxdb",target="vm-region"\} (\S+)$', metrics_text(url), re.M)
    return 0.0 if m is None else float(m[1])


def test_acks_carry_the_safe_pair_and_standalone_ones_follow_the_region_store(tmp_path, broker, vm):
    vm.stop()  # the region's store away from the start: batches are committed and acknowledged, nothing safe
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port, extra_toml=region_toml(vm.url)).start()
    acks = Acks(broker)
    node = Publisher(broker.host, broker.port)
    try:
        url = ready(gw)
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(0, 5)))
        first = acks.next_batch_ack(0)
        db = first["db"]
        # the pair just before its earliest record not yet safe, (3, 0): vacuously safe (payload.md)
        assert first == {"v": 1, "db": db, "boot": 3, "seq": [[0, 4]], "safe": [2, 2**30 - 1]}
        wait_for(lambda: retries(url) >= 1, 30, "the forwarder to fail against the stopped store")
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(5, 10)))
        assert acks.next_batch_ack(1) == {"v": 1, "db": db, "boot": 3, "seq": [[5, 9]], "safe": [2, 2**30 - 1]}
        wait_for(lambda: metric(url, "meetkit_node_unsafe_records") == 10, 30, "10 records unsafe")
        assert metric(url, "meetkit_node_unsafe_oldest_seconds") > 0
        assert acks.alone() == []

        vm.start()  # back: the forwarder catches up, and the node hears it without sending anything
        (t1, alone), = wait_for(lambda: acks.alone(), 60, "a standalone safe acknowledgement")
        assert alone == {"v": 1, "db": db, "safe": [3, 9]}
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(10, 15)))
        ack = acks.next_batch_ack(3)
        assert ack["seq"] == [[10, 14]] and ack["safe"] in ([3, 9], [3, 14])  # [3, 14]: forwarded before it was read
        t2, last = wait_for(lambda: next(((t, d) for t, d in acks.got if d.get("safe") == [3, 14]), None), 60,
                            "safe to reach seq 14")
        if "seq" not in last:  # the usual case: alone, at most one every 10 s per node
            assert t2 - t1 >= 9.5  # a slower machine only spaces them more
        wait_for(lambda: metric(url, "meetkit_node_unsafe_records") == 0, 30, "no record unsafe")
        stored = series(vm)
        assert len(stored) == 2 and all(len(s["timestamps"]) == len(set(s["timestamps"])) == 15 for s in stored)
        assert {s["metric"]["town"] for s in stored} == {TOWN}
        assert [d["safe"] for _, d in acks.alone()][-1] == [3, 14] or ack["safe"] == [3, 14]
    finally:
        node.close()
        acks.close()
        gw.stop()


def test_batches_committed_together_get_one_acknowledgement_with_the_pair(tmp_path, broker, vm):
    """The writer waits in its commit while another connection holds the store's write lock: the
    node's two batches that arrive meanwhile go into one commit, and one acknowledgement, which
    carries the node's safe pair as each does."""
    import sqlite3

    vm.stop()  # nothing forwarded: the pair stays where it is while the test looks
    path = write_config(tmp_path, broker.port)
    path.write_text(path.read_text() + region_toml(vm.url))
    g = Running(configuration.load(path)).wait_subscribed()
    acks = Acks(broker)
    node = Publisher(broker.host, broker.port)
    w = g.gateway.writer
    try:
        lock = sqlite3.connect(g.cfg.store.path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            node.publish("meetkit/ams-009/up", batch(node="ams-009", seqs=[0]))
            wait_for(lambda: w.received == 1 and w.backlog == 0, what="the first message in the writer's hands")
            node.publish(f"meetkit/{NODE}/up", batch(seqs=range(0, 3)))
            node.publish(f"meetkit/{NODE}/up", batch(seqs=range(3, 5)))
            wait_for(lambda: w.received == 3, what="both batches at the gateway")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        g.wait_committed(3)
        ack = acks.next_batch_ack(0)
        assert ack == {"v": 1, "db": g.gateway.db_id, "boot": 3, "seq": [[0, 4]], "safe": [2, 2**30 - 1]}
        node.publish(f"meetkit/{NODE}/up", batch(seqs=[5]))  # its ack comes after any other of those
        assert acks.next_batch_ack(1)["seq"] == [[5, 5]]
        assert w.groups == 3 and len(acks.all()) == 2
    finally:
        node.close()
        acks.close()
        g.stop()


def test_records_the_store_never_forwards_do_not_hold_the_pair_back(tmp_path, broker, vm):
    """A record refused on its own is acknowledged (kept as a dead letter) but never forwarded: the
    pair passes it."""
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port, extra_toml=region_toml(vm.url)).start()
    acks = Acks(broker)
    node = Publisher(broker.host, broker.port)
    try:
        ready(gw)
        b = batch(seqs=range(0, 4))
        b["recs"][1]["dur"] = 0  # implausible: refused alone, acknowledged, never in the records
        node.publish(f"meetkit/{NODE}/up", b)
        assert acks.next_batch_ack(0)["seq"] == [[0, 3]]
        wait_for(lambda: any(d.get("safe") == [3, 3] for _, d in acks.alone()), 30, "safe up to seq 3")
    finally:
        node.close()
        acks.close()
        gw.stop()


# -- (2) two gateways, one VictoriaMetrics: every record once --------------------------------------------

def test_two_gateways_forwarding_the_same_records_write_each_once_with_the_town(tmp_path, broker, vm):
    """As after a failover: the node sent 0..9 to its home gateway, then (its gateway unreachable,
    its spool holding what was not yet safe) 5..14 to a neighbour with a store of its own."""
    neighbour = Mosquitto(tmp_path / "broker-2").start()
    home = GatewayProcess(tmp_path / "ut-1", broker.host, broker.port,
                          extra_toml=region_toml(vm.url, "ut-1")).start()
    other = GatewayProcess(tmp_path / "ut-2", neighbour.host, neighbour.port,
                           extra_toml=region_toml(vm.url, "ut-2")).start()
    a, b = Publisher(broker.host, broker.port), Publisher(neighbour.host, neighbour.port)
    try:
        urls = ready(home), ready(other)
        a.publish(f"meetkit/{NODE}/up", batch(seqs=range(0, 10)))
        b.publish(f"meetkit/{NODE}/up", batch(seqs=range(5, 15)))
        for url in urls:
            wait_for(lambda: metric(url, "meetkit_node_unsafe_records") == 0, 30, "both gateways forwarded all")
        stored = series(vm)
        assert len(stored) == 2  # pm25 and temp of the one node: the same series from both gateways
        for s in stored:
            assert set(s["metric"]) == {"__name__", "town", "node", "quantity", "db"}, s["metric"]
            assert s["metric"]["town"] == TOWN
            assert len(s["timestamps"]) == len(set(s["timestamps"])) == 15  # every record once
        assert sorted(stored[0]["timestamps"]) == [(1795510800 + 60 * k) * 1000 for k in range(15)]
    finally:
        a.close()
        b.close()
        home.stop()
        other.stop()
        neighbour.stop()


# -- (2b) a visiting node's records carry its HOME town ----------------------------------------------------

class CentralFeed:
    """A central Mosquitto and a reader of everything published on it."""

    def __init__(self, tmp: Path) -> None:
        self.broker = Mosquitto(tmp / "central").start()
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="reader")
        self.sub.on_message = lambda c, u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.sub.connect(self.broker.host, self.broker.port)
        self.sub.loop_start()
        self.sub.subscribe("meetkit/#", 1)

    def forward_toml(self) -> str:
        """A gateway's [[forward]] to it."""
        return (f'\n[[forward]]\nname = "central"\ntype = "mqtt"\n'
                f'url = "mqtt://{self.broker.host}:{self.broker.port}"\n')

    def close(self) -> None:
        self.sub.disconnect()
        self.sub.loop_stop()
        self.broker.stop()


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralFeed]:
    c = CentralFeed(tmp_path)
    try:
        yield c
    finally:
        c.close()


def broker_secrets(path: Path, own: list[str], visitors: dict[str, tuple[str, str]]) -> Path:
    """A broker folder's secrets.json as `meetkit broker init` and `meetkit region accounts` write it:
    own nodes with their passwords, visitors with theirs, their home gateway and its town."""
    path.write_text(json.dumps({"prefix": "meetkit", "nodes": {n: f"pw-{n}-secret" for n in own},
                                "visitors": {n: {"password": f"pw-{n}-secret", "home": home, "town": town}
                                             for n, (home, town) in visitors.items()}}))
    return path


def towns(vm: VictoriaMetrics, node: str) -> dict[str, dict[str, list[int]]]:
    """quantity -> town -> the timestamps of the node's samples there."""
    out: dict[str, dict[str, list[int]]] = {}
    for s in series(vm, node):
        out.setdefault(s["metric"]["quantity"], {})[s["metric"]["town"]] = sorted(s["timestamps"])
    return out


def test_a_visitor_is_forwarded_under_its_home_town_and_an_unknown_one_under_ours_and_counted(tmp_path, broker, vm,
                                                                                            central):
    """A gateway of zeist with a visitor from utrecht (its table from the broker folder's secrets.json,
    [region] visitors): the visitor's series carry town="utrecht", the gateway's own node's "zeist",
    a node the table does not know "zeist" too, counted and flagged; the central feed publishes all
    under zeist's topics (its ACL), each message saying the node's home town. The table is read
    again when it changes: the unknown node, now a visitor, goes under its home town."""
    got = central.got
    table = broker_secrets(tmp_path / "secrets.json", ["zs-0001"], {NODE: ("ut-1", "utrecht")})
    extra = region_toml(vm.url, "zs-1", "zeist", visitors=table) + (
        central.forward_toml())
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port, extra_toml=extra).start()
    node = Publisher(broker.host, broker.port)
    try:
        url = ready(gw)
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(0, 3)))
        node.publish("meetkit/zs-0001/up", batch(node="zs-0001", seqs=range(0, 3)))
        node.publish("meetkit/xx-0001/up", batch(node="xx-0001", seqs=range(0, 4)))
        for n in (NODE, "zs-0001", "xx-0001"):
            wait_for(lambda: metric(url, "meetkit_node_unsafe_records", n) == 0, 30, f"{n} forwarded")
        stamps = [(1795510800 + 60 * k) * 1000 for k in range(3)]
        assert towns(vm, NODE) == {"pm25": {"utrecht": stamps}, "temp": {"utrecht": stamps}}
        assert towns(vm, "zs-0001") == {"pm25": {"zeist": stamps}, "temp": {"zeist": stamps}}
        assert set(towns(vm, "xx-0001")["pm25"]) == {"zeist"}
        text = metrics_text(url)
        assert "meetkit_region_unknown_visitor_records_total 4.0" in text  # xx-0001's records, once
        assert "meetkit_region_visitors_error 0.0" in text and "meetkit_region_visitors 1.0" in text
        assert "pw-" not in text
        assert gauge(text, "meetkit_store_max_bytes") == 2_000_000_000  # [store] max_bytes, the default
        nodes = {n["node"]: n for n in json.loads(urllib.request.urlopen(f"{url}/api/nodes", timeout=10).read())["nodes"]}
        assert "unknown visitor" in nodes["xx-0001"]["flags"] and nodes["xx-0001"]["town"] == "zeist"
        assert "unknown visitor" not in nodes[NODE]["flags"] and nodes[NODE]["town"] == "utrecht"
        assert "unknown visitor" not in nodes["zs-0001"]["flags"]
        doc = json.loads(urllib.request.urlopen(f"{url}/api/nodes", timeout=10).read())
        assert f"forwarded under this gateway's town, zeist" in doc["region"]["unknown"] and "pw-" not in json.dumps(doc)
        # the central feed: zeist's topics (the only ones its account may publish under), the home town inside
        wait_for(lambda: len(got) >= 10, 30, "ten records on the central broker")
        mine = {(d["node"], d["seq"]): (t, d["town"]) for t, d in got}
        assert mine[(NODE, 0)] == (f"meetkit/zeist/{NODE}/records", "utrecht")
        assert mine[("zs-0001", 0)] == ("meetkit/zeist/zs-0001/records", "zeist")
        assert mine[("xx-0001", 0)] == ("meetkit/zeist/xx-0001/records", "zeist")
        assert list(got[0][1])[:3] == ["v", "node", "town"]
        # `meetkit region accounts` makes xx-0001 a visitor from utrecht: read again, no restart
        broker_secrets(table, ["zs-0001"], {NODE: ("ut-1", "utrecht"), "xx-0001": ("ut-2", "utrecht")})
        node.publish("meetkit/xx-0001/up", batch(node="xx-0001", seqs=range(4, 6)))
        wait_for(lambda: "utrecht" in towns(vm, "xx-0001")["pm25"], 30, "xx-0001's new records under utrecht")
        assert towns(vm, "xx-0001")["pm25"]["utrecht"] == [(1795510800 + 60 * k) * 1000 for k in (4, 5)]
        assert "meetkit_region_unknown_visitor_records_total 4.0" in metrics_text(url)
    finally:
        node.close()
        gw.stop()


def test_two_gateways_of_two_towns_forwarding_a_visitors_records_write_each_once(tmp_path, broker, vm):
    """The node fails over from its home in utrecht to a neighbour in zeist: it sent 0..9 home, then
    (its spool holding what was not yet safe) 5..14 to zeist's gateway, whose table names it a
    visitor from utrecht. One series per quantity, town="utrecht", every record once; the zeist
    gateway's own node stays zeist's."""
    neighbour = Mosquitto(tmp_path / "broker-2").start()
    home = GatewayProcess(tmp_path / "ut-1", broker.host, broker.port,
                          extra_toml=region_toml(vm.url, "ut-1", "utrecht",
                                                 broker_secrets(tmp_path / "ut-1.json", [NODE], {}))).start()
    visited = GatewayProcess(tmp_path / "zs-1", neighbour.host, neighbour.port,
                             extra_toml=region_toml(vm.url, "zs-1", "zeist", broker_secrets(
                                 tmp_path / "zs-1.json", ["zs-0001"], {NODE: ("ut-1", "utrecht")}))).start()
    a, b = Publisher(broker.host, broker.port), Publisher(neighbour.host, neighbour.port)
    try:
        urls = ready(home), ready(visited)
        a.publish(f"meetkit/{NODE}/up", batch(seqs=range(0, 10)))
        b.publish(f"meetkit/{NODE}/up", batch(seqs=range(5, 15)))
        b.publish("meetkit/zs-0001/up", batch(node="zs-0001", seqs=range(0, 2)))
        for url in urls:
            wait_for(lambda: metric(url, "meetkit_node_unsafe_records") == 0, 30, "both gateways forwarded all")
        wait_for(lambda: metric(urls[1], "meetkit_node_unsafe_records", "zs-0001") == 0, 30, "zs-0001 forwarded")
        stored = series(vm)
        assert len(stored) == 2, [s["metric"] for s in stored]  # pm25 and temp: one series each, from both gateways
        for s in stored:
            assert s["metric"]["town"] == "utrecht"
            assert sorted(s["timestamps"]) == [(1795510800 + 60 * k) * 1000 for k in range(15)]  # every record once
        assert {s["metric"]["town"] for s in series(vm, "zs-0001")} == {"zeist"}
        assert all("meetkit_region_unknown_visitor_records_total 0.0" in metrics_text(u) for u in urls)
    finally:
        a.close()
        b.close()
        home.stop()
        visited.stop()
        neighbour.stop()


def gauge(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return None if m is None else float(m[1])


def test_without_a_table_every_node_goes_under_the_gateways_town_and_none_is_unknown(tmp_path, broker, vm):
    """No [region] visitors and no [fleet] broker_secrets: the gateway cannot tell a visitor, says
    so in `check`, forwards every node under its town and counts nothing. /metrics has its store's
    bound (what the region's MeetkitStoreNearBound divides by)."""
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port, extra_toml=region_toml(vm.url, "zs-1", "zeist"),
                        store_toml='max_bytes = "500 MB"\n').start()
    node = Publisher(broker.host, broker.port)
    try:
        url = ready(gw)
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(0, 2)))
        wait_for(lambda: metric(url, "meetkit_node_unsafe_records") == 0, 30, "forwarded")
        assert {s["metric"]["town"] for s in series(vm)} == {"zeist"}
        text = metrics_text(url)
        assert "meetkit_region_unknown_visitor_records_total 0.0" in text and "meetkit_region_visitors_error" not in text
        assert gauge(text, "meetkit_store_max_bytes") == 500_000_000
        nodes = json.loads(urllib.request.urlopen(f"{url}/api/nodes", timeout=10).read())["nodes"]
        assert [n["flags"] for n in nodes if n["node"] == NODE] == [[]]
    finally:
        node.close()
        gw.stop()


def test_check_says_where_the_visitors_towns_come_from(tmp_path):
    vm_target = '[[forward]]\nname = "vm-region"\ntype = "influx"\nurl = "http://vm:8428"\ndb = "m"\n'
    region = '[region]\ntown = "zeist"\ngateway = "zs-1"\nsafe_targets = ["vm-region"]\n'
    code, out = check(tmp_path, region + vm_target)
    assert code == 0 and "no visitors' table ([region] visitors or [fleet] broker_secrets)" in out
    table = broker_secrets(tmp_path / "secrets.json", ["zs-0001"], {NODE: ("ut-1", "utrecht")})
    code, out = check(tmp_path, f'[fleet]\nbroker_secrets = "{table}"\n' + region + vm_target)  # the default
    assert code == 0 and f"visitors' home towns from {table}: 1 visitor(s); any other node under town=zeist" in out
    assert configuration.load(tmp_path / "gateway.toml").region.visitors == table
    code, out = check(tmp_path, region + 'visitors = "secrets.json"\n' + vm_target)  # relative to gateway.toml
    assert code == 0 and f"visitors' home towns from {table}" in out and "pw-" not in out
    code, out = check(tmp_path, region + 'visitors = "missing.json"\n' + vm_target)
    assert code == 0 and f"{tmp_path / 'missing.json'}: cannot read it (No such file or directory)" in out


# -- (3) without [region]: no safe, no region metrics ---------------------------------------------------

def test_without_a_region_acks_have_no_safe_and_metrics_no_unsafe_records(tmp_path, broker, vm):
    path = write_config(tmp_path, broker.port)
    path.write_text(path.read_text() + f'\n[[forward]]\nname = "vm"\ntype = "influx"\nurl = "{vm.url}"\ndb = "m"\n')
    g = Running(configuration.load(path)).wait_subscribed()
    acks = Acks(broker)
    node = Publisher(broker.host, broker.port)
    try:
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(3)))
        ack = acks.next_batch_ack(0)
        assert ack == {"v": 1, "db": g.gateway.db_id, "boot": 3, "seq": [[0, 2]]}
        wait_for(lambda: g.gateway.forwarders.status()[0]["queue_rows"] == 0, 30, "forwarded")
        assert g.gateway.safe is None
        from meetkit_gateway.http import metrics_text as render
        with g.store() as s:
            text = render(s, g.gateway.forwarders.status)
        assert "meetkit_node_unsafe_records" not in text and 'meetkit_node_records{node="ams-001"} 3.0' in text
        assert len(acks.all()) == 1  # nothing alone
    finally:
        node.close()
        acks.close()
        g.stop()


# -- (4) the central MQTT topic names the town ----------------------------------------------------------

def test_the_central_mqtt_forwarder_publishes_under_the_town(tmp_path, broker, vm, central):
    got = central.got
    extra = region_toml(vm.url) + central.forward_toml()
    gw = GatewayProcess(tmp_path / "gw", broker.host, broker.port, extra_toml=extra).start()
    node = Publisher(broker.host, broker.port)
    try:
        ready(gw)
        node.publish(f"meetkit/{NODE}/up", batch(seqs=range(3)))
        wait_for(lambda: len(got) >= 3, 30, "three records on the central broker")
        assert [t for t, _ in got] == [f"meetkit/{TOWN}/{NODE}/records"] * 3
        assert [(d["node"], d["boot"], d["seq"]) for _, d in got] == [(NODE, 3, 0), (NODE, 3, 1), (NODE, 3, 2)]
        assert "as meetkit-gateway-ut-1-central" in gw.wait_log("connected to mqtt://.* as meetkit-gateway-ut-1-central")[0]
    finally:
        node.close()
        gw.stop()


def test_region_topic_puts_the_town_second_unless_the_template_places_it():
    assert configuration.region_topic("meetkit/{node}/records", "utrecht") == "meetkit/utrecht/{node}/records"
    assert configuration.region_topic("city/{town}/x/{node}", "zeist") == "city/zeist/x/{node}"
    assert configuration.region_topic("all", "zeist") == "all/zeist"


# -- (5) SensorThings across two gateways ------------------------------------------------------------------

FLEET = '[nodes."ams-001"]\nboard = "esp32-devkitc"\nlat = 52.09\nlon = 5.12\n'


def sta_forwarder(sta: SensorThingsServer, tmp_path: Path, name: str, region: bool) -> Forwarder:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(FLEET)
    db = tmp_path / f"{name}.db"
    cfg = ForwardConfig(name="sta", type="sensorthings", url=sta.url, fleet=fleet, batch=1000)
    return Forwarder("sta", db, SensorThingsSender(cfg, db, region=region), batch=1000)


def store_batch(f: Forwarder, seqs: range) -> None:
    with Store(f.store_path) as s:
        s.add_batch(payload.parse_batch(encode(batch(seqs=seqs)), NODE))


def drain(f: Forwarder) -> None:
    for _ in range(50):
        if f.step() > 0:
            return
    raise AssertionError("the forwarder did not idle")


def failover(sta: SensorThingsServer, tmp_path: Path, region: bool) -> list[tuple[int, int]]:
    """Home forwards 0..4; the node fails over: the neighbour gets 0..9 from its spool; back home
    (another database) the node sends 5..14. The (boot, seq) of every Observation of pm25."""
    home, neighbour = (sta_forwarder(sta, tmp_path, n, region) for n in ("home", "neighbour"))
    try:
        store_batch(home, range(0, 5))
        drain(home)
        store_batch(neighbour, range(0, 10))
        drain(neighbour)
        store_batch(home, range(5, 15))
        drain(home)
    finally:
        home.close()
        neighbour.close()
    (ds,) = [d for d in sta.all("Datastreams") if d["properties"]["quantity"] == "pm25"]
    return sorted((o["phenomenonTime"], o["result"]) for o in sta.observations(ds["@iot.id"]))  # type: ignore[misc]


def test_sensorthings_in_a_region_creates_one_observation_per_record_across_two_gateways(tmp_path, sta):
    obs = failover(sta, tmp_path, region=True)
    assert len(obs) == len(set(obs)) == 15
    (ds,) = [d for d in sta.all("Datastreams") if d["properties"]["quantity"] == "pm25"]
    params = sorted((o["parameters"]["boot"], o["parameters"]["seq"]) for o in sta.observations(ds["@iot.id"]))
    assert params == [(3, s) for s in range(15)]


def test_sensorthings_without_a_region_would_create_the_failed_over_records_twice(tmp_path):
    """Why the region looks records up on the service: each gateway's own mark of what it sent
    does not know what the other sent."""
    sta = SensorThingsServer()
    try:
        obs = failover(sta, tmp_path, region=False)
    finally:
        sta.stop()
    assert len(set(obs)) == 15 and len(obs) == 20  # 5..9 twice


# -- [region] in gateway.toml ------------------------------------------------------------------------------

def check(tmp_path: Path, text: str) -> tuple[int, str]:
    from .conftest import cli

    path = tmp_path / "gateway.toml"
    path.write_text('[store]\npath = "gateway.db"\n' + text)
    r = cli("check", "--config", str(path))
    return r.returncode, r.stdout + r.stderr


def test_check_names_every_problem_of_region(tmp_path):
    vm_target = '[[forward]]\nname = "vm-region"\ntype = "influx"\nurl = "http://vm:8428"\ndb = "m"\n'
    code, out = check(tmp_path, '[region]\ntown = "Utrecht"\ngateway = "ut_1"\nsafe_targets = ["vm-regio", "off"]\n'
                                + vm_target + '[[forward]]\nname = "off"\ntype = "influx"\nurl = "http://x"\n'
                                'db = "m"\nenabled = false\n')
    assert code != 0
    assert 'region.town: must be 1 to 32 of a-z, 0-9 and "-" (the region plan\'s names), got "Utrecht"' in out
    assert 'region.gateway: must be 1 to 32 of a-z, 0-9 and "-"' in out
    assert 'region.safe_targets: "vm-regio" is not the name of a [[forward]] target (the targets: off, vm-region)' in out
    assert 'region.safe_targets: "off" is disabled (enabled = false): no record would ever be safe' in out
    code, out = check(tmp_path, '[region]\ntown = "utrecht"\n')
    assert code != 0 and "region.gateway: missing" in out and "region.safe_targets: missing" in out
    code, out = check(tmp_path, '[region]\ntown = "utrecht"\ngateway = "ut-1"\nsafe_targets = []\n')
    assert code != 0 and "region.safe_targets: must be a non-empty array of [[forward]] target names" in out
    code, out = check(tmp_path, '[[forward]]\nname = "c"\ntype = "mqtt"\nurl = "mqtt://c"\ntopic = "m/{town}/{node}"\n')
    assert code != 0 and 'forward ("c").topic: {town} needs [region]' in out
    code, out = check(tmp_path, '[region]\ntown = "utrecht"\ngateway = "ut-1"\nsafe_targets = ["vm-region"]\n'
                      + vm_target + '[[forward]]\nname = "central"\ntype = "mqtt"\nurl = "mqtt://c"\n')
    assert code == 0, out
    assert "region      town utrecht, gateway ut-1" in out
    assert "region      central publishes on meetkit/utrecht/{node}/records" in out
    cfg = configuration.load(tmp_path / "gateway.toml")
    assert cfg.region == RegionConfig("utrecht", "ut-1", ("vm-region",))


# -- a visiting node: status via and held -------------------------------------------------------------------

def test_a_visiting_node_is_shown_as_such_with_what_it_holds(tmp_path, broker):
    g = Running(configuration.load(write_config(tmp_path, broker.port))).wait_subscribed()
    node = Publisher(broker.host, broker.port)
    try:
        status = {"v": 1, "node": NODE, "online": True, "boot": 3, "via": 1, "held": 240}
        node.publish(f"meetkit/{NODE}/status", status)
        node.publish("meetkit/ams-002/status", {"v": 1, "node": "ams-002", "online": True, "via": 0, "held": 0})
        node.publish("meetkit/ams-003/status", {"v": 1, "node": "ams-003", "online": True, "via": 16})
        g.wait_committed(3)
        from meetkit_gateway.http import metrics_text as render, nodes_doc
        with g.store() as s:
            text = render(s, lambda: [])
            doc = {n["node"]: n for n in nodes_doc(s, lambda: [])["nodes"]}
            assert [d.reason for d in s.dead_letters()] == ["via: 16 is outside 0..15"]
        assert 'meetkit_node_via{node="ams-001"} 1.0' in text and 'meetkit_node_held_records{node="ams-001"} 240.0' in text
        assert 'meetkit_node_via{node="ams-002"} 0.0' in text
        assert "visiting" in doc[NODE]["flags"] and (doc[NODE]["via"], doc[NODE]["held"]) == (1, 240)
        assert "visiting" not in doc["ams-002"]["flags"]
        # its last will says neither: what it said last stays
        node.publish(f"meetkit/{NODE}/status", {"v": 1, "node": NODE, "online": False})
        g.wait_committed(4)
        with g.store() as s:
            assert {n.node: (n.via, n.held) for n in s.nodes()}[NODE] == (1, 240)
    finally:
        node.close()
        g.stop()


# -- the pair itself (store/safe.py) ---------------------------------------------------------------------

def test_the_safe_pair_is_just_before_the_earliest_record_not_yet_taken(tmp_path):
    from meetkit_gateway.store.safe import pair_before

    assert pair_before(3 * 2**30 + 17) == (3, 16)
    assert pair_before(3 * 2**30) == (2, 2**30 - 1)
    assert pair_before(0) is None
    with Store(tmp_path / "g.db") as s:
        assert s.safe_pairs(("vm",), [NODE]) == {NODE: None}  # no record: []
        s.add_batch(payload.parse_batch(encode(batch(seqs=range(10, 21))), NODE))
        s.add_batch(payload.parse_batch(encode(batch(node="ams-002", boot=0, seqs=range(0, 3))), "ams-002"))
        assert s.safe_pairs(("vm",), [NODE, "ams-002"]) == {NODE: (3, 9), "ams-002": None}  # no cursor yet: none taken
        s.add_cursor("vm", T := 1795510800.0)
        s.add_cursor("central", T)
        s.set_cursor("vm", 11, T)  # took ams-001's 10..20
        assert s.safe_pairs(("vm",), [NODE]) == {NODE: (3, 20)}  # all taken: its latest
        assert s.safe_pairs(("vm", "central"), [NODE]) == {NODE: (3, 9)}  # the lowest cursor of the targets
        # a record below the pair sent arrives late (refused for want of disk space, sent again after
        # later ones): the pair is the truth again, smaller (docs/payload.md: the node applies each one
        # to what was acknowledged up to then)
        s.add_batch(payload.parse_batch(encode(batch(seqs=[5])), NODE))
        assert s.safe_pairs(("vm",), [NODE]) == {NODE: (3, 4)}
        assert {node: n for node, (n, _) in s.unsafe_records(("vm",)).items()} == {"ams-002": 3, NODE: 1}
        assert s.nodes_between(0, 11) == [NODE]
