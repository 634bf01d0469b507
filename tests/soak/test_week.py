"""A simulated week of the fault suite's faults, all on the same nodes (`make soak`, about 20
minutes on a 2-core machine): daily Wi-Fi outages, NTP away at the start, sensors unplugged, power
cuts at random flash writes, a 16-hour outage late in the week, and from outside a gateway killed
(SIGKILL) every simulated day and a broker restarted twice. The fault suite's judge
(tools/dev/faultrig.py) then compares each node's ledger with the gateway's database: nothing
lost, nothing twice, every record with its right time, no firmware error, over a week instead of
hours. The console stays readable past the 6.2 days at which `time.ticks_diff` of the ESP32's
ticks_ms (period 2**30 ms) turns negative: its uptime column counts on, and the self-test still
says when the network fails."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.dev.faultrig import Rig, read_ledger, scenario

pytestmark = pytest.mark.soak

AIR = "esp32-devkitc-air"
H = 3600
DAY = 24 * H
WEEK = 7 * DAY
WAIT_S = 1800   # wall seconds for a simulated day at most (about 90 s here)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_a_week_of_faults_loses_nothing(rig: Rig) -> None:
    rng = random.Random(14)
    daily = []
    for d in range(7):   # an outage of 1 to 3 hours at a random time of each day
        start = d * DAY + rng.uniform(1, 20) * H
        daily.append((start, start + rng.uniform(1, 3) * H))
    cuts, w = [], 0
    for _ in range(28):  # power cuts all week long: about 32 000 flash programs a day
        w += rng.randint(3000, 10000)
        cuts.append(w)
    a = rig.node("week-01", scenario("busy-road", wifi_down=daily, ntp_unreachable=[(0, 2 * H)],
                                     pm_unplugged=[(2.5 * DAY, 2.5 * DAY + H)],
                                     i2c_unplugged=[(4.5 * DAY, 4.5 * DAY + H)]),
                 board=AIR, until_s=WEEK, power_cuts=cuts, seed=1)
    # a long outage once its network check was printed more than 2**29 ms ago (at boot)
    late = (6.25 * DAY, 6.25 * DAY + 16 * H)
    b = rig.node("week-02", scenario("quiet-street", wifi_down=[late]), board=AIR, until_s=WEEK, seed=2)
    kills = sorted(d * DAY + rng.uniform(2, 22) * H for d in range(7))
    restarts = sorted(rng.uniform(0.5, 6.5) * DAY for _ in range(2))
    done = {"kills": 0, "restarts": 0}

    def faults() -> None:
        for t, what in sorted([(t, "kill") for t in kills] + [(t, "restart") for t in restarts]):
            rig.wait_virtual("week-01", t, timeout=WAIT_S)
            if what == "kill":
                rig.gateway.kill()
                rig.gateway.proc = None
                time.sleep(rng.uniform(0.1, 2.0))  # waits on: the gateway away a random while
                rig.gateway.start()
                done["kills"] += 1
            else:
                rig.broker.stop()
                time.sleep(rng.uniform(0.5, 3.0))  # waits on: the broker away a random while
                rig.broker.start()
                done["restarts"] += 1
        for n in rig.nodes.values():   # both run to their week's end (until_s) by themselves
            n.wait(7 * WAIT_S)

    rig.run(faults, timeout=4 * H)
    rig.settle(timeout=300)
    out = rig.judge("a week of faults")
    out.notes.update(power_cuts=a.power_cuts_done, kills=done["kills"], broker_restarts=done["restarts"])
    print(out.row())
    assert (done["kills"], done["restarts"]) == (7, 2)
    assert a.power_cuts_done == len(cuts)
    assert out.lost == 0 and out.duplicated == 0 and out.wrong_time == 0 and out.untimed == 0, out.problems
    assert out.crashes == 0, "the firmware hit an unexpected error (see the node's console.log)"
    for n in (a, b):   # measured all week: a record a minute, less what power cuts interrupted
        text = n.console_text()
        led = read_ledger(text)
        assert len(led.records) >= 0.97 * WEEK / 60, (n.spec.node_id, len(led.records))
        assert "MemoryError" not in text
        ups = uptimes(text)
        assert all(0 <= x <= y for boot in ups for x, y in zip(boot, boot[1:])), \
            f"{n.spec.node_id}: the console's uptime went back within a boot"
    fails = [int(line.split()[0]) for line in b.console_text().splitlines() if " E check: network: fail" in line]
    assert any(late[0] + 30 <= t <= late[0] + 120 for t in fails), \
        f"week-02: no 'network: fail' line 30 s into the outage at {late[0]:.0f} s: {fails}"


def uptimes(console: str) -> list[list[int]]:
    """The uptime column of each boot's console lines (a boot ends at the runner's --- line)."""
    boots: list[list[int]] = [[]]
    for line in console.splitlines():
        if line.startswith("--- "):
            boots.append([])
            continue
        head = line[:8].strip()
        if head.lstrip("-").isdigit():
            boots[-1].append(int(head))
    return boots
