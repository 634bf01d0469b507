"""A technician interrupts a running node (Ctrl-C in mpremote): on the ESP32 the started watchdog
cannot be stopped, so the node gives it its longest sensible timeout (node.py's _TECH_WDT_MS, 30 min)
before the KeyboardInterrupt reaches the REPL. The REPL is then usable for 30 minutes (not the
measuring loop's 90 s), after which the watchdog resets the node and it measures again by itself."""

from __future__ import annotations

import re
from pathlib import Path

from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

# main.py for the test: the node, interrupted about a minute in as Ctrl-C would (the unix port
# raises KeyboardInterrupt on SIGINT the same way), then a REPL that does nothing for a while
MAIN = """\
import simcore, node, machine
_n = [0]
_step = node.Node.step
def _interrupting(self):
    _n[0] += 1
    if _n[0] == 3000:
        raise KeyboardInterrupt
    _step(self)
if machine.reset_cause() != machine.WDT_RESET:   # after the watchdog's reset: left alone
    node.Node.step = _interrupting
try:
    node.main()
except KeyboardInterrupt:
    print("@repl %d %d" % (simcore.now // 1000, (simcore._wdt - simcore.now) // 1000))
import time
while True:
    time.sleep(10)
"""


def test_after_ctrl_c_the_repl_has_30_minutes_then_the_watchdog_restarts_the_node(tmp_path: Path) -> None:
    n = SimNode(NodeSpec(node_id="wdt-01", scenario=load_scenario("quiet-street"), workdir=tmp_path,
                         until_s=34 * 60, broker_port=1, files={"main.py": MAIN.encode()})).start()
    assert n.wait(300) == 0
    text = n.console_text()
    t_repl, left = map(int, re.search(r"^@repl (\d+) (\d+)$", text, re.M).groups())
    assert 55_000 <= t_repl <= 70_000
    assert 29 * 60_000 < left <= 30 * 60_000   # not the loop's 90 s
    assert "W interrupted: the REPL is yours for 30 min; then the watchdog resets the node" in text
    reset = int(re.search(r"^--- reset \(wdt\) at t=(\d+) ms", text, re.M).group(1))
    assert abs(reset - (t_repl + 30 * 60_000)) < 1000
    after = text[text.index("--- reset (wdt)"):]
    assert "reset cause 3" in after and re.search(r" I record 0: ", after), after[-2000:]
