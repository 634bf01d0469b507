"""The running gateway: broker -> queue -> writer -> store -> acknowledgements, and the order to
start and stop them in.

After each commit: each node gets one acknowledgement per boot for all its batches in the commit
(acks.merge), then the broker gets its MQTT ack for every message. A group the store refused (disk
full) gets MQTT acks but no acknowledgements to the nodes: the broker goes on delivering, the nodes
keep those records and send them again.

Stopping keeps everything that was received: take no more messages (what the broker sends meanwhile
stays unacknowledged in the session and comes again), let the writer commit and acknowledge all
that is queued, then disconnect. The subscriptions stay in the broker's session, which queues what
the nodes publish until the gateway is back.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

from typing import Sequence

from . import config as configuration
from . import memory
from .acks import SafePair, merge
from .alarms import CORRUPT_DB, Alarms
from .config import Config, ConfigError
from .configpub import ConfigPublisher
from .fleet import Fleet
from .fleet_secrets import FleetSecrets
from .forward import Forwarders
from .http import StatusServer
from .http_server import listen_error
from .ingest import Done, Inbound, Writer
from .mqtt import Source
from .ota import OtaLink
from .recovery import MovedAside, open_store
from .retention import Bounds
from .rollouts import RolloutManager
from .safe_acks import SafeAcks
from .signed import NodeKeys
from .store import Store
from .systemd import Notifier
from .topics import Topics
from .visitors import Visitors

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The gateway cannot start as configured (the message says why and what to change)."""


#: how long the start waits for its subscription before saying it runs (a broker away: not at all)
SETTLE_S = 10.0


class Gateway:
    """Start it, stop it; `run` does both around the process's signals."""

    def __init__(self, config: Config, store: Store | None = None) -> None:
        """`store`: the open store of the gateway this one replaces (a reload with the same
        store.path), so the whole file is not checked again."""
        self.config = config
        self.topics = Topics(config.mqtt.topic_prefix)
        self.alarms = Alarms()
        if store is None:
            self.store, self.moved = open_store(config.store.path)
        else:
            self.store, self.moved = store, None
        # A region: each node's home town, for what is forwarded (a visitor's is not this gateway's)
        self.visitors: Visitors | None = None
        if config.region is not None:
            self.visitors = Visitors(config.region.visitors, config.region.town)
        self.writer = Writer(
            self.store, self.topics, on_committed=self._committed, on_refused=self._refused, alarms=self.alarms,
            bounds=Bounds.of(config), unknown=self.visitors.unknown if self.visitors is not None else None,
        )
        self.source = Source(config.mqtt, self.topics, self.writer.submit)
        self.alarms.publish = lambda payload: self.source.publish(self.topics.alarm, payload, retain=True)
        if self.moved is not None:
            self._corrupt(self.moved)
        self.fleet = Fleet(config.fleet)
        files = config.fleet_files
        self.node_keys = NodeKeys(files.node_keys)
        self.secrets = FleetSecrets(files.secrets, files.broker_secrets)
        self.configpub = ConfigPublisher(config.store.path, self.fleet, self.node_keys, self.secrets, self.topics,
                                         self.source.publish, self.source.connected)
        self.source.on_new_session = self.configpub.session_lost
        # Releases: a connection of their own and a thread of their own, beside the writer (ota.py)
        self.ota: OtaLink | None = None
        self.rollouts: RolloutManager | None = None
        if config.ota is not None:
            self.ota = OtaLink(config.mqtt, config.ota, self.topics)
            self.rollouts = RolloutManager(config.store.path, config.ota, self.node_keys, self.ota.offer,
                                           self.ota.pieces.serve, self.alarms)
        # A region (docs/payload.md, "Safe in the region"): acknowledgements carry the safe pair
        self.safe: SafeAcks | None = None
        if config.region is not None:
            self.safe = SafeAcks(config.region, config.store.path, self.topics, self.source.publish, self.store.db_id)
        self.forwarders: Forwarders | None = None
        self.http: StatusServer | None = None
        self._stopped = False
        self._socket_problem: str | None = None  # why the last probe could not open a socket

    @property
    def db_id(self) -> str:
        return self.store.db_id

    def _corrupt(self, moved: MovedAside) -> None:
        files = ", ".join(f"{a} -> {b}" for a, b in moved.moved)
        self.alarms.raise_(
            CORRUPT_DB,
            f"the database was corrupt at start ({moved.problem}); moved it aside: {files}; started a "
            f"fresh database {self.store.db_id}; the nodes send again what their spools hold",
        )
        self.alarms.save(self.store)  # before anything else, so `meetkit-gateway check` shows it

    def start(self) -> "Gateway":
        """Raises StartupError, nothing started, when the status page's port cannot be had."""
        log.info("store %s, database %s", self.config.store.path, self.store.db_id)
        # The status page first: a gateway without its page and /healthz looks dead to the operator
        # and to any monitor, so a taken port is a start-up error (systemd says why, and restarts).
        http = self.config.http
        try:
            self.http = StatusServer(self.config.store.path, http.host, http.port,
                                     targets=lambda: self.forwarders.status() if self.forwarders is not None else [],
                                     fleet=self.fleet, secrets=self.secrets,
                                     ota=self.ota.pieces.status if self.ota is not None else None,
                                     region=self.config.region, visitors=self.visitors,
                                     store_max_bytes=self.config.store.max_bytes,
                                     timezone=http.timezone).start(announce=False)
        except OSError as e:
            raise StartupError(listen_error(http.host, http.port, e)) from None
        self.writer.start()
        self.source.start()
        # the page's line says "running" (to the operator, to tests): after the subscription, so
        # that what nodes send from then on is taken; a broker away or refusing does not hold it up
        self.source.wait_settled(SETTLE_S)
        self.http.announce()
        self.configpub.start()
        if self.ota is not None and self.rollouts is not None:
            self.ota.start()
            self.rollouts.start()
        if self.safe is not None:
            self.safe.start()  # before the forwarders: it sees every move of their cursors
        self.forwarders = Forwarders.start(self.config.store.path, self.config.forward, region=self.config.region,
                                           visitors=self.visitors)
        return self

    def stop(self, close_store: bool = True) -> None:
        """`close_store=False`: leave the store open for the gateway that replaces this one."""
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: committing what was received")
        if self.http is not None:
            self.http.stop()
        self.configpub.stop()
        if self.rollouts is not None and self.ota is not None:
            self.rollouts.stop()  # it writes its state as it goes: nothing to finish
            self.ota.stop()
        self.source.pause()
        # The writer before the network: it commits what is queued, and its acknowledgements go
        # out over the connection before the disconnect.
        self.writer.close()
        self.source.stop()
        if self.safe is not None:
            self.safe.stop()
        if self.forwarders is not None:
            self.forwarders.stop()  # a batch in flight is sent again at the next start
        if close_store:
            self.store.close()
        # stale: committed, but received over a connection since lost; the broker delivers them again
        log.info(
            "stopped: %d messages received, %d committed, %d refused; %d acknowledged to the broker, %d stale",
            self.writer.received, self.writer.committed, self.writer.refused, self.source.acked, self.source.stale,
        )

    # -- the writer's hooks (the writer thread) -----------------------------------------------------

    def progressing(self, within_s: float) -> bool:
        """Real progress, for systemd's watchdog (docs/operator.md, "As a systemd service"), all of:

        - the writer's loop passed within `within_s` (it passes every second, idle or not; a hung
          commit stops it);
        - the MQTT network thread runs (it reconnects by itself: a broker that is away is no hang);
        - the process can open a socket, so paho can open its next connection to the broker: a
          gateway out of file descriptors can neither reconnect nor take a message, and waits for
          the restart the starved watchdog brings."""
        if not (time.monotonic() - self.writer.alive_at < within_s and self.writer.running and self.source.alive):
            return False
        problem = can_open_socket()
        if problem != self._socket_problem:
            if problem:
                log.error("cannot open a socket (%s): the broker cannot be reached again; the systemd "
                          "watchdog is no longer fed", problem)
            else:
                log.info("sockets can be opened again")
            self._socket_problem = problem
        return problem is None

    def _committed(self, done: Sequence[Done]) -> None:
        if self.safe is None:
            self._acknowledge(done, None)
        else:
            with self.safe.lock:  # a standalone pair read before this commit goes out before these (safe_acks.py)
                try:
                    pairs = self.safe.for_batches(self.store, {ack.node for _, ack in done if ack is not None})
                except Exception:  # the pair is a bonus: the batches are committed and acknowledged all the same
                    log.exception("region: could not read the safe pairs")
                    pairs = {}
                self._acknowledge(done, pairs)
        for msg, _ in done:
            self.source.ack(msg)
        if self.forwarders is not None:
            self.forwarders.wake()

    def _acknowledge(self, done: Sequence[Done], pairs: dict[str, SafePair] | None) -> None:
        """The commit's acknowledgements, one per node and boot however many of its batches the
        commit holds (acks.merge); in a region with its node's safe pair (None: not a region)."""
        for ack in merge(a for _, a in done if a is not None):
            payload = (ack.payload(self.store.db_id) if pairs is None
                       else ack.payload(self.store.db_id, pairs.get(ack.node)))
            try:
                self.source.publish(self.topics.ack(ack.node), payload)
            except Exception:  # one odd topic must not hold back the broker's acks below
                log.exception("could not acknowledge boot %d to node %r", ack.boot, ack.node)

    def _refused(self, group: Sequence[Inbound]) -> None:
        for msg in group:
            self.source.ack(msg)

    def __enter__(self) -> "Gateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def can_open_socket() -> str | None:
    """None if the process can open a TCP socket now, else why not (out of descriptors, say)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


#: the soft limit of open files the gateway asks for at start (the hard limit permitting): the
#: status server keeps at most Limits.max_connections (64) of them, far below either
FILES_SOFT = 8192


def raise_open_files(want: int = FILES_SOFT) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit toward `want` (never above the hard limit, never lower
    it); returns (soft before, soft now). systemd gives services 1024 unless the unit says more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as e:
            log.warning("open files: cannot raise the soft limit from %d to %d: %s", soft, target, e)
            return soft, soft
        log.info("open files: soft limit raised from %d to %d (hard limit %s)", soft, target,
                 "unlimited" if hard == resource.RLIM_INFINITY else hard)
        return soft, target
    return soft, soft


def run(config: Config, path: Path | None = None, notifier: Notifier | None = None) -> int:
    """Run until SIGTERM or SIGINT (main thread only). SIGHUP reads the configuration at `path`
    again: a valid new one replaces the running gateway (stop commits and acknowledges all it
    received; the broker's session keeps what arrives meanwhile), an invalid one is logged and the
    gateway goes on with the old. Under systemd it reports READY, RELOADING, STOPPING and feeds the
    watchdog only while the gateway makes progress."""
    sd = notifier or Notifier()
    stop = threading.Event()
    reload = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received", signal.Signals(signum).name)
        (reload if signum == signal.SIGHUP else stop).set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    memory.fix_mmap_threshold()  # before the threads: RSS comes back down after large messages
    raise_open_files()
    gateway = Gateway(config)
    try:
        gateway.start()
    except StartupError:
        gateway.store.close()
        raise
    sd.ready(f"store {config.store.path}")
    tick = min(1.0, sd.watchdog_s / 4) if sd.watchdog_s else 1.0
    try:
        while not stop.wait(tick):
            if reload.is_set():
                reload.clear()
                gateway = _reload(gateway, path, sd)
            if sd.watchdog_s and gateway.progressing(sd.watchdog_s / 2):
                sd.watchdog()
    finally:
        sd.stopping()
        gateway.stop()
    return 0


def _reload(gateway: Gateway, path: Path | None, sd: Notifier) -> Gateway:
    if path is None:
        log.warning("SIGHUP: no configuration file to read again")
        return gateway
    try:
        new = configuration.load(path)
    except ConfigError as e:
        log.error("SIGHUP: %s is not valid, going on with the old configuration: %s", path, e)
        return gateway
    if new == gateway.config:
        log.info("SIGHUP: %s has not changed", path)
        return gateway
    sd.reloading()
    log.info("SIGHUP: applying %s", path)
    logging.getLogger().setLevel(new.log.level_number)
    # The same store stays open: reopening it would run quick_check over the whole file (minutes
    # for a large store on an SD card) while nothing is ingested and the watchdog is not fed.
    same = new.store.path == gateway.config.store.path
    gateway.stop(close_store=not same)
    old = gateway
    gateway = Gateway(new, store=old.store if same else None)
    try:
        gateway.start()
    except StartupError as e:  # the old configuration's port was let go a moment ago: take it again
        log.error("SIGHUP: %s; going on with the old configuration", e)
        if not same:
            gateway.store.close()
        gateway = Gateway(old.config, store=old.store if same else None).start()
    sd.ready(f"store {gateway.config.store.path}")
    return gateway
