"""Remote configuration and commands: what the gateway sends the nodes, signed, from a thread of
its own (docs/payload.md, "Running the fleet"; docs/operator.md, "Remote configuration").

Once a second (`every`) it

- confirms what the broker took since (paho's PUBACK): the store then says so (`published_at`,
  `sent_at`), so that what was not taken is sent again after a restart;
- makes each node's wanted configuration from the fleet register and the secrets (wanted.py) and
  compares it with the version the store holds, by an HMAC of it with the node's key (the store
  keeps no password). A new or changed configuration gets the next version, is stored, and is
  published retained (QoS 1) on `<prefix>/<node>/config` in the signed envelope. An unchanged
  register publishes nothing. A node the register stops configuring is sent `config: {}` once (it
  keeps the values it has: nothing is reset remotely);
- sends each command `meetkit-gateway fleet selftest` queued in the store (`commands`) on
  `<prefix>/<node>/cmd`, signed, QoS 1, not retained; one not sent within `COMMAND_TTL_S` of its
  asking never is.

Versions only go up for a node: a new one is above both the last the store made and the one the
node says it runs (status `cfg`), so a gateway that lost its database (moved aside, replaced)
does not send versions the node would ignore as replays: when a node reports running a version
above the wanted one, the same configuration is sent again under the next version.

What cannot be made or sent (a register that cannot be read, a missing Wi-Fi password, no node
key) is held back and stored as the node's `problem`, which the page, /api/nodes, /metrics and
`meetkit-gateway fleet status` show, naming the file and key, never a secret. Nothing is published
while the broker is away; a broker that lost the gateway's session (and with it, perhaps, its
retained messages) gets every node's current configuration again on the next connection.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from .fleet import Fleet, FleetError
from .fleet_secrets import FleetSecrets
from .signed import NodeKeys, body_text, envelope
from .store import Store
from .topics import Topics
from .wanted import wanted

log = logging.getLogger(__name__)


class Info(Protocol):
    """What paho's publish returns: whether the broker took the message."""

    def is_published(self) -> bool: ...


Publish = Callable[[str, bytes, bool], Info]

#: A command not sent within this long after it was asked is not sent at all: whoever asked has
#: given up (`fleet selftest --wait` is at most this), and a self-test long after is no answer.
COMMAND_TTL_S = 600.0
#: At stop, how long to wait for the broker to take what was just published.
DRAIN_S = 2.0


@dataclass
class _InFlight:
    what: str  # "config" or "cmd"
    node: str
    ref: int  # the configuration's version, the command's id
    info: Info


def digest(key: bytes, config: dict[str, Any]) -> str:
    """What tells one configuration from another without holding its secrets: HMAC-SHA256 of its
    JSON with the node's key."""
    return hmac.new(key, body_text(config).encode("utf-8"), hashlib.sha256).hexdigest()


class ConfigPublisher:
    """The thread that sends the nodes their configuration and commands. `publish(topic, payload,
    retain)` publishes with QoS 1 (mqtt.Source.publish); `connected` is set while the broker is there."""

    def __init__(self, store_path: Path, fleet: Fleet, keys: NodeKeys, secrets: FleetSecrets, topics: Topics,
                 publish: Publish, connected: threading.Event, every: float = 1.0) -> None:
        self.store_path = store_path
        self.fleet = fleet
        self.keys = keys
        self.secrets = secrets
        self.topics = topics
        self.publish = publish
        self.connected = connected
        self.every = every
        self._stop = threading.Event()
        self._resend = threading.Event()  # the broker lost our session: send every configuration again
        self._inflight: dict[tuple[str, str | int], _InFlight] = {}
        self._thread = threading.Thread(target=self._run, name="config-publisher", daemon=True)
        self.published = 0  # configurations the broker took
        self.sent = 0  # commands the broker took

    def start(self) -> "ConfigPublisher":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def session_lost(self) -> None:
        """The broker started a new session for the gateway (any thread): its retained messages may
        be gone too, so every current configuration goes out again."""
        self._resend.set()

    def _run(self) -> None:
        try:
            store = Store(self.store_path)
        except Exception:
            log.exception("cannot open the store %s: no configuration or command is sent", self.store_path)
            return
        with store:
            while not self._stop.is_set():
                try:
                    self.step(store, time.time())
                except Exception:  # a bug or a locked store: logged, tried again next time
                    log.exception("sending the configuration failed; trying again")
                self._stop.wait(self.every)
            self._drain(store)

    def _drain(self, store: Store, timeout: float = DRAIN_S) -> None:
        """At stop: what the broker takes within `timeout` is marked taken, so that the next start
        does not send it again (what it has not taken by then is, under the same version)."""
        deadline = time.monotonic() + timeout
        while self._inflight and self.connected.is_set() and time.monotonic() < deadline:
            try:
                self._confirm(store, time.time())
            except Exception:
                log.exception("could not mark what the broker took")
                return
            time.sleep(0.02)  # waits on paho's thread for the broker's PUBACKs, up to the deadline

    # -- one pass --------------------------------------------------------------------------------

    def step(self, store: Store, now: float) -> None:
        self._confirm(store, now)
        if not self.connected.is_set():
            return
        resend = self._resend.is_set()
        self._resend.clear()
        self._configs(store, now, resend)
        self._commands(store, now)

    def _confirm(self, store: Store, now: float) -> None:
        for key, f in list(self._inflight.items()):
            if not f.info.is_published():
                continue
            del self._inflight[key]
            if f.what == "config":
                store.config_published(f.node, f.ref, now)
                self.published += 1
            else:
                store.command_sent(f.ref, now)
                self.sent += 1

    def _configs(self, store: Store, now: float, resend: bool) -> None:
        rows = store.node_configs()
        try:
            register = self.fleet.nodes()
        except FleetError as e:
            problem = f"the fleet register cannot be read ({len(e.errors)} problems: meetkit fleet check)"
            for node, row in rows.items():
                self._problem(store, node, row.problem, problem, now)
            return
        nodes = sorted(set(register) | set(rows))
        running = {n.node: n.cfg for n in store.nodes()} if nodes else {}
        for node in nodes:
            row = rows.get(node)
            w = wanted(node, register[node], self.secrets, self.topics.prefix) if node in register else None
            if w is None and (row is None or row.version == 0):
                if row is not None:  # held back once, wanted no more: nothing to show either
                    store.forget_config(node)
                continue  # nothing wanted, nothing ever sent
            if w is not None and w.problem:
                self._problem(store, node, row.problem if row else None, w.problem, now)
                continue
            config, shown = (w.config, w.shown) if w is not None else ({}, {})
            key = self.keys.key(node)
            if key is None:
                self._problem(store, node, row.problem if row else None, self.keys.problem(node) or "no node key", now)
                continue
            d = digest(key, config)
            ran = running.get(node)
            if row is None or row.version == 0 or row.digest != d or (ran is not None and ran > row.version):
                version = max(row.version if row else 0, ran or 0) + 1
                store.set_node_config(node, version, d, shown, now)
                log.info("%s: configuration version %d: %s", node, version, ", ".join(sorted(config)) or "nothing")
            elif row.published_at is None or resend:
                version = row.version
                if row.problem:
                    store.config_problem(node, None, now)
            else:
                if row.problem:
                    store.config_problem(node, None, now)
                    log.info("%s: its configuration can be sent again", node)
                continue
            if ("config", node) in self._inflight and self._inflight["config", node].ref == version and not resend:
                continue  # sent already, waiting for the broker
            body = {"node": node, "version": version, "config": config}
            info = self.publish(self.topics.config(node), envelope(key, body), True)
            self._inflight["config", node] = _InFlight("config", node, version, info)

    def _problem(self, store: Store, node: str, before: str | None, problem: str, now: float) -> None:
        if problem != before:
            log.warning("%s: configuration held back: %s", node, problem)
            store.config_problem(node, problem, now)

    def _commands(self, store: Store, now: float) -> None:
        for c in store.pending_commands(since=now - COMMAND_TTL_S):
            if ("cmd", c.id) in self._inflight:
                continue
            key = self.keys.key(c.node)
            if key is None:
                problem = self.keys.problem(c.node) or "no node key"
                if problem != c.problem:
                    log.warning("%s: command %d (%s) held back: %s", c.node, c.id, c.cmd, problem)
                    store.command_problem(c.id, problem)
                continue
            body = {"node": c.node, "cmd": c.cmd, "id": c.id}
            info = self.publish(self.topics.cmd(c.node), envelope(key, body), False)
            self._inflight["cmd", c.id] = _InFlight("cmd", c.node, c.id, info)
            log.info("%s: command %d (%s) sent", c.node, c.id, c.cmd)
