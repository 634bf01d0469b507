"""The MQTT topics of payload v1.

The gateway subscribes to `<prefix>/+/up` (batches), `<prefix>/+/status` and `<prefix>/+/event`
(what a node did: docs/payload.md, "Events"), publishes each batch's acknowledgement to
`<prefix>/<node_id>/ack`, its alarms, retained, to `<prefix>/gateway/alarm`, a node's wanted
configuration, retained, to `<prefix>/<node_id>/config` and commands to `<prefix>/<node_id>/cmd`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

Kind = Literal["up", "status", "event"]
KINDS: tuple[Kind, ...] = ("up", "status", "event")


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

    def config(self, node: str) -> str:
        return f"{self.prefix}/{node}/config"

    def cmd(self, node: str) -> str:
        return f"{self.prefix}/{node}/cmd"

    def event(self, node: str) -> str:
        return f"{self.prefix}/{node}/event"

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

    # -- releases (gateway/ota.py: a connection of their own, beside the writer) ----------------------

    def ota(self, node: str) -> str:
        """A release offered to the node (QoS 1, signed: docs/payload.md, "Release offer")."""
        return f"{self.prefix}/{node}/ota"

    def ota_chunk(self, node: str) -> str:
        """A piece of a release file, the answer to an ota/get (QoS 0)."""
        return f"{self.prefix}/{node}/ota/chunk"

    @property
    def ota_get(self) -> str:
        """What nodes ask pieces on: the OTA connection's one subscription (QoS 0)."""
        return f"{self.prefix}/+/ota/get"

    def parse_ota_get(self, topic: str) -> str | None:
        """The node of `<prefix>/<node>/ota/get`, None for any other topic."""
        head, tail = self.prefix + "/", "/ota/get"
        if not topic.startswith(head) or not topic.endswith(tail):
            return None
        node = topic[len(head):-len(tail)]
        return node if node and "/" not in node else None
