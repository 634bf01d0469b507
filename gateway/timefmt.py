"""Times as people type and read them: `30m`, `1h`, `2d` or ISO 8601 in; UTC ISO 8601 out.

A time from a store written by an older gateway may be anything a 64-bit integer or a double holds
(plausible.py): `iso` never raises, it writes what it cannot show as a date as the raw number, and
`start_text` does so for every interval start outside the contract's plausible times."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import plausible

_AGO = re.compile(r"(\d+)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: what ISO 8601 with four-digit years can show: 1000-01-01T00:00:00Z .. 9999-12-31T23:59:59Z
_ISO_MIN, _ISO_MAX = -30610224000, 253402300799


def parse_since(text: str, now: float) -> float:
    """UTC Unix seconds for `text`: a span back from `now` (`90s`, `30m`, `1h`, `2d`, `1w`) or an
    ISO 8601 time (`2026-11-24T08:00Z`; without a zone it is UTC). ValueError otherwise."""
    text = text.strip()
    m = _AGO.fullmatch(text)
    if m:
        return now - int(m.group(1)) * _SECONDS[m.group(2)]
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a span like 30m, 1h, 2d nor an ISO time like 2026-11-24T08:00Z"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def raw(t: Any) -> str:
    """A stored number as it is: `10000000000000`, `9.223372036854776e+18`."""
    return repr(t) if isinstance(t, float) else str(t)


def iso(t: Any) -> str:
    """`2026-11-24T08:00:00Z`, `-` for an unknown time (None), the raw number for one that no
    four-digit year can show (or that is not a finite number)."""
    if t is None:
        return "-"
    if not (plausible.number(t) and _ISO_MIN <= t <= _ISO_MAX):
        return raw(t)
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_text(t: Any, now: float) -> str:
    """An interval start as a table shows it: ISO 8601 when it is plausible (plausible.start),
    `-` when unknown, else the raw number stored."""
    if t is None:
        return "-"
    return iso(t) if plausible.start(t, now) else raw(t)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (`Europe/Amsterdam`, `UTC`); ValueError naming it otherwise."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a time zone this system knows (an IANA name such as "
                         "Europe/Amsterdam or UTC; the tzdata package has them)") from None

