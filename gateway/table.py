"""Plain-text tables for the terminal: left-aligned text, right-aligned numbers."""

from __future__ import annotations

import time
from typing import Sequence

from .store import Node, Reading
from .timefmt import iso, start_text


def number(v: float | int | None) -> str:
    """`12.34`, `2`, `1013.21`; `-` for no value. A count is written whole, however big (an older
    store may hold a boot of 2**63-1: the table shows it as it is)."""
    if v is None:
        return "-"
    return str(v) if isinstance(v, int) else format(v, ".10g")


def render(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


READINGS_HEADER = ("node", "interval start (UTC)", "quantity", "avg", "min", "max", "n", "unit", "flags")
_RIGHT = (False, False, False, True, True, True, True, False, False)


def readings_table(readings: Sequence[Reading], now: float | None = None) -> str:
    """One line per reading; `-` where the node had no valid sample, min, max and n blank for a
    quantity the node sends as a plain number (LA10, cov, ...). An interval start outside the
    contract's plausible times (at `now`) is the raw number stored (timefmt.start_text)."""
    now = time.time() if now is None else now
    rows = [
        (g.node, start_text(g.start, now), g.quantity, number(g.avg),
         *(("", "", "") if g.scalar else (number(g.min), number(g.max), number(g.n))),
         g.unit, g.flags)
        for g in readings
    ]
    return render(READINGS_HEADER, rows, _RIGHT)


NODES_HEADER = ("node", "online", "boot", "fw", "rssi", "last seen (UTC)", "dropped")
_NODES_RIGHT = (False, False, True, False, True, False, True)


def nodes_table(nodes: Sequence[Node]) -> str:
    """One line per node; `dropped` is what its spool dropped by policy (full), as it last said."""
    rows = [
        (n.node, "-" if n.online is None else "yes" if n.online else "no", number(n.boot), n.fw or "-",
         number(n.rssi), iso(n.last_seen), number(n.dropped))
        for n in nodes
    ]
    return render(NODES_HEADER, rows, _NODES_RIGHT)
