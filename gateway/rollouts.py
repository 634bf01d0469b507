"""Staged rollouts of a signed release: canaries first, then waves, halting by themselves when a
node fails (docs/operator.md, "Running the fleet over the air").

`meetkit-gateway fleet update` writes a rollout into the store (`plan` decides its stages); the
running gateway's `RolloutManager`, a thread with a store connection of its own, does it, one step
a second:

1. It takes the nodes' OTA events the writer stored since the last step (`Store.events(kind="ota")`,
   the rollout's own cursor), of the rollout's release, from nodes it offered it to:
   `accepted`, `installed`, `proved` move the node on; `rolled_back`, or `refused` for a reason
   other than "already runs it" (its status says the release), fail it.
2. A node that proved the release and whose status says it (`fw`) is done. One that accepted and
   has not proved within `[ota] prove_within_s` fails. One that has answered none of its offers
   within `[ota] answer_within_s` of the first is skipped, with why: not heard since (away: no
   power, no Wi-Fi), or heard but silent (its firmware or its ota topic). Skipping is not failing:
   the rollout goes on without it, and a skipped node is offered nothing more in this rollout (a
   later `fleet update` of the same release offers it to whoever does not run it). A node offered
   again after a gateway restart is never skipped before it had a whole `offer_every_s` to answer
   an offer of this run (the events queued meanwhile are in).
3. Any failed node halts the rollout: no node is offered the release any more, no piece is served
   for it, the `rollout_halted` alarm is raised, and the page, /metrics and `fleet status` say why.
   So does a canary stage whose every offered canary was skipped: the waves are never offered a
   release no node has proved.
4. When every node of the stage under way is done (or skipped), the next stage starts; after the
   last, the rollout is done ("2 nodes skipped: ..." when some were).
5. The nodes of the stage under way are offered the release (the manifest in the node's signed
   envelope), and offered again every `[ota] offer_every_s` until they answer: nodes come and go.
   Only nodes offered the release and not yet past "accepted" get its pieces (ota.py).

A node may say `proved` twice for the same release (a power cut after the event went out and
before the node removed its note, app.proved): the second changes nothing. A `proved` that comes
after the rollout halted (a node that stayed silent past `prove_within_s`, then came back and said
it: its note survives any power cut) is shown, not taken: the node's row and the rollout's reason
say when it proved (`late`), and the rollout stays halted: a halt is the operator's to end (a new
`fleet update` of the release takes the node as done, it runs the release).

Everything is in the store (rollouts, rollout_nodes): a restarted gateway goes on where it was,
events that arrived meanwhile included. The release is verified again (signature and every file)
when the manager first needs it, and what is served is what was verified.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .alarms import ROLLOUT_HALTED, Alarms
from .config import OtaConfig
from .releases import Release, ReleaseError, Releases, load_public_key, version_key
from .signed import NodeKeys, envelope
from .store import EventRow, RolloutNodeRow, RolloutRow, Store
from .timefmt import iso

log = logging.getLogger(__name__)

NODE_STATES = ("waiting", "offered", "accepted", "installed", "proved", "done", "failed", "skipped")
ROLLOUT_STATES = ("running", "done", "halted", "stopped")
FETCHING = ("offered", "accepted")  # the states in which a node gets pieces
FINAL = ("done", "failed", "skipped")
PAST = ("done", "skipped")  # the states that let the next stage start
ALREADY = "already runs it"
TICK_S = 1.0


class PlanError(Exception):
    """The rollout cannot be made as asked; `problems` names each node and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Plan:
    nodes: list[tuple[str, int, str, str | None]] = field(default_factory=list)  # (node, stage, state, reason)
    stages: int = 0

    def stage_of(self, stage: int) -> list[str]:
        return [n for n, s, state, _ in self.nodes if s == stage and state == "waiting"]


def plan(release: Release, nodes: list[str], fw: Mapping[str, str | None], boards: Mapping[str, str | None],
         canary: int, wave: int, force: bool) -> Plan:
    """The stages of a rollout of `release` to `nodes` (in their order): the first `canary` nodes
    that do not run it yet, then waves of `wave`. A node that runs it already is done at once. A
    node whose board the release is not for, or that runs a newer release (a downgrade, unless
    `force`), is a problem: PlanError names every one and nothing is planned."""
    problems: list[str] = []
    target = version_key(release.version)
    todo: list[str] = []
    out = Plan()
    for node in dict.fromkeys(nodes):
        board, runs = boards.get(node), fw.get(node)
        if board is not None and board not in release.boards:
            problems.append(f"{node}: board {board} is not one the release is for ({', '.join(release.boards)})")
            continue
        try:
            running = version_key(runs) if runs else None
        except ValueError:
            running = None  # an odd version string: the node judges for itself
        if running == target:
            out.nodes.append((node, 0, "done", ALREADY))
            continue
        if running is not None and running > target and not force:
            problems.append(f"{node}: runs {runs}, newer than {release.version}: a downgrade needs --force")
            continue
        todo.append(node)
    if problems:
        raise PlanError(problems)
    for i, node in enumerate(todo):
        stage = 0 if i < canary else 1 + (i - canary) // wave
        out.nodes.append((node, stage, "waiting", None))
    out.stages = 1 + max((s for _, s, _, _ in out.nodes), default=0)
    return out


def stage_name(stage: int) -> str:
    return "canary" if stage == 0 else f"wave {stage}"


class RolloutManager:
    """Runs the rollout under way, if any (see the module's docstring). `offer(node, payload)`
    publishes a signed offer; `serve(map)` says which node may fetch which release."""

    def __init__(self, store_path: Path, ota: OtaConfig, keys: NodeKeys, offer: Callable[[str, bytes], object],
                 serve: Callable[[Mapping[str, Release]], None], alarms: Alarms, tick_s: float = TICK_S) -> None:
        self.store_path = Path(store_path)
        self.ota = ota
        self.keys = keys
        self.offer = offer
        self.serve = serve
        self.alarms = alarms
        self.tick_s = tick_s
        self._releases: dict[str, Release] = {}
        self._cleared_for: int | None = None  # the rollout the halted alarm was looked at for
        self.started = time.time()  # offers made before it do not count towards skipping a node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)

    def start(self) -> "RolloutManager":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            store = Store(self.store_path)
        except Exception:
            log.exception("rollouts: cannot open the store %s; no rollout is run", self.store_path)
            return
        try:
            while not self._stop.is_set():
                try:
                    self.step(store, time.time())
                except Exception:  # a locked store, a bug: said, and tried again next tick
                    log.exception("rollouts: a step failed; trying again")
                self._stop.wait(self.tick_s)
        finally:
            self.serve({})
            store.close()

    # -- one step --------------------------------------------------------------------------------

    def release(self, version: str) -> Release:
        """The kept release `version`, verified (once per gateway run)."""
        if version not in self._releases:
            keys = [load_public_key(p) for p in self.ota.release_keys]
            self._releases[version] = Releases(self.ota.releases, keys).get(version)
            log.info("release %s verified (signed by %s): %d files, %d bytes", version,
                     self._releases[version].signed_by, len(self._releases[version].data),
                     self._releases[version].size)
        return self._releases[version]

    def step(self, store: Store, now: float) -> None:
        """One look at the rollout under way: read what happened, decide in memory, and write (in
        one transaction) only when something changes, so an idle rollout costs the writer nothing."""
        r = store.running_rollout()
        if r is None:
            self.serve({})
            self._after_halt(store, now)
            return
        if self._cleared_for != r.id:
            self._cleared_for = r.id
            if any(a.code == ROLLOUT_HALTED for a in store.active_alarms()):
                self.alarms.clear(ROLLOUT_HALTED, f"rollout {r.id} of release {r.release} started")
        try:
            release = self.release(r.release)
        except ReleaseError as e:
            store.update_rollout(r.id, now, state="halted", reason=f"release {r.release} cannot be used: {e}")
            self._halted(r, f"release {r.release} cannot be used: {e}")
            return
        nodes = {n.node: RolloutNode.of(n) for n in store.rollout_nodes(r.id)}
        known = store.nodes()
        fw = {n.node: n.fw for n in known}
        heard = {n.node: n.last_seen for n in known}
        events = store.events(kind="ota", since_id=r.events_seen, limit=1000)
        d = decide(r, nodes, fw, events, now, self.ota, heard, self.started)
        offers: list[tuple[str, bytes]] = []
        keys = {node: self.keys.key(node) for node in d.offer}
        for node, key in keys.items():  # a node without a key: nothing is offered to anyone
            if key is None:
                why = f"not offered: {self.keys.problem(node)}"
                nodes[node].fail(why)
                d.failed.append(f"{node} ({stage_name(nodes[node].stage)}) {why}")
        if not d.failed:
            for node, key in keys.items():
                assert key is not None
                body = {"node": node, "release": release.manifest, "force": r.force}
                offers.append((node, envelope(key, body)))
                nodes[node].state, nodes[node].offered_at, nodes[node].offers = "offered", now, nodes[node].offers + 1
                if nodes[node].first_offered_at is None:
                    nodes[node].first_offered_at = now
        state = "halted" if d.failed else d.state
        reason = "; ".join(d.failed) if d.failed else d.reason
        changed = [n for n in nodes.values() if n.changed]
        if changed or state != r.state or d.stage != r.stage or d.events_seen != r.events_seen:
            with store.transaction():
                for n in changed:
                    store.set_rollout_node(r.id, n.node, n.state, n.reason, n.offers, n.offered_at, n.accepted_at, now,
                                           n.first_offered_at)
                store.update_rollout(r.id, now, state=state, stage=d.stage, reason=reason, events_seen=d.events_seen)
        if d.failed:
            self._halted(r, reason or "")
            return
        for node, payload in offers:  # after the commit: an offer lost in a crash is sent again
            self.offer(node, payload)
        self.serve({n.node: release for n in nodes.values() if n.state in FETCHING} if state == "running" else {})

    def _after_halt(self, store: Store, now: float) -> None:
        """The newest rollout, when halted: the proofs that came after its halt are shown (`late`)."""
        rows = store.rollouts(limit=1)
        if not rows or rows[0].state != "halted":
            return
        r = rows[0]
        events = store.events(kind="ota", since_id=r.events_seen, limit=1000)
        if not events:
            return
        nodes = {n.node: RolloutNode.of(n) for n in store.rollout_nodes(r.id)}
        said = late(r, nodes, events)
        with store.transaction():
            for n in nodes.values():
                if n.changed:
                    store.set_rollout_node(r.id, n.node, n.state, n.reason, n.offers, n.offered_at, n.accepted_at,
                                           now, n.first_offered_at)
            store.update_rollout(r.id, now, events_seen=events[-1].id,
                                 reason="; ".join([r.reason or "", *said]) if said else None)

    def _halted(self, r: RolloutRow, reason: str) -> None:
        self.serve({})
        self.alarms.raise_(ROLLOUT_HALTED, f"rollout {r.id} of release {r.release} halted: {reason}; no other node "
                           "is offered it (`meetkit-gateway fleet status`)")


@dataclass
class RolloutNode:
    """A node of the rollout as the step sees it; `changed` once the step changed it."""

    node: str
    stage: int
    state: str
    reason: str | None
    offers: int
    offered_at: float | None
    accepted_at: float | None
    first_offered_at: float | None = None
    _was: tuple[object, ...] = ()

    @classmethod
    def of(cls, row: RolloutNodeRow) -> "RolloutNode":
        n = cls(row.node, row.stage, row.state, row.reason, row.offers, row.offered_at, row.accepted_at,
                row.first_offered_at)
        n._was = n._key()
        return n

    def _key(self) -> tuple[object, ...]:
        return (self.state, self.reason, self.offers, self.offered_at, self.accepted_at, self.first_offered_at)

    @property
    def changed(self) -> bool:
        return self._key() != self._was

    def fail(self, why: str) -> None:
        self.state, self.reason = "failed", why


@dataclass
class Decision:
    state: str  # the rollout's, unless something failed (then it halts)
    stage: int
    events_seen: int
    failed: list[str] = field(default_factory=list)  # "<node> (<stage>) <why>", each halts the rollout
    offer: list[str] = field(default_factory=list)  # nodes to offer the release to now
    skipped: list[str] = field(default_factory=list)  # nodes skipped in this step
    reason: str | None = None  # how a rollout that is done ended, when not every node runs the release


_STEPS = {"offered": 0, "accepted": 1, "installed": 2, "proved": 3}
_LATE = "after it was skipped"


def unanswered(n: RolloutNode, now: float, ota: OtaConfig, since: float) -> bool:
    """`n` has answered none of its offers within `answer_within_s` of the first, and has had a
    whole `offer_every_s` to answer the latest, sent after `since` (this gateway run's start: what
    the node sent while the gateway was away is in by then)."""
    return (n.state == "offered" and n.first_offered_at is not None and n.offered_at is not None
            and now - n.first_offered_at >= ota.answer_within_s
            and n.offered_at >= since and now - n.offered_at >= ota.offer_every_s)


def skip_reason(n: RolloutNode, heard: float | None, ota: OtaConfig) -> str:
    """Why `n` is skipped: away (not heard since its first offer), or there but silent."""
    offers = f"{n.offers} offer{'s' if n.offers != 1 else ''}"
    first = n.first_offered_at or 0.0
    if heard is None:
        return f"never heard, no answer to {offers} in {ota.answer_within_s:.0f} s"
    if heard < first:
        return f"not heard since {iso(heard)}, no answer to {offers} in {ota.answer_within_s:.0f} s"
    return (f"heard at {iso(heard)} but no answer to {offers} in {ota.answer_within_s:.0f} s (does its "
            "firmware take offers? is its ota topic in the broker's ACL?)")


def late(r: RolloutRow, nodes: dict[str, RolloutNode], events: list[EventRow]) -> list[str]:
    """The `proved` events of `r`'s release that came after `r` halted, from its nodes: a node that
    failed (past `prove_within_s`, say) keeps its state, and its reason says when it proved; one the
    halt caught on its way (offered, accepted, installed) is "proved". `nodes` are changed in place;
    returned: a line for the rollout's reason per failed node that proved."""
    out: list[str] = []
    for e in events:
        n = nodes.get(e.node)
        if n is None or e.state != "proved" or e.body.get("release") != r.release:
            continue
        if n.state == "failed" and _LATE_PROOF not in (n.reason or ""):
            n.reason = f"{n.reason}; proved at {iso(e.at)}, {_LATE_PROOF}"
            out.append(f"{n.node} proved it at {iso(e.at)}, {_LATE_PROOF}")
            log.warning("rollout %d: %s proved %s at %s, %s", r.id, n.node, r.release, iso(e.at), _LATE_PROOF)
        elif n.state in ("offered", "accepted", "installed"):
            n.state = "proved"
            log.info("rollout %d: %s proved %s after the rollout halted", r.id, n.node, r.release)
    return out


_LATE_PROOF = "after the rollout halted (late; it stays halted)"


def decide(r: RolloutRow, nodes: dict[str, RolloutNode], fw: Mapping[str, str | None], events: list[EventRow],
           now: float, ota: OtaConfig, heard: Mapping[str, float | None] | None = None,
           since: float = 0.0) -> Decision:
    """What the rollout's step does, in memory: `nodes` are changed in place; the rest is returned.
    `heard`: when each node was last heard (the store's `last_seen`); `since`: when this gateway
    run's rollout manager started."""
    heard = heard or {}
    d = Decision(r.state, r.stage, r.events_seen)
    for e in events:  # 1. the events
        d.events_seen = e.id
        n = nodes.get(e.node)
        if n is None or n.state == "waiting":
            continue  # not offered in this rollout
        if e.body.get("release", r.release) != r.release:
            continue  # about another release (an earlier rollout's)
        if n.state == "skipped" and e.state and _LATE not in (n.reason or ""):
            # back, answering an offer it got before: said, not taken (it is past this rollout)
            n.reason = f"{n.reason}; answered {e.state} at {iso(e.at)} {_LATE}: not served in this rollout"
            log.warning("rollout %d: %s %s %s %s; it is not served in this rollout", r.id, n.node, e.state,
                        r.release, _LATE)
            continue
        if n.state in FINAL:
            continue  # past it
        state, reason = e.state, e.body.get("reason")
        if state in ("accepted", "installed", "proved"):
            if _STEPS[state] > _STEPS.get(n.state, 0):
                n.state = state
                if n.accepted_at is None:
                    n.accepted_at = e.at
                log.info("rollout %d: %s %s %s", r.id, n.node, state, r.release)
            continue
        if state == "refused" and fw.get(n.node) == r.release:
            n.state, n.reason = "done", ALREADY
            continue
        if state == "refused":
            why = f"refused: {reason or 'no reason given'}"
        elif state == "rolled_back":
            why = f"rolled back to {e.body.get('back_to', '?')}: {reason or 'no reason given'}"
        else:
            continue
        n.fail(why)
        d.failed.append(f"{n.node} ({stage_name(n.stage)}) {why}")
    for n in nodes.values():  # 2. done by the status, too late, or no answer
        if n.state == "proved" and fw.get(n.node) == r.release:
            n.state = "done"
            log.info("rollout %d: %s runs %s, proved", r.id, n.node, r.release)
        elif n.state in ("accepted", "installed", "proved") and n.accepted_at is not None \
                and now - n.accepted_at > ota.prove_within_s:
            why = (f"not proved within {ota.prove_within_s:.0f} s of accepting it (last: {n.state}"
                   + (f", its status says {fw.get(n.node)}" if n.state == "proved" else "") + ")")
            n.fail(why)
            d.failed.append(f"{n.node} ({stage_name(n.stage)}) {why}")
        elif unanswered(n, now, ota, since):
            n.state, n.reason = "skipped", skip_reason(n, heard.get(n.node), ota)
            d.skipped.append(n.node)
            log.warning("rollout %d: %s (%s) %s; the rollout goes on without it", r.id, n.node, stage_name(n.stage),
                        n.reason)
    if d.failed:  # 3. halts
        return d
    stages = sorted({n.stage for n in nodes.values()})
    while all(n.state in PAST for n in nodes.values() if n.stage == d.stage):  # 4. the next stage
        if d.stage == 0:
            canaries = [n for n in nodes.values() if n.stage == 0 and n.offers > 0]
            if canaries and not any(n.state == "done" for n in canaries):
                d.failed.append(f"no canary proved {r.release}: {', '.join(n.node for n in canaries)} skipped; the "
                                "waves are not offered a release no node has proved (`fleet update` again once a "
                                "canary is back, or with --nodes naming canaries that are on the air)")
                return d
        later = [s for s in stages if s > d.stage]
        if not later:
            d.state = "done"
            skipped = sorted(n.node for n in nodes.values() if n.state == "skipped")
            if skipped:
                d.reason = f"{len(skipped)} node{'s' if len(skipped) != 1 else ''} skipped: {', '.join(skipped)}"
                log.info("rollout %d: done, every node but %s runs %s", r.id, ", ".join(skipped), r.release)
            else:
                log.info("rollout %d: done, every node runs %s", r.id, r.release)
            return d
        d.stage = later[0]
        log.info("rollout %d: %s of %s starts", r.id, stage_name(d.stage), r.release)
    for n in nodes.values():  # 5. the offers due
        if n.stage == d.stage and (n.state == "waiting" or (
                n.state == "offered" and (n.offered_at is None or now - n.offered_at >= ota.offer_every_s))):
            d.offer.append(n.node)
    return d
