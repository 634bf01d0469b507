"""`meetkit-gateway fleet`: the fleet over the air, for an operator at the gateway.

    meetkit-gateway fleet status   --config gateway.toml [--node ID] [--rollouts]
    meetkit-gateway fleet selftest NODE --config gateway.toml [--wait S]
    meetkit-gateway fleet update|stop ...      (rolloutcli.py: rollouts of releases)

`status` prints a line per node (mode, firmware, configuration wanted and running, the latest
crash and self-test), then the newest rollout (rolloutcli.py; `--rollouts`: the last 20), and under
each node what needs a look (its part in the newest rollout too): a configuration held back and why, the keys
the node refused and its reasons, the last lines of a crash's traceback, a failed self-test item.
Nothing secret: the configuration is shown without its passwords, what a node wrote passes
through the secrets files' redaction.

`selftest` asks the running gateway (through the store's `commands`) to send the node the signed
`selftest` command, and waits up to `--wait` seconds (default 60, at most configpub.COMMAND_TTL_S)
for the node's answer, which the gateway stores as an event: the checklist the node prints at
start. A command the broker had not taken when the wait ends is taken back.

Exit status: 0 done (status; selftest: every item passed); 1 the configuration or store cannot be
used, the gateway cannot send the command (no node key: said at once), or the self-test failed an
item or was refused; 2 wrong usage; 3 no answer within the wait.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from . import rolloutcli
from .config import Config
from .configpub import COMMAND_TTL_S
from .fleet_secrets import FleetSecrets
from .fleet_status import NodeState, states
from .payload import NODE_ID
from .store import EventRow, Store, StoreError
from .table import render
from .timefmt import iso

#: how often `selftest` looks for the answer in the store
POLL_S = 0.25
#: lines of a crash's traceback `status` prints (its last: the exception)
TRACE_LINES = 3
#: a section of `fleet status` per node, besides this module's: (node, state) -> lines; the release
#: side adds its own (the rollout a node is in)
SECTIONS: list[Callable[[str, NodeState, Store], list[str]]] = [
    lambda node, state, store: rolloutcli.node_lines(node, store),
]


def add_parser(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    f = sub.add_parser("fleet", help="the fleet over the air: configuration, crashes, self-tests",
                       description="The fleet over the air (docs/operator.md, \"Remote configuration\").")
    fs = f.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    st = fs.add_parser("status", help="per node: mode, configuration wanted and running, crashes, self-test")
    common(st)
    st.add_argument("--node", help="only this node")
    st.add_argument("--rollouts", action="store_true", help="every rollout (the last 20), not only the newest")
    se = fs.add_parser("selftest", help="ask a node for its self-test and show its answer")
    common(se)
    se.add_argument("node", metavar="NODE")
    se.add_argument("--wait", type=float, default=60.0, metavar="S",
                    help=f"seconds to wait for the answer (default 60, at most {COMMAND_TTL_S:.0f})")
    rolloutcli.add_fleet_parsers(fs, common)


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.fleet_command == "selftest":
        return selftest(cfg, args.node, args.wait)
    if args.fleet_command in ("update", "stop"):
        return args.run(cfg, args)  # rolloutcli.py
    return status(cfg, args.node, args.rollouts)


def _secrets(cfg: Config) -> FleetSecrets:
    return FleetSecrets(cfg.fleet_files.secrets, cfg.fleet_files.broker_secrets)


def _version(v: int | None) -> str:
    return "-" if v is None else str(v)


def _config_cell(s: NodeState) -> str:
    c = s.config
    if c is None:
        return "-"
    text = f"{_version(c.wanted)} / {_version(c.running)}"
    if c.problem:
        return text + " held back"
    if c.wanted is None and c.running is None:
        return "-"
    if c.reverted is not None and c.behind:
        return text + " reverted"
    if c.behind:
        return text + (" sent" if c.published else " to send")
    if c.trial is not None:
        return text + " on trial"
    return text


def _crash_cell(s: NodeState) -> str:
    if s.crash is None:
        return "-"
    how = f"{s.crash['count']} in a row" if s.crash["count"] else "while measuring"
    return f"{iso(s.crash['at'])} ({how})"


def _selftest_cell(s: NodeState) -> str:
    t = s.selftest
    if t is None:
        return "-"
    if "checks" not in t:
        return f"{iso(t['at'])} refused"
    failed = [k for k, (r, _) in t["checks"].items() if r != "pass"]
    return f"{iso(t['at'])} " + (f"FAILED {', '.join(failed)}" if failed else f"{len(t['checks'])} passed")


def details(s: NodeState, full: bool = False) -> list[str]:
    """What needs a look, one line each; `full`: the wanted configuration also when the node runs it."""
    out: list[str] = []
    c = s.config
    if c is not None:
        if c.problem:
            out.append(f"config held back: {c.problem}")
        if c.shown and (full or c.behind):
            out.append("config wanted: " + ", ".join(f"{k} {_value(v)}" for k, v in c.shown.items()))
        r = c.reverted
        if r is not None and c.behind:
            out.append(f"config {r['version']} REVERTED by the node at {iso(r['at'])}: {r['reason']}; it runs "
                       f"{r['back_to']} again and will not take {r['version']}: change the register to send a new version")
        if c.trial is not None:
            out.append(f"config {c.trial['version']} on trial since {iso(c.trial['at'])}: reverted by the node "
                       f"unless a batch is acknowledged within {c.trial['trial_s']} s")
        last = c.last
        if last is not None and last.get("state") == "reverted":
            pass  # said above while it holds; an older one is history
        elif last is not None:
            if "state" in last:
                out.append(f"config refused whole at {iso(last['at'])}: {last.get('reason')}")
            else:
                took = ", ".join(last.get("applied", [])) or "nothing"
                out.append(f"config {last.get('version')} taken at {iso(last['at'])}: applied {took}")
                for key, why in last.get("refused", {}).items():
                    out.append(f"  refused {key}: {why}")
    if s.crash is not None:
        lines = [ln for ln in str(s.crash.get("trace", "")).splitlines() if ln.strip()]
        kept = f"{s.crashes} report{'s' if s.crashes != 1 else ''} kept"
        out.append(f"crash in boot {s.crash['boot']} after {s.crash['at_up']} s ({kept}):")
        out += [f"  {ln.strip()}" for ln in lines[-TRACE_LINES:]]
    if s.safe_mode is not None and s.mode == "safe":
        out.append(f"safe mode since {iso(s.safe_mode['at'])} after {s.safe_mode['crashes']} crashes in a row: "
                   "measuring nothing until a new release or configuration arrives")
    r = s.cmd_refused
    if r is not None:
        out.append(f"command {r.get('id', '?')} refused at {iso(r['at'])}: {r.get('reason')}")
    t = s.selftest
    if t is not None:
        if "checks" not in t:
            out.append(f"self-test {t.get('id', '?')} refused: {t.get('reason')}")
        for item, (result, detail) in t.get("checks", {}).items():
            if result != "pass":
                out.append(f"self-test {item}: {result}: {detail}")
    return out


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)


def status(cfg: Config, node: str | None, rollouts: bool = False) -> int:
    try:
        store = Store(cfg.store.path, readonly=True)
    except StoreError as e:
        print(e, file=sys.stderr)
        return 1
    with store:
        air = states(store, _secrets(cfg))
        fw = {n.node: n.fw for n in store.nodes()}
        if node is not None:
            if node not in air:
                print(f"no node {node!r} in {cfg.store.path}; known: {', '.join(air) or 'none yet'}", file=sys.stderr)
                return 1
            air = {node: air[node]}
        if not air:
            print(f"no nodes in {cfg.store.path} yet")
            rolloutcli.print_rollouts(store, every=rollouts)
            return 0
        rows = [(n, s.mode or "-", fw.get(n) or "-", _config_cell(s), _crash_cell(s), _selftest_cell(s))
                for n, s in air.items()]
        print(render(("node", "mode", "fw", "config wanted / running", "last crash (UTC)", "self-test (UTC)"), rows,
                     (False,) * 6))
        for n, s in air.items():
            lines = details(s, full=node is not None) + [ln for section in SECTIONS for ln in section(n, s, store)]
            if lines:
                print(f"\n{n}")
                for ln in lines:
                    print(f"  {ln}")
        if node is None:
            print()
            rolloutcli.print_rollouts(store, every=rollouts)
    return 0


def _answer_lines(e: EventRow) -> tuple[list[str], bool]:
    """The self-test answer as printed, and whether every item passed."""
    if e.state == "refused":
        return [f"refused by the node: {e.body.get('reason')}"], False
    checks = e.body.get("checks", {})
    width = max((len(k) for k in checks), default=0)
    lines = [f"  {k:<{width}}  {r:<4}  {d}" for k, (r, d) in checks.items()]
    return lines, all(r == "pass" for r, _ in checks.values())


def selftest(cfg: Config, node: str, wait: float) -> int:
    if not 0 < wait <= COMMAND_TTL_S:
        print(f"--wait: must be above 0 and at most {COMMAND_TTL_S:.0f} s, got {wait:g}", file=sys.stderr)
        return 2
    if not NODE_ID.fullmatch(node):
        print(f"{node!r}: not a node id ([a-z0-9-], 1 to 32 characters)", file=sys.stderr)
        return 2
    if not cfg.store.path.exists():
        print(f"{cfg.store.path}: no store there (has the gateway run yet?)", file=sys.stderr)
        return 1
    secrets = _secrets(cfg)
    try:
        store = Store(cfg.store.path)
    except StoreError as e:
        print(e, file=sys.stderr)
        return 1
    with store:
        cid = store.add_command(node, "selftest", time.time())
        print(f"asked {node} for its self-test (command {cid}); waiting up to {wait:g} s for the answer")
        deadline = time.monotonic() + wait
        said_sent = False
        while True:
            answer = store.answer(node, "selftest", cid)
            if answer is not None:
                lines, ok = _answer_lines(answer)
                print(f"{node} answered at {iso(answer.at)}:")
                for ln in lines:
                    print(secrets.redact(ln))
                return 0 if ok else 1
            c = store.command(cid)
            if c is not None and c.sent_at is not None and not said_sent:
                print(f"sent at {iso(c.sent_at)} (the broker took it)")
                said_sent = True
            if c is not None and c.problem and c.sent_at is None:  # no key for it: waiting would not help
                taken_back = store.withdraw_command(cid)
                print(f"the gateway cannot send it: {c.problem}" + ("; taken back" if taken_back else ""),
                      file=sys.stderr)
                return 1
            if c is not None and c.sent_at is not None:
                unread = [e for e in store.refused_commands(node, c.at) if "id" not in e.body]
                if unread:  # a command it could not read (a bad MAC): ours, most likely
                    print(f"{node} refused a command it could not read at {iso(unread[-1].at)}: "
                          f"{secrets.redact(str(unread[-1].body.get('reason')))}", file=sys.stderr)
                    return 1
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)  # waits on the node's answer in the store, up to the deadline
        withdrawn = store.withdraw_command(cid)
    why = ("the gateway never sent it (is it running? `meetkit-gateway check`); taken back" if withdrawn
           else "it was sent: is the node online? its answer is kept and shown by `fleet status` if it comes")
    print(f"no answer from {node} within {wait:g} s: {why}", file=sys.stderr)
    return 3
