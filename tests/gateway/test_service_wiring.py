"""The running `meetkit-gateway` process with everything on: a node's batch is stored,
acknowledged, forwarded to a real VictoriaMetrics, and counted on the gateway's own /metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from meetkit_tools.services import VictoriaMetrics
from tests.conftest import Broker
from tests.metrics import parse_exposition, sample

from .conftest import CLI, Listener, Publisher, batch, wait_for, write_config


def test_the_gateway_forwards_and_serves_metrics(tmp_path: Path) -> None:
    broker = Broker(tmp_path).start()
    vm = VictoriaMetrics(tmp_path).start()
    conf = write_config(tmp_path, broker.port)
    conf.write_text(conf.read_text() + f'\n[[forward]]\nname = "vm"\ntype = "influx"\nurl = "{vm.url}"\n'
                    'api = "v1"\ndb = "meetkit"\n')
    log = tmp_path / "gateway.log"
    with log.open("w") as out:
        proc = subprocess.Popen([CLI, "run", "--config", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    pub = Publisher("127.0.0.1", broker.port)
    acks = Listener("127.0.0.1", broker.port, "meetkit/ams-001/ack")
    try:
        url = wait_for(lambda: re.search(r"status page and /metrics on (http://\S+)", log.read_text()), 15,
                       "the status page's address")[1]
        wait_for(lambda: "subscribed to" in log.read_text(), 15, "the gateway's subscription")  # else the batch is lost
        pub.publish("meetkit/ams-001/up", batch(seqs=range(0, 6)))
        (ack,) = acks.wait("meetkit/ams-001/ack", 1)
        assert ack["seq"] == [[0, 5]]  # committed, then acknowledged to the node
        wait_for(lambda: len(vm.export('{node="ams-001"}')) >= 2, 20, "the readings in VictoriaMetrics")
        series = {s["metric"]["__name__"]: s for s in vm.export('{node="ams-001",quantity="pm25"}')}
        assert series["meetkit_avg"]["values"] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]

        def metrics() -> dict[str, dict[str, Any]]:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
                return parse_exposition(r.read().decode())

        vm_target = frozenset({("target", "vm"), ("kind", "influxdb")})
        wait_for(lambda: metrics()["meetkit_forward_sent_rows_total"]["samples"].get(vm_target, 0) > 0,
                 10, "the forwarded rows on /metrics")
        assert sample(metrics(), "meetkit_records_stored_total") == 6
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        pub.close()
        acks.close()
        if proc.poll() is None:
            proc.kill()
        vm.stop()
        broker.stop()
