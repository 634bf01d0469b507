"""The node's self-test as its console prints it, and the checklist a technician reads.

The node prints `<uptime> I check: <item>: pass: <detail>` or `<uptime> E check: <item>: fail:
<detail>` when an item's result is known and again when it changes (docs/technician.md lists the
items). A Checklist collects them from console lines and knows which items a board must pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CHECK = re.compile(r"^\s*\d+ [IWE] check: ([a-z]+): (pass|fail): (.*)$")

# What each item proves, in the order a technician reads them.
ITEMS = {
    "board": "board file usable",
    "config": "config.json usable",
    "climate": "climate sensor answers",
    "pm": "PM sensor sends data",
    "mic": "microphone hears",
    "network": "network connected",
    "broker": "broker accepts the node",
    "clock": "clock set (NTP)",
    "gateway": "gateway stored the first batch",
}
# What to do when an item fails: the first things to look at (docs/technician.md has the rest).
HINTS = {
    "board": "the board file does not fit this board: provision again with the right --board",
    "config": "a value in config.json is wrong: provision again with a corrected option",
    "climate": "check the BME280's wiring (SDA/SCL, 3.3 V) and its address against the board file",
    "pm": "check the PM sensor's 5 V supply, its TX to the board's RX pin and the SET pin; the fan must run",
    "mic": "check the microphone's wiring (SD, SCK, WS) and its L/R pin (to GND)",
    "network": "check the Wi-Fi name and password (provision again with --wifi), or the Ethernet cable and PoE",
    "broker": "check the broker's address and that it has loaded the node's account (meetkit broker add-node, "
              "then reload mosquitto)",
    "clock": "the node reaches no NTP server: check the network's firewall (UDP 123) or set ntp_host",
    "gateway": "the gateway did not acknowledge a batch: is meetkit-gateway running and subscribed to this "
               "broker? (meetkit-gateway check)",
}


# An item cannot be tried while the one it needs fails.
NEEDS = {"broker": "network", "clock": "network", "gateway": "broker"}


def expected_items(board: dict[str, Any]) -> list[str]:
    """The items a node on this board must pass before the technician leaves the ladder."""
    items = ["board", "config"]
    items += [k for k in ("climate", "pm", "mic") if k in board]
    return items + ["network", "broker", "clock", "gateway"]


@dataclass
class Result:
    ok: bool
    detail: str


@dataclass
class Checklist:
    items: list[str]
    results: dict[str, Result] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def feed(self, line: str) -> str | None:
        """Take one console line; returns the item it decided, if any."""
        self.lines.append(line)
        m = CHECK.match(line)
        if not m:
            return None
        self.results[m[1]] = Result(m[2] == "pass", m[3].strip())
        return m[1]

    def decided(self, item: str) -> bool:
        return item in self.results

    def blocked_by(self, item: str) -> str | None:
        """The failed item that keeps `item` from being tried, if any."""
        need = NEEDS.get(item)
        while need:
            r = self.results.get(need)
            if r is not None and not r.ok:
                return need
            need = NEEDS.get(need)
        return None

    @property
    def settled(self) -> bool:
        """Nothing more to wait for but a change: each item has a result or cannot be tried."""
        return all(self.decided(i) or self.blocked_by(i) for i in self.items)

    @property
    def passed(self) -> bool:
        return all(i in self.results and self.results[i].ok for i in self.items)

    def render(self, waited_s: float) -> str:
        rows = []
        for i in self.items:
            r = self.results.get(i)
            blocked = None if r else self.blocked_by(i)
            mark = "PASS" if r and r.ok else "FAIL"
            detail = r.detail if r else (f"not tried: no {blocked}" if blocked else f"no result in {waited_s:.0f} s")
            rows.append(f"  [{mark}] {ITEMS.get(i, i):32} {detail}")
            if not (r and r.ok) and not blocked:
                rows.append(f"         -> {HINTS.get(i, '')}")
        return "\n".join(rows)
