"""`meetkit-gateway release` and the rollout commands of `meetkit-gateway fleet`
(docs/operator.md, "Running the fleet over the air"):

    meetkit-gateway release add DIR --config gateway.toml     verify a release and keep it
    meetkit-gateway release list --config gateway.toml
    meetkit-gateway fleet update --release R [--nodes a,b,...] [--canary N] [--wave M] [--force] --config ...
    meetkit-gateway fleet stop --config ...                    end the rollout under way
    meetkit-gateway fleet status [--rollouts] --config ...     (fleetcli.py; the rollouts' part here)

`fleet update` writes the rollout into the store; the running gateway's rollout manager
(rollouts.py) does it. Exit status: 0 done, 1 a problem (printed to stderr, nothing written).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, TextIO

from .config import Config
from .releases import PublicKey, ReleaseError, Releases, load_public_key
from .rollouts import PlanError, plan, stage_name
from .signed import NodeKeys
from .store import RolloutRow, Store, StoreError
from .timefmt import iso

CANARY = 1
WAVE = 10


def _keys(cfg: Config) -> list[PublicKey]:
    assert cfg.ota is not None
    return [load_public_key(p) for p in cfg.ota.release_keys]


def _need_ota(cfg: Config, what: str) -> bool:
    if cfg.ota is None:
        print(f"{what}: no [ota] in {cfg.source}: releases and rollouts need it (docs/operator.md, "
              "\"Running the fleet over the air\")", file=sys.stderr)
        return False
    return True


def release_add(cfg: Config, args: argparse.Namespace) -> int:
    if not _need_ota(cfg, "release add"):
        return 1
    assert cfg.ota is not None
    try:
        kept = Releases(cfg.ota.releases, _keys(cfg))
        r, new = kept.add(args.dir)
    except ReleaseError as e:
        print(f"release add: refused: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"release add: cannot write {cfg.ota.releases}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"release {r.version}: {len(r.files)} files, {r.size} bytes, .mpy v{r.manifest['mpy']} "
          f"{r.manifest['arch']}, boards {', '.join(r.boards)}; signed by {r.signed_by}")
    print(f"{'kept' if new else 'kept already'}: {cfg.ota.releases / r.version}")
    print(f"next: meetkit-gateway fleet update --release {r.version} --config {cfg.source}")
    return 0


def release_list(cfg: Config, args: argparse.Namespace) -> int:
    if not _need_ota(cfg, "release list"):
        return 1
    assert cfg.ota is not None
    try:
        kept = Releases(cfg.ota.releases, _keys(cfg))
    except ReleaseError as e:
        print(f"release list: {e}", file=sys.stderr)
        return 1
    versions = kept.versions()
    if not versions:
        print(f"no release kept in {cfg.ota.releases} (`meetkit-gateway release add DIR`)")
    for v in versions:
        try:
            r = kept.get(v)
            print(f"  {v:<10} {len(r.files)} files, {r.size} bytes, boards {', '.join(r.boards)}, "
                  f"signed by {r.signed_by}")
        except ReleaseError as e:
            print(f"  {v:<10} DOES NOT VERIFY: {e}")
    return 0


def _nodes(cfg: Config, store: Store, given: str | None) -> tuple[list[str], dict[str, str | None], list[str]]:
    """The nodes of the rollout (given, else the register's, else every node the store knows),
    their boards, and the problems with them."""
    from .fleet import FleetError, load

    register: dict[str, dict] = {}  # type: ignore[type-arg]
    problems: list[str] = []
    if cfg.fleet is not None:
        try:
            register = load(cfg.fleet)
        except FleetError as e:
            problems.append(f"the fleet register cannot be read: {'; '.join(e.errors)}")
    known = {n.node for n in store.nodes()}
    if given:
        nodes = [n.strip() for n in given.split(",") if n.strip()]
        problems += [f"{n}: not a node the gateway knows (the register or the store)" for n in nodes
                     if n not in known and n not in register]
    else:
        nodes = sorted(register) if register else sorted(known)
    recorded = store.node_boards()
    boards = {n: (register.get(n) or {}).get("board") or recorded.get(n) for n in nodes}
    return nodes, boards, problems


def fleet_update(cfg: Config, args: argparse.Namespace) -> int:
    if not _need_ota(cfg, "fleet update"):
        return 1
    assert cfg.ota is not None
    if args.canary < 0 or args.wave < 1:
        print("fleet update: --canary must be 0 or more, --wave 1 or more", file=sys.stderr)
        return 2
    try:
        release = Releases(cfg.ota.releases, _keys(cfg)).get(args.release)
    except ReleaseError as e:
        print(f"fleet update: {e}", file=sys.stderr)
        return 1
    if not cfg.store.path.exists():
        print(f"fleet update: no store at {cfg.store.path} (has the gateway run yet?)", file=sys.stderr)
        return 1
    try:
        store = Store(cfg.store.path)
    except StoreError as e:
        print(f"fleet update: {e}", file=sys.stderr)
        return 1
    with store:
        running = store.running_rollout()
        if running is not None:
            print(f"fleet update: rollout {running.id} of release {running.release} is under way; wait for it, or "
                  "end it with `meetkit-gateway fleet stop`", file=sys.stderr)
            return 1
        nodes, boards, problems = _nodes(cfg, store, args.nodes)
        if not nodes and not problems:
            problems.append("no nodes: none given (--nodes), none in the register, none heard of")
        path = cfg.fleet_files.node_keys
        if path is None:
            problems.append("no [fleet] node_keys in the configuration: every offer is signed with the node's key")
        elif os.access(path, os.R_OK):
            keys = NodeKeys(path)
            problems += [f"{n}: {keys.problem(n)}" for n in nodes if keys.key(n) is None]
        else:  # a credential of the service (/run/credentials/...): only the running gateway reads it
            print(f"fleet update: {path} cannot be read here; the running gateway checks each node's key (a node "
                  "without one halts the rollout)", file=sys.stderr)
        fw = {n.node: n.fw for n in store.nodes()}
        try:
            p = plan(release, nodes, fw, boards, args.canary, args.wave, args.force)
        except PlanError as e:
            problems += e.problems
        if problems:
            print(f"fleet update: nothing started, {len(problems)} problem{'s' if len(problems) != 1 else ''}:",
                  file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        rid = store.add_rollout(release.version, args.force, args.canary, args.wave, p.nodes, time.time())
        print(f"rollout {rid}: release {release.version} to {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
              + (" (forced: downgrades allowed)" if args.force else ""))
        for stage in range(p.stages):
            names = p.stage_of(stage)
            if names:
                print(f"  {stage_name(stage):<8} {', '.join(names)}")
        done = [n for n, _, state, _ in p.nodes if state == "done"]
        if done:
            print(f"  already  {', '.join(done)} (they run {release.version})")
        print("the running gateway starts it within a second; watch it: meetkit-gateway fleet status "
              f"--config {cfg.source}")
    return 0


def fleet_stop(cfg: Config, args: argparse.Namespace) -> int:
    try:
        store = Store(cfg.store.path)
    except StoreError as e:
        print(f"fleet stop: {e}", file=sys.stderr)
        return 1
    with store:
        r = store.running_rollout()
        if r is None:
            print("fleet stop: no rollout under way", file=sys.stderr)
            return 1
        store.update_rollout(r.id, time.time(), state="stopped", reason="stopped by the operator")
    print(f"rollout {r.id} of release {r.release} stopped: no node is offered it any more (nodes that installed "
          "it keep it)")
    return 0


def print_rollouts(store: Store, every: bool = False, out: TextIO = sys.stdout) -> None:
    """The rollouts (the newest, or with `every` the last 20): state, release, reason; each node's
    stage, state, offers and reason."""
    rows = store.rollouts(limit=20 if every else 1)
    if not rows:
        print("rollouts   none yet (`meetkit-gateway fleet update --release R`)", file=out)
        return
    for r in rows:
        _print_rollout(store, r, out)


def _print_rollout(store: Store, r: RolloutRow, out: TextIO) -> None:
    state = r.state.upper() if r.state == "halted" else r.state
    print(f"rollout {r.id}: release {r.release}, {state}" + (f": {r.reason}" if r.reason else "")
          + ("" if r.state != "running" else f" ({stage_name(r.stage)} under way)"), file=out)
    print(f"  started {iso(r.created_at)}, last change {iso(r.updated_at)}; canary {r.canary}, waves of {r.wave}"
          + (", forced" if r.force else ""), file=out)
    nodes = store.rollout_nodes(r.id)
    width = max([len(n.node) for n in nodes] + [4])
    print(f"  {'node':<{width}}  {'stage':<8} {'state':<9} {'offers':>6}  reason", file=out)
    for n in nodes:
        print(f"  {n.node:<{width}}  {stage_name(n.stage):<8} {n.state:<9} {n.offers:>6}  {n.reason or ''}".rstrip(),
              file=out)
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
    print("  " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=out)


def node_lines(node: str, store: Store) -> list[str]:
    """`fleet status`'s line for a node in the newest rollout (fleetcli.SECTIONS)."""
    rows = store.rollouts(limit=1)
    if not rows:
        return []
    r = rows[0]
    for n in store.rollout_nodes(r.id):
        if n.node == node:
            return [f"rollout {r.id} of {r.release} ({r.state}): {stage_name(n.stage)}, {n.state}"
                    + (f": {n.reason}" if n.reason else "")]
    return []


Common = Callable[[argparse.ArgumentParser], None]


def add_release_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", common: Common) -> None:
    """`release add|list` (`common` adds --config)."""
    rel = sub.add_parser("release", help="signed app releases: verify and keep them (docs/operator.md)")
    rs = rel.add_subparsers(dest="release_cmd", required=True, metavar="ACTION")
    add = rs.add_parser("add", help="verify a release (signature, every file) and keep it")
    common(add)
    add.add_argument("dir", metavar="DIR", help="the folder `meetkit release build` wrote")
    add.set_defaults(run=release_add)
    ls = rs.add_parser("list", help="the releases kept, each verified again")
    common(ls)
    ls.set_defaults(run=release_list)


def add_fleet_parsers(fs: "argparse._SubParsersAction[argparse.ArgumentParser]", common: Common) -> None:
    """`fleet update|stop` under fleetcli's `fleet` (`common` adds --config)."""
    up = fs.add_parser("update", help="roll a kept release out: canaries first, then waves",
                       description="Writes the rollout into the store; the running gateway does it, and halts it "
                       "by itself when a node rolls back, refuses it, or does not prove it in time.")
    common(up)
    up.add_argument("--release", required=True, metavar="VERSION", help="a release kept with `release add`")
    up.add_argument("--nodes", metavar="A,B,...", help="these nodes, in this order (default: the fleet register's, "
                    "else every node heard of)")
    up.add_argument("--canary", type=int, default=CANARY, metavar="N",
                    help=f"the first N nodes go first (default {CANARY})")
    up.add_argument("--wave", type=int, default=WAVE, metavar="M", help=f"then waves of M (default {WAVE})")
    up.add_argument("--force", action="store_true", help="allow a downgrade (nodes running a newer release)")
    up.set_defaults(run=fleet_update)
    stop = fs.add_parser("stop", help="end the rollout under way (nodes that installed the release keep it)")
    common(stop)
    stop.set_defaults(run=fleet_stop)
