"""The firmware's heap with TLS to the broker (issue 5), side by side with plaintext.

firmware_peak_heap_tls_bytes: the MicroPython heap's peak over one simulated hour (busy-road,
-X heapsize=112K) of a node on the broker `meetkit broker init` generates, over TLS with its
account (ca.der on its flash); `detail` has the same node's peak over plaintext to an open
Mosquitto in the same run and the difference. Only MicroPython's heap is counted: mbedtls's own
state (the record buffers, the parsed CA, the session) is allocated outside it, by libc here and by
ESP-IDF's heap on the board (docs/technician.md, "TLS and memory").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.results import record
from meetkit_tools.services import FleetBroker, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

HOURS = 1.0


def _peak(workdir: Path, node_id: str, port: int, extra: dict, files: dict) -> tuple[int, float, str]:
    spec = NodeSpec(node_id=node_id, scenario=load_scenario("busy-road"), workdir=workdir, broker_port=port,
                    until_s=HOURS * 3600, heapsize="112K", extra_config=extra, files=files)
    node = SimNode(spec)
    node.prepare()
    t0 = time.perf_counter()
    code = node.start().wait(1800)
    wall = time.perf_counter() - t0
    text = node.console_text()
    if code != 0 or "mqtt: connected" not in text:
        raise SystemExit(f"simulated node {node_id} failed (exit {code}):\n{text[-3000:]}")
    st = node.last_state["stats"]
    return st["heap_peak"] - st["sim_heap"], wall, text


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain = Mosquitto(work / "plain").start()
        secure = FleetBroker(work / "secure", ["bench-tls"]).start()
        try:
            p_peak, p_wall, _ = _peak(work / "n-plain", "bench-plain", plain.port, {}, {})
            t_peak, t_wall, text = _peak(work / "n-tls", "bench-tls", secure.tls_port,
                                         {"broker": secure.node_broker("bench-tls")}, {"ca.der": secure.ca_der})
        finally:
            plain.stop()
            secure.stop()
    record("firmware_peak_heap_tls_bytes", t_peak, "bytes", "lower",
           {"plaintext_peak_bytes": p_peak, "tls_minus_plaintext_bytes": t_peak - p_peak,
            "tls_connects": text.count("mqtt: connected"), "scenario": "busy-road", "simulated_s": HOURS * 3600,
            "heapsize": "112K", "firmware_budget_bytes": 112 * 1024,
            "wall_s": {"plaintext": round(p_wall, 2), "tls": round(t_wall, 2)},
            "method": "live heap after gc.collect() once per simulated second, less the simulator's own",
            "not_counted": "mbedtls's buffers and state: outside MicroPython's heap (libc here, ESP-IDF's heap "
                           "on the ESP32, about 20 KB more per connection there)",
            "note": "64-bit unix port: objects take about twice an ESP32's heap, buffers the same"})


if __name__ == "__main__":
    run()
