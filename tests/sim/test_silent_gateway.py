"""A town's gateway dies (power, SD card) while its nodes are connected: its address stops
answering at all, no RST and no ICMP (tools/dev/silentlink.py: the node's own network namespace,
its frames to and from the broker dropped unseen). umqtt.simple blocks on its socket for ever; the
node's MQTT socket calls give up after mqttwait.py's _WAIT_S instead, so the node keeps measuring
(its noise coverage stays up, no watchdog reset) and sends everything once the gateway answers
again (docs/reliability.md, "The gateway's address goes silent"). The simulator charges a silent
socket call the board's time (docs/simulator.md, "Clock and time"); a real Mosquitto and gateway."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from meetkit_tools.dev.faultrig import db_rows, read_ledger, virtual_s
from meetkit_tools.dev.silentlink import SilentLink
from meetkit_tools.dev.waits import wait_for
from meetkit_tools.services import GatewayProcess, Mosquitto, free_port
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario, scenario_epoch

NODE = "quiet-01"
SILENT_S = 600
SPEED = 20


@pytest.fixture
def link() -> Iterator[SilentLink]:
    sl = SilentLink().open()
    try:
        yield sl
    finally:
        sl.close()


def run(tmp: Path, link: SilentLink, closed: bool = False, **spec: Any) -> dict[str, Any]:
    """The node connected, then its broker silent (or, `closed`, stopped: refused at once) for
    SILENT_S simulated s, then back; what the node made in the window and what the gateway has."""
    port = free_port()
    broker = Mosquitto(tmp / "broker", extra_conf=f"listener {port} {link.host_ip}\n").start()
    gw = GatewayProcess(tmp / "gw", broker.host, broker.port).start()
    sc = load_scenario("quiet-street")
    n = SimNode(NodeSpec(node_id=NODE, scenario=sc, workdir=tmp / NODE, broker_host=link.host_ip, broker_port=port,
                         until_s=None, speed=SPEED, netns=link.netns, **spec))
    try:
        gw.wait_log("subscribed to ", timeout=30)
        n.prepare()
        n.start()
        wait_for(lambda: " I check: gateway: pass: first batch stored" in n.console_text(), 120, "the first batch stored")
        t0 = virtual_s(n.console)
        broker.stop() if closed else link.silence()
        wait_for(lambda: virtual_s(n.console) >= t0 + SILENT_S, 300, f"{SILENT_S} simulated s with the broker away")
        t1 = virtual_s(n.console)
        broker.start() if closed else link.restore()
        made = set(read_ledger(n.console_text()).records)
        stored = lambda: {(b, s) for node, b, s, _, _ in db_rows(gw.db) if node == NODE}   # noqa: E731
        wait_for(lambda: made <= stored(), 300, "every record made so far at the gateway")
        text = n.console_text()
    finally:
        n.stop()
        gw.stop()
        broker.stop()
    epoch = scenario_epoch(sc)
    window = [r for r in read_ledger(text).records.values()
              if r.get("ts") is not None and t0 <= r["ts"] - epoch and r["ts"] - epoch + r["dur"] <= t1]
    return {"t0": t0, "t1": t1, "window": window, "text": text,
            "resets": re.findall(r"--- reset \((\w+)\)", text),
            "covered_s": sum(r["cov"] * r["dur"] for r in window)}


def test_a_silent_gateway_does_not_stop_the_measuring(tmp_path: Path, link: SilentLink) -> None:
    got = run(tmp_path, link)
    w = got["window"]
    print(f"window {got['t0']}..{got['t1']} s: {len(w)} records, covered {got['covered_s']:.0f} s, "
          f"cov {[r['cov'] for r in w]}, resets {got['resets']}")
    assert got["resets"] == [], "a socket call waited for the watchdog"
    # every interval of the window recorded (none lost to a reset), its audio mostly heard: each
    # try of the silent broker costs _WAIT_S of audio, and the tries back off to one a minute
    assert len(w) >= SILENT_S // 60 - 2
    assert got["covered_s"] >= 0.75 * sum(r["dur"] for r in w), w
    assert min(r["cov"] for r in w) >= 0.4, w
    assert " mqtt: publish failed (OSError(116" in got["text"] or " mqtt: receive failed (OSError(116" in got["text"]
