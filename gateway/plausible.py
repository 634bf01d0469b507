"""Which stored records a reader can pass on as they are.

Gateways before issue 13 stored any interval start, length and counter a node sent that fits in 64
bits: starts in 1970 or in the year 318857, intervals of 31 years, boot and seq of 2**63-1, and a
start derived from such a ts (`start = ts' + up - up'`) that may be negative or even a REAL past
2**63. Ingest refuses such records now (payload.py's plausible values), but a store written before
keeps them until its bounds prune them, and no reader may fail on them. What each reader does with
one (docs/operator.md): the export and the forwarders leave the record out and count it; the
`readings` table shows its start as the raw number.

A record is plausible when its interval start is known and plausible (payload.plausible_ts: not
before TS_MIN, at most FUTURE_MARGIN_S past `now`), its length is 1..DUR_MAX seconds, and its boot
and seq are within BOOT_MAX and SEQ_MAX. `now` is the reader's clock. Anything that is not a finite
number (a REAL infinity, a text) is not plausible.
"""

from __future__ import annotations

import math
from typing import Any

from .payload import BOOT_MAX, DUR_MAX, SEQ_MAX, plausible_ts


def number(v: Any) -> bool:
    """`v` is an int or a finite float (SQLite gives back INTEGER, REAL, TEXT, BLOB or None)."""
    if type(v) is int:
        return True
    return type(v) is float and math.isfinite(v)


def start(t: Any, now: float) -> bool:
    """`t` can be shown as an interval start: a number inside the contract's plausible times."""
    return number(t) and plausible_ts(t, now)


def record(start_: Any, dur: Any, boot: Any, seq: Any, now: float) -> bool:
    """A record with this interval and these counters can be passed on as it is."""
    return (start(start_, now) and number(dur) and 1 <= dur <= DUR_MAX
            and number(boot) and 0 <= boot <= BOOT_MAX and number(seq) and 0 <= seq <= SEQ_MAX)


def finite(v: Any) -> Any:
    """`v`, or None for a REAL infinity (SQLite keeps one; JSON has no way to write it)."""
    return None if type(v) is float and not math.isfinite(v) else v
