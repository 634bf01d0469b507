"""Each node's state over the air, as the status page, /api/nodes, /metrics and `meetkit-gateway
fleet status` show it: its mode, its configuration wanted versus running (and what it refused,
and why; a configuration on trial, or reverted by the node), its last crash report, its last
self-test.

Read from the store in one go (`states`). What a node wrote itself (a refusal's reason, a
traceback, a self-test's details) passes through `FleetSecrets.redact` first: a password the
gateway knows never reaches a page, a log or a terminal, even if a node were to echo one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fleet_secrets import FleetSecrets
from .store import EventRow, Store


@dataclass(frozen=True)
class ConfigState:
    wanted: int | None  # the version the node is sent; None: the register sets nothing for it
    running: int | None  # the version it says it runs (status `cfg`, config events); None: not said
    published: bool  # the broker took the wanted version (retained)
    problem: str | None  # why the wanted configuration is held back
    shown: dict[str, Any]  # the wanted configuration, without passwords
    last: dict[str, Any] | None  # the node's latest config event but a proof: version, at, applied, refused / state, reason
    # the wanted version's trial: the taken event (with trial_s) while it runs on trial; the
    # "reverted" event when the node put its previous configuration back (it runs `back_to`)
    trial: dict[str, Any] | None = None
    reverted: dict[str, Any] | None = None

    @property
    def behind(self) -> bool:
        """The node does not run the wanted version (yet, or ever: `reverted`)."""
        return bool(self.wanted) and (self.running is None or self.running < (self.wanted or 0))


@dataclass(frozen=True)
class NodeState:
    node: str
    mode: str | None = None  # normal, trial, safe
    config: ConfigState | None = None
    crash: dict[str, Any] | None = None  # the latest crash report: at, boot, at_up, count, trace
    crashes: int = 0  # crash reports kept
    safe_mode: dict[str, Any] | None = None  # the latest safe_mode event: at, crashes
    selftest: dict[str, Any] | None = None  # the latest self-test: id, at, checks / state, reason
    cmd_refused: dict[str, Any] | None = None  # the latest command the node did not take: at, reason, id
    extra: dict[str, Any] = field(default_factory=dict)


def _clean(v: Any, secrets: FleetSecrets | None) -> Any:
    """`v` with every string passed through `secrets.redact`."""
    if secrets is None:
        return v
    if isinstance(v, str):
        return secrets.redact(v)
    if isinstance(v, list):
        return [_clean(x, secrets) for x in v]
    if isinstance(v, dict):
        return {_clean(k, secrets): _clean(x, secrets) for k, x in v.items()}
    return v


def _shown(e: EventRow | None, secrets: FleetSecrets | None) -> dict[str, Any] | None:
    if e is None:
        return None
    body = {k: v for k, v in e.body.items() if k not in ("v", "node", "kind")}
    return {"at": e.at, **_clean(body, secrets)}


def _first(events: dict[str, list[EventRow]], node: str) -> EventRow | None:
    rows = events.get(node)
    return rows[0] if rows else None


#: config events read per node: enough to find the latest taken one behind a trial's end
CONFIG_EVENTS = 8


def _trial(rows: list[EventRow], wanted: int | None, running: int | None) -> tuple[
        EventRow | None, EventRow | None, EventRow | None]:
    """(the latest config event but a proof, the wanted version's taken event while it is on trial,
    the wanted version's "reverted" event), from a node's config events, newest first."""
    last = next((e for e in rows if e.state != "proved"), None)
    trial = reverted = None
    for e in rows:
        if e.body.get("version") != wanted or wanted is None:
            continue
        if e.state in ("proved", "reverted"):
            reverted = e if e.state == "reverted" else None
            break
        if e.state is None:
            trial = e if "trial_s" in e.body and running == wanted else None
            break
    return last, trial, reverted


def states(store: Store, secrets: FleetSecrets | None = None) -> dict[str, NodeState]:
    """Every node the store knows anything of over the air, by id (one snapshot)."""
    with store.snapshot():
        nodes = store.nodes()
        configs = store.node_configs()
        last = {k: store.latest_events(k) for k in ("crash", "safe_mode", "selftest", "cmd")}
        last["config"] = store.latest_events("config", CONFIG_EVENTS)
        crash_counts = {n: store.event_count("crash", n) for n in last["crash"]}
    running = {n.node: n.cfg for n in nodes}
    modes = {n.node: n.mode for n in nodes}
    out: dict[str, NodeState] = {}
    for node in sorted({n.node for n in nodes} | set(configs) | {n for ev in last.values() for n in ev}):
        row = configs.get(node)
        wanted = (row.version or None) if row is not None else None
        cfg_event, trial, reverted = _trial(last["config"].get(node, []), wanted, running.get(node))
        config = None
        if row is not None or running.get(node) is not None or cfg_event is not None:
            config = ConfigState(
                wanted=wanted, running=running.get(node),
                published=row is not None and row.version > 0 and row.published_at is not None,
                problem=row.problem if row is not None else None,
                shown=row.shown if row is not None else {}, last=_shown(cfg_event, secrets),
                trial=_shown(trial, secrets), reverted=_shown(reverted, secrets))
        out[node] = NodeState(node, modes.get(node), config, _shown(_first(last["crash"], node), secrets),
                              crash_counts.get(node, 0), _shown(_first(last["safe_mode"], node), secrets),
                              _shown(_first(last["selftest"], node), secrets),
                              _shown(_first(last["cmd"], node), secrets))
    return out


def as_json(s: NodeState) -> dict[str, Any]:
    """What /api/nodes carries of a node's state over the air."""
    c = s.config
    return {
        "mode": s.mode,
        "config": None if c is None else {
            "wanted": c.wanted, "running": c.running, "behind": c.behind, "published": c.published,
            "problem": c.problem, "shown": c.shown, "last": c.last, "trial": c.trial, "reverted": c.reverted},
        "crash": s.crash, "crashes": s.crashes, "safe_mode": s.safe_mode, "selftest": s.selftest,
        "cmd_refused": s.cmd_refused,
    }
