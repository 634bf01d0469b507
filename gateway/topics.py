"""The MQTT topics of payload v1.

The gateway subscribes to `<prefix>/+/up` (batches) and `<prefix>/+/status`, publishes each batch's
acknowledgement to `<prefix>/<node_id>/ack` and its alarms, retained, to `<prefix>/gateway/alarm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Kind = Literal["up", "status"]
KINDS: tuple[Kind, ...] = ("up", "status")


class Topic(NamedTuple):
    node: str
    kind: Kind


@dataclass(frozen=True)
class Topics:
    prefix: str = "meetkit"

    @property
    def subscriptions(self) -> list[str]:
        return [f"{self.prefix}/+/{kind}" for kind in KINDS]

    def ack(self, node: str) -> str:
        return f"{self.prefix}/{node}/ack"

    @property
    def alarm(self) -> str:
        return f"{self.prefix}/gateway/alarm"

    def parse(self, topic: str) -> Topic | None:
        """The node and kind of a topic we subscribe to, None for any other topic."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        node, sep, kind = topic[len(head):].partition("/")
        if not sep or "/" in kind or kind not in KINDS:
            return None
        return Topic(node, kind)  # type: ignore[arg-type]
