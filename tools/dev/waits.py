"""How tests, rigs and benchmarks wait: on something they can observe, with a deadline
(docs/developer.md, "How the tests wait"). One implementation, so that every wait says the same
thing when it runs out."""

from __future__ import annotations

import time
from typing import Any, Callable


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out. An AssertionError for the tests (pytest shows it as a failed check), a
    TimeoutError for the rigs, which judge rather than assert."""


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition", step: float = 0.1) -> Any:
    """`cond()`'s first true value, asked every `step` s; WaitTimeout naming `what` after `timeout` s
    (cond is asked once more at the deadline, so a slow machine's last chance counts)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)  # waits on: `cond`
