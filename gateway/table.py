"""Plain-text tables for the terminal: left-aligned text, right-aligned numbers."""

from __future__ import annotations

from typing import Sequence

from .store import Node, Reading
from .timefmt import iso


def number(v: float | int | None) -> str:
    """`12.34`, `2`, `1013.21`; `-` for no value."""
    return "-" if v is None else format(v, ".10g")


def render(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


READINGS_HEADER = ("node", "interval start (UTC)", "quantity", "avg", "min", "max", "n", "unit", "flags")
_RIGHT = (False, False, False, True, True, True, True, False, False)


def readings_table(readings: Sequence[Reading]) -> str:
    """One line per reading; `-` where the node had no valid sample, min, max and n blank for a
    quantity the node sends as a plain number (LA10, cov, ...)."""
    rows = [
        (g.node, iso(g.start), g.quantity, number(g.avg),
         *(("", "", "") if g.scalar else (number(g.min), number(g.max), number(g.n))),
         g.unit, ",".join(g.flags))
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
