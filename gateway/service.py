"""The running gateway: broker -> queue -> writer -> store, and the order to stop them in.

Stopping keeps everything that was received: unsubscribe (the broker confirms, nothing more
arrives), let the writer commit all that is queued, then disconnect.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from .config import Config
from .ingest import Writer
from .mqtt import Source
from .store import Store
from .topics import Topics

log = logging.getLogger(__name__)


class Gateway:
    """Start it, stop it; `run` does both around the process's signals."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix)
        self.store = Store(config.store.path)
        self.writer = Writer(self.store, self.topics)
        self.source = Source(config.mqtt, self.topics, self.writer.submit)
        self._stopped = False

    def start(self) -> "Gateway":
        log.info("store %s", self.config.store.path)
        self.writer.start()
        self.source.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: committing what was received")
        self.source.stop_receiving()
        # Stop the network before the writer: paho acknowledges a message once on_message has
        # handed it to the writer, so every acknowledged message is then committed by close().
        self.source.stop()
        self.writer.close()
        self.store.close()
        log.info(
            "stopped: %d messages received, %d committed", self.writer.received, self.writer.committed
        )

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(config: Config) -> int:
    """Run until SIGTERM or SIGINT (main thread only)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gateway = Gateway(config).start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        gateway.stop()
    return 0
