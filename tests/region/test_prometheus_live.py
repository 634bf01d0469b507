"""The region's health with the field's tools: a real Prometheus (Debian's /usr/bin/prometheus)
runs what `meetkit region prometheus` writes, scraping two real `meetkit-gateway run` processes
(each with its own Mosquitto) every second. Two nodes send batches made by the firmware's own code
(tools/dev/batches.py), one to each gateway; while they send, no node is silent; when one stops,
its MeetkitNodeSilent alert fires, and the other's does not. Every rule evaluates on the real
series without an error; a gateway stopped is MeetkitGatewayDown."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meetkit_tools.dev.waits import wait_for
from meetkit_tools.cli import main
from meetkit_tools.dev.batches import node_stream
from meetkit_tools.services import GatewayProcess, Mosquitto, free_port, stop_process, wait_listening

from .conftest import write_plan

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
SILENT_AFTER_S = 15  # well above what /metrics lags the last batch: its cache (5 s), a scrape (1 s), a batch (1 s)
FOR_S = 1


class Sender(threading.Thread):
    """A node publishing one batch a second to its gateway's broker until stopped."""

    def __init__(self, node: str, port: int) -> None:
        super().__init__(daemon=True)
        self.node = node
        now = int(time.time())
        self.messages = node_stream(node, records=600, t0=now - 600 * 60, seed=len(node)).messages
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.halt = threading.Event()
        self.sent = 0

    def run(self) -> None:
        for message in self.messages:
            self.client.publish(f"meetkit/{self.node}/up", message, qos=1).wait_for_publish(10)
            self.sent += 1
            if self.halt.wait(1.0):  # waits on: the node's next batch (one a second), or being stopped
                break

    def stop(self) -> None:
        self.halt.set()
        self.join(15)
        self.client.disconnect()
        self.client.loop_stop()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


class Prometheus:
    def __init__(self, config: Path, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_listening("127.0.0.1", self.port, self.proc, "prometheus", timeout=30)

        def ready() -> bool:  # 503 until its storage is open
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as r:
                    return r.status == 200
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()[-2000:]
                return False

        wait_until("prometheus ready", ready, 60)

    def alerts(self, name: str) -> dict[str, str]:
        """node -> state (pending, firing) of the alerts `name` Prometheus has now."""
        doc = get(f"{self.url}/api/v1/alerts")
        return {a["labels"].get("node", ""): a["state"] for a in doc["data"]["alerts"]
                if a["labels"]["alertname"] == name}

    def query(self, expr: str) -> list[dict]:
        return get(f"{self.url}/api/v1/query?query={urllib.parse.quote(expr)}")["data"]["result"]

    def stop(self) -> None:
        stop_process(self.proc)



def wait_until(what: str, predicate, timeout: float) -> Any:
    return wait_for(predicate, timeout, what, step=0.2)   # Prometheus scrapes and evaluates every second


@pytest.fixture
def region(tmp_path: Path) -> Iterator[dict[str, Any]]:
    started: list[Any] = []
    try:
        gateways = {}
        for name in ("ut-1", "ut-2"):
            b = Mosquitto(tmp_path / name / "mosquitto").start()
            started.append(b)
            g = GatewayProcess(tmp_path / name / "gateway", b.host, b.port, client_id=f"meetkit-{name}").start()
            started.append(g)
            gateways[name] = (b, g)
        http = {name: int(g.status_url().rsplit(":", 1)[1].strip("/")) for name, (b, g) in gateways.items()}
        plan = write_plan(tmp_path / "region.toml", {
            "ut-1": {"town": "utrecht", "host": "127.0.0.1", "port": gateways["ut-1"][0].port, "http": http["ut-1"],
                     "neighbours": ["ut-2"]},
            "ut-2": {"town": "zeist", "host": "127.0.0.1", "port": gateways["ut-2"][0].port, "http": http["ut-2"],
                     "neighbours": ["ut-1"]}})
        out = tmp_path / "prometheus"
        assert main(["region", "prometheus", "--plan", str(plan), "--out", str(out), "--scrape-interval", "1s",
                     "--evaluation-interval", "1s", "--silent-after", f"{SILENT_AFTER_S}s", "--for", f"{FOR_S}s"]) == 0
        prom = Prometheus(out / "prometheus.yml", tmp_path)
        started.append(prom)
        yield {"prom": prom, "brokers": {n: b for n, (b, g) in gateways.items()}, "gateways": gateways}
    finally:
        for s in reversed(started):
            s.stop()


def test_prometheus_scrapes_both_gateways_and_a_node_gone_silent_fires(region: dict[str, Any]) -> None:
    prom: Prometheus = region["prom"]
    brokers = region["brokers"]
    # both gateways scraped, each with its town and name
    targets = wait_until("both gateways up", lambda: (lambda t: t if len(t) == 2 and all(
        x["health"] == "up" for x in t) else None)(get(f"{prom.url}/api/v1/targets")["data"]["activeTargets"]), 30)
    assert sorted((t["labels"]["town"], t["labels"]["gateway"]) for t in targets) == [("utrecht", "ut-1"),
                                                                                      ("zeist", "ut-2")]
    a, b = Sender("ut-0001", brokers["ut-1"].port), Sender("zs-0001", brokers["ut-2"].port)
    a.start()
    b.start()
    try:
        # each node's last word as its own gateway reported it
        wait_until("both nodes in Prometheus", lambda: {(r["metric"]["node"], r["metric"]["gateway"]) for r in
                   prom.query("meetkit_node_last_seen_timestamp_seconds")} == {("ut-0001", "ut-1"), ("zs-0001", "ut-2")},
                   30)
        # every rule of the generated file evaluates on the real gateways' series without an error
        # (a matching of labels that does not hold would show here, not in promtool's tests)
        def rules_ok() -> list[dict] | None:
            rules = [r for g in get(f"{prom.url}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
            # a rule not evaluated yet has the zero time
            return rules if rules and not any(r["lastEvaluation"].startswith("0001") for r in rules) else None
        rules = wait_until("every rule evaluated", rules_ok, 30)
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
        assert len(rules) == 10  # 2 + the gateways' store bounds recorded, 7 alerts
        # no store_max_bytes in the plan: each gateway's bound is its own [store] max_bytes, as it exports it
        bounds = prom.query("meetkit_region:store_max_bytes")
        assert sorted((r["metric"]["gateway"], r["value"][1]) for r in bounds) == [("ut-1", "2000000000"),
                                                                                   ("ut-2", "2000000000")]
        bounds = prom.query("meetkit_store_bounded_bytes / on (town, gateway) group_left () meetkit_region:store_max_bytes")
        assert sorted(r["metric"]["gateway"] for r in bounds) == ["ut-1", "ut-2"]
        # the recording rule names, per node, the gateway that heard it last
        wait_until("meetkit_region:node_last_heard for both nodes", lambda: sorted(
            (r["metric"]["node"], r["metric"]["gateway"]) for r in prom.query("meetkit_region:node_last_heard"))
            == [("ut-0001", "ut-1"), ("zs-0001", "ut-2")], 30)
        # While both send: never silent, not even pending, for longer than the alert needs to fire
        # (silent-after + for + a few scrapes): a window of observation, asserted at every look.
        until = time.monotonic() + SILENT_AFTER_S + FOR_S + 5
        looks = 0
        while time.monotonic() < until:
            assert prom.alerts("MeetkitNodeSilent") == {}, "a node that sends was taken for silent"
            looks += 1
            time.sleep(0.5)  # waits on: the next look at /api/v1/alerts
        assert looks >= 10 and a.is_alive() and b.is_alive()
        # ut-0001 stops: fires within silent-after + for + its scrapes and the gateway's cache
        a.stop()
        stopped = time.monotonic()
        firing = wait_until("MeetkitNodeSilent firing for ut-0001",
                            lambda: (lambda s: s if s.get("ut-0001") == "firing" else None)(
                                prom.alerts("MeetkitNodeSilent")), 60)
        took = time.monotonic() - stopped
        print(f"MeetkitNodeSilent fired {took:.1f} s after the node stopped (silent after {SILENT_AFTER_S} s, for {FOR_S} s)")
        assert took >= SILENT_AFTER_S - 6  # not before it was silent (the gateway's cache 5 s, a scrape 1 s)
        assert "zs-0001" not in firing  # the other goes on sending
        assert b.is_alive()
        # a gateway that stops: MeetkitGatewayDown for it alone
        assert prom.alerts("MeetkitGatewayDown") == {}
        region["gateways"]["ut-2"][1].stop()
        down = wait_until("MeetkitGatewayDown firing for ut-2", lambda: [
            a["labels"] for a in get(f"{prom.url}/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["alertname"] == "MeetkitGatewayDown" and a["state"] == "firing"], 30)
        assert [(d["town"], d["gateway"]) for d in down] == [("zeist", "ut-2")]
    finally:
        a.stop()
        b.stop()
