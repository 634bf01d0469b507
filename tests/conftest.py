"""Shared fixtures: real parts started on loopback ports of the test's own, stopped after."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from meetkit_tools.services import Mosquitto, free_port  # noqa: F401  (re-exported for tests)

Broker = Mosquitto  # the name the tests use


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path).start()
    try:
        yield b
    finally:
        b.stop()
