"""The fleet register as the status page and /metrics show it beside the nodes the store knows.

A register that cannot be read never fails a request: the view carries its problems instead (the
page shows them, /metrics sets `meetkit_fleet_error`), and ingest never depends on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from .fleet import Fleet, FleetError

#: what the page shows of a node from the register; notes stay out (the page has no login)
SHOWN = ("name", "board", "installed", "lat", "lon", "height_m", "serials", "noise_offset_db", "calibrated",
         "chip", "fw", "provisioned")


@dataclass(frozen=True)
class FleetView:
    path: str | None  # None: no register configured
    nodes: dict[str, dict[str, Any]]  # node -> what the page shows of it (empty while the file is wrong)
    errors: list[str] | None  # the register's problems, None when it was read

    @property
    def configured(self) -> bool:
        return self.path is not None

    @property
    def usable(self) -> bool:
        """Configured and read: only then can a node be said to be missing from it."""
        return self.configured and self.errors is None


def _plain(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat().replace("+00:00", "Z")
    return value


def view(fleet: Fleet | None) -> FleetView:
    if fleet is None or fleet.path is None:
        return FleetView(None, {}, None)
    try:
        nodes = fleet.nodes()
    except FleetError as e:
        return FleetView(str(fleet.path), {}, list(e.errors))
    return FleetView(str(fleet.path), {n: {k: _plain(m[k]) for k in SHOWN if k in m} for n, m in nodes.items()},
                     None)
