"""Times as people type and read them: `30m`, `1h`, `2d` or ISO 8601 in; UTC ISO 8601 out."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_AGO = re.compile(r"(\d+)\s*([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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


def iso(t: float | None) -> str:
    """`2026-11-24T08:00:00Z`, or `-` for an unknown time."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
