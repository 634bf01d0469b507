"""`meetkit-gateway`: run the gateway, check its configuration, look at what it stored.

    meetkit-gateway run      --config gateway.toml
    meetkit-gateway check    --config gateway.toml
    meetkit-gateway readings --config gateway.toml [--node ams-001] [--since 1h] [--quantity pm25]
    meetkit-gateway nodes    --config gateway.toml
    meetkit-gateway export   --config gateway.toml [--since 7d] [--until ...] [--node ID]... [--quantity Q]...
                             [--format csv|json] [--output FILE] [--pm-correction [--kappa 0.3]]
    meetkit-gateway publish  --config gateway.toml --out DIR [--tz Europe/Amsterdam] [--days 365] [--at WHEN]
    meetkit-gateway fleet status   --config gateway.toml [--node ID]
    meetkit-gateway fleet selftest NODE --config gateway.toml [--wait S]     (fleetcli.py)
    meetkit-gateway fleet update   --release R --config gateway.toml [--nodes a,b] [--canary N] [--wave M]
                                   [--force];  fleet stop --config gateway.toml                (rolloutcli.py)
    meetkit-gateway release add DIR --config gateway.toml;  release list --config gateway.toml

--config defaults to /etc/meetkit/gateway.toml (where `make install-gateway` puts it).

Exit status: 0 done, 1 a problem with the configuration or the store (printed to stderr), 2 wrong
usage (`fleet selftest`: 1 also for a failed item, 3 for no answer in time).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from . import __version__, config as configuration, plausible, pm_humidity, rolloutcli
from .config import Config, ConfigError, RegionConfig
from .payload import QUANTITIES
from .store import Store, StoreError
from .table import nodes_table, readings_table
from .timefmt import iso, parse_since
from .topics import Topics

if TYPE_CHECKING:
    from .export import Selection


# Where `make install-gateway` puts the configuration and the systemd unit reads it.
DEFAULT_CONFIG = "/etc/meetkit/gateway.toml"


def _config_arg(c: argparse.ArgumentParser) -> None:
    c.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH",
                   help=f"the gateway's TOML file (default {DEFAULT_CONFIG}, where install puts it)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meetkit-gateway",
        description="Receives the batches of meetkit nodes over MQTT and stores them in SQLite.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        _config_arg(c)
        return c

    command("run", "receive and store until SIGTERM or SIGINT")
    command("check", "validate the configuration, print what it sets, the database's state and its alarms")
    command("nodes", "print the nodes heard of: status, last seen, records their spools dropped")
    r = command("readings", "print stored readings as a table")
    r.add_argument("--node", help="only this node (default: all nodes)")
    r.add_argument(
        "--since", default="1h", metavar="WHEN",
        help="intervals starting at or after WHEN: 30m, 1h, 2d, or an ISO time, UTC if no zone "
             "(default: 1h)",
    )
    r.add_argument("--quantity", choices=list(QUANTITIES), help="only this quantity")
    d = command("dead-letters", "list, show or replay what the gateway refused (docs/operator.md, \"Dead letters\")")
    d.add_argument("action", choices=("list", "show", "replay"),
                   help="list: the newest first; show: one whole; replay: through the checks again, after a fix")
    d.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letters (show: one; replay: these)")
    d.add_argument("--node", help="only this node's")
    d.add_argument("--code", help="only those with this reason code (not_json, out_of_range, implausible, ...)")
    d.add_argument("--all", action="store_true", help="replay: every dead letter (of --node, --code)")
    d.add_argument("--limit", type=int, default=50, help="list: at most this many (default 50)")
    from .fleetcli import add_parser as fleet_parser

    fleet_parser(sub, _config_arg)
    e = command("export", "write stored readings as open data (CSV or JSON Lines), to a file or stdout")
    e.add_argument("--since", metavar="WHEN",
                   help="intervals starting at or after WHEN: 24h, 7d, or an ISO time, UTC if no zone "
                        "(default: the oldest stored)")
    e.add_argument("--until", metavar="WHEN", help="intervals starting before WHEN (default: no end)")
    e.add_argument("--node", action="append", default=[], metavar="ID", help="only this node (repeatable)")
    e.add_argument("--quantity", action="append", default=[], metavar="Q",
                   choices=[*QUANTITIES, *pm_humidity.CORRECTED.values()],
                   help="only this quantity (repeatable): " + ", ".join([*QUANTITIES, *pm_humidity.CORRECTED.values()]))
    e.add_argument("--format", choices=("csv", "json"), default="csv",  # export.FORMATS
                   help="csv (with FILE-metadata.json, CSVW) or json (JSON Lines) (default: csv)")
    e.add_argument("--output", metavar="FILE", help="write FILE (whole or not at all) instead of stdout")
    e.add_argument("--pm-correction", action="store_true",
                   help="add humidity-corrected PM (pm1_corr, pm25_corr, pm10_corr) next to the raw values "
                        "(with --quantity pm25: pm25 and pm25_corr; --quantity pm25_corr alone: only that)")
    e.add_argument("--kappa", type=float, default=pm_humidity.KAPPA, metavar="K",
                   help=f"the aerosol's hygroscopicity for --pm-correction (default {pm_humidity.KAPPA})")
    pb = command("publish", "write the public page for residents, a static site any web host serves, into DIR "
                            "(docs/operator.md, \"The public page\")")
    pb.add_argument("--out", required=True, metavar="DIR", help="the site's folder (made if missing)")
    pb.add_argument("--tz", metavar="ZONE",
                    help="the local time of days and noise periods, an IANA zone (default: [http] timezone, "
                         "Europe/Amsterdam unless set)")
    pb.add_argument("--days", type=int, default=365, metavar="N", help="days of daily values (default 365)")
    pb.add_argument("--at", metavar="WHEN", help="the page as it was at WHEN, an ISO time, UTC if no zone "
                                                 "(default: now)")
    rolloutcli.add_release_parser(sub, _config_arg)
    return p


def _load(path: str) -> Config | None:
    try:
        return configuration.load(path)
    except ConfigError as e:
        n = len(e.errors)
        print(f"{e.source}: {n} error{'s' if n > 1 else ''}", file=sys.stderr)
        for err in e.errors:
            print(f"  {err}", file=sys.stderr)
        if path == DEFAULT_CONFIG and not Path(path).exists():
            print(f"  (the default --config: `make install-gateway` puts the example there, docs/operator.md; "
                  "or name yours with --config PATH)", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    if not cfg.store.path.parent.is_dir():
        print(f"{cfg.source}: 1 error", file=sys.stderr)
        print(f"  store.path: the folder {cfg.store.path.parent} does not exist", file=sys.stderr)
        return 1
    busy = _http_busy(cfg)
    if busy is not None and not busy.startswith("in use by"):
        print(f"{cfg.source}: 1 error", file=sys.stderr)
        print(f"  http: {busy}", file=sys.stderr)
        return 1
    m = cfg.mqtt
    user = f"{m.username}@" if m.username else ""
    password = (f" (password from {m.password_file})" if m.password_file is not None
                else " (with password)" if m.password is not None else "")
    print(f"{cfg.source}: OK")
    topics = Topics(m.topic_prefix)
    print(f"  broker      mqtt://{user}{m.host}:{m.port}{password}, client id {m.client_id}, keepalive {m.keepalive} s")
    print(f"  subscribes  {', '.join(topics.subscriptions)}")
    print(f"  publishes   {topics.ack('<node>')}, {topics.config('<node>')} (retained), {topics.cmd('<node>')}, "
          f"{topics.alarm} (retained)")
    h = cfg.http
    host = f"[{h.host}]" if ":" in h.host else h.host
    print(f"  http        http://{host}:{h.port}/ (status page, /healthz, /metrics)"
          + (" (loopback only)" if h.host in ("127.0.0.1", "::1", "localhost") else "")
          + (f"; {busy}" if busy else "") + f"; times in {h.timezone}")
    exists = "" if cfg.store.path.exists() else " (created on the first run)"
    print(f"  store       {cfg.store.path}{exists}")
    age = f"{cfg.store.max_age_days} days from reception" if cfg.store.max_age_days else "no age bound"
    print(f"  bounds      at most {_size(cfg.store.max_bytes)} in use and {age}; the oldest records are dropped first")
    st = cfg.store
    print(f"  refused     dead letters within {st.dead_letters_node_max} and {_size(st.dead_letters_node_max_bytes)} per "
          f"node, {_size(st.dead_letters_max_bytes)} in all (outside the bound above)")
    _print_ota(cfg)
    for t in cfg.forward:
        print(f"  forward     {_target(t)}")
    if not cfg.forward:
        print("  forward     no targets")
    if cfg.region is not None:
        r = cfg.region
        print(f"  region      town {r.town}, gateway {r.gateway}: acknowledgements carry `safe`, a record being safe "
              f"once {' and '.join(r.safe_targets)} took it; every series forwarded carries the node's home town")
        print(f"  region      {_visitors(r)}")
        for t in cfg.forward:
            if t.type == "mqtt":
                print(f"  region      {t.name} publishes on {configuration.region_topic(t.topic, r.town)} "
                      "(each message with its node's home town)")
    if cfg.fleet is not None:
        _print_fleet(cfg.fleet)
    _print_fleet_files(cfg)
    print(f"  log level   {cfg.log.level}")
    if cfg.store.path.exists():
        _print_store(cfg)
    return 0


def _http_busy(cfg: Config) -> str | None:
    """None when `run` can listen on [http] host and port; "in use by a running meetkit gateway ..."
    when one answers /healthz there (this one, running: `run` would have to wait for it to stop);
    else what keeps it from listening and what to do."""
    import json
    import urllib.error
    import urllib.request

    from .http_server import listen_error, probe_listen

    h = cfg.http
    err = probe_listen(h.host, h.port)
    if err is None:
        return None
    if err.errno == errno.EADDRINUSE:
        ask = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(h.host, h.host)
        try:
            try:
                with urllib.request.urlopen(f"http://{f'[{ask}]' if ':' in ask else ask}:{h.port}/healthz",
                                            timeout=3) as r:
                    doc = json.loads(r.read())
            except urllib.error.HTTPError as e:  # 503: a gateway, not healthy
                doc = json.loads(e.read())
            if isinstance(doc, dict) and "db_id" in doc:
                return f"in use by a running meetkit gateway (database {doc['db_id']}): `run` starts once it stops"
        except (OSError, ValueError):
            pass  # not a gateway's page (or none that answers): another program
    return listen_error(h.host, h.port, err)


def _visitors(r: RegionConfig) -> str:
    """Where the visitors' home towns come from, and how many it gives (never a password: the
    table keeps node ids, homes and towns only)."""
    from .visitors import Visitors

    if r.visitors is None:
        return (f"no visitors' table ([region] visitors or [fleet] broker_secrets): every node is forwarded "
                f"under town={r.town}, a visiting one too")
    st = Visitors(r.visitors, r.town).state()
    if st.error is not None:
        return f"visitors' home towns: {st.error}; until it can be read every node is forwarded under town={r.town}"
    said = f"visitors' home towns from {r.visitors}: {st.visitors} visitor(s); any other node under town={r.town}"
    return said + "".join(f"\n  region      {p}" for p in st.problems)


def _print_ota(cfg: Config) -> None:
    """[ota]: the release keys (by fingerprint), the releases kept, how offers and pieces go."""
    o = cfg.ota
    if o is None:  # no releases, no rollouts
        return
    from .releases import ReleaseError, Releases, load_public_key

    try:
        keys = [load_public_key(p) for p in o.release_keys]
        kept = Releases(o.releases, keys).versions()
    except ReleaseError as e:  # the config checked the keys; a file changed since
        print(f"  releases    {e}")
        return
    print(f"  releases    signed by {', '.join(k.name for k in keys)}; kept in {o.releases}: "
          f"{', '.join(kept) or 'none yet'}")
    print(f"  rollouts    offers again every {o.offer_every_s:g} s until answered, skips a node that "
          f"answers none within {o.answer_within_s:g} s, proved within {o.prove_within_s:g} s; "
          f"pieces of at most {o.piece_max_bytes} bytes, {o.pieces_per_s:g} a second per node")


def _print_fleet(path: Path) -> None:
    """The fleet register: how many nodes, or every problem (the gateway runs all the same)."""
    from .fleet import FleetError, load

    try:
        nodes = load(path)
    except FleetError as e:
        print(f"  fleet       {path}: CANNOT BE USED, {len(e.errors)} problem{'s' if len(e.errors) != 1 else ''} "
              "(ingest goes on; the status page shows no names; sensorthings holds back new nodes):")
        for err in e.errors:
            print(f"                {err}")
        return
    placed = sum("lat" in m for m in nodes.values())
    print(f"  fleet       {path}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {placed} with a position")


def _print_fleet_files(cfg: Config) -> None:
    """The files remote configuration reads: where they are and whether they can be read (never
    what they hold)."""
    f = cfg.fleet_files
    for name, path in (("node keys", f.node_keys), ("secrets", f.secrets), ("broker pw", f.broker_secrets)):
        if path is not None:
            state = "readable" if os.access(path, os.R_OK) else "CANNOT BE READ (what needs it is held back)"
            print(f"  {name:<11} {path}: {state}")


def _target(t: object) -> str:
    """One [[forward]] target: name, type, where to (its url never carries a secret: config.py
    refuses one; tokens and passwords are in files), enabled."""
    name, kind, url = getattr(t, "name", "?"), getattr(t, "type", "?"), getattr(t, "url", "")
    api = getattr(t, "api", None)
    dest = [f"{k} {getattr(t, k)}" for k in ("db", "org", "bucket") if getattr(t, k, None)]
    auth = ("token from " + str(t.token_file) if getattr(t, "token_file", None)  # type: ignore[attr-defined]
            else "basic auth as " + str(t.username) if getattr(t, "username", None)  # type: ignore[attr-defined]
            else "")
    details = ", ".join(x for x in (api and f"api {api}", *dest, auth) if x)
    state = "enabled" if getattr(t, "enabled", True) else "DISABLED"
    return f"{name}: {kind} {url}{f' ({details})' if details else ''}, {state}"


ALARMS_SHOWN = 10


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            break
        n /= 1000
    else:
        unit = "TB"
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def _print_store(cfg: Config) -> None:
    """The database's id and figures, what the nodes' spools dropped, and the latest alarms."""
    free = _size(shutil.disk_usage(cfg.store.path.parent).free)
    try:
        with Store(cfg.store.path, readonly=True) as store:
            c, counters, nodes = store.counts(), store.counters(), store.nodes()
            alarms, db_id, created = store.alarms(ALARMS_SHOWN), store.db_id, store.created_at
            used, incremental = store.bounded_bytes(), store.incremental
            letters = store.dead_letter_usage(every=True)
        file_bytes = sum(p.stat().st_size for p in (cfg.store.path, Path(f"{cfg.store.path}-wal")) if p.exists())
    except StoreError as e:
        print(f"  database    {e}; {free} free")
        return
    except sqlite3.DatabaseError as e:
        print(f"  database    cannot read it: {e} (`run` moves a corrupt one aside and starts afresh); {free} free")
        return
    print(f"  database    id {db_id}, since {iso(created)}: {c.records} records, {c.dead_letters} dead letters, "
          f"{c.nodes} nodes, {counters.get('refused', 0)} messages refused; {free} free")
    print(f"  size        {_size(used)} in use of {_size(cfg.store.max_bytes)}, file {_size(file_bytes)}"
          f"{'' if incremental else ' (does not shrink: not converted to incremental auto-vacuum)'}")
    refused = {what: sum(v for k, v in counters.items() if k.startswith(f"refused_{what}."))
               for what in ("records", "values")}
    if letters[0] or any(refused.values()):
        print(f"  refused     {_n(refused['records'], 'record')} and {_n(refused['values'], 'value')} refused alone, "
              f"{_n(counters.get('flagged.range', 0), 'value')} kept beyond their sensor's rating (flag range); "
              f"{_n(letters[0], 'dead letter')} of {_size(letters[1])}, "
              f"{counters.get('dead_letters_dropped.flood', 0)} dropped for a flooding node (`dead-letters list`)")
    dropped = {k.removeprefix("dropped."): v for k, v in counters.items() if k.startswith("dropped.")}
    if dropped:
        by = ", ".join(f"{dropped[k]} by {k}" for k in ("age", "bytes") if dropped.get(k))
        print(f"  pruned      {by or 'no'} records; {dropped.get('unforwarded', 0)} of them not yet forwarded "
              "to every target")
    dropped = [f"{n.node} {n.dropped}" for n in nodes if n.dropped]
    if dropped:
        print(f"  dropped     records dropped by the nodes' full spools: {', '.join(dropped)}")
    for a in alarms:
        print(f"  {'ALARM' if a.active else 'alarm over':<10}  {iso(a.at)} {a.code}: {a.reason}")


def _setup_logging(cfg: Config) -> None:
    # Under systemd the journal stamps each line itself.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        stream=sys.stdout, level=cfg.log.level_number,
        format=stamp + "%(levelname)s %(name)s: %(message)s", force=True,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from .service import StartupError, run  # paho is imported only by the command that talks to the broker

    cfg = _load(args.config)
    if cfg is None:
        return 1
    _setup_logging(cfg)
    try:
        return run(cfg, Path(args.config))
    except StartupError as e:  # the status page's port taken, say: nothing was started
        logging.getLogger("meetkit_gateway").error("cannot start: %s", e)
        return 1
    except (StoreError, sqlite3.Error, OSError) as e:  # a locked or unreadable store: not moved aside
        logging.getLogger("meetkit_gateway").error("cannot open the store %s: %s", cfg.store.path, e)
        return 1


def _open_readonly(cfg: Config) -> Store | None:
    """The store for reading, or None after saying on stderr why it cannot be opened."""
    try:
        return Store(cfg.store.path, readonly=True)
    except StoreError as e:
        print(e, file=sys.stderr)
        return None


def cmd_readings(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    now = time.time()
    try:
        since = parse_since(args.since, now)
    except ValueError as e:
        print(f"--since: {e}", file=sys.stderr)
        return 2
    store = _open_readonly(cfg)
    if store is None:
        return 1
    with store:
        if args.node is not None:
            known = [n.node for n in store.nodes()]
            if args.node not in known:
                print(
                    f"no node {args.node!r} in {cfg.store.path}; known: {', '.join(known) or 'none yet'}",
                    file=sys.stderr,
                )
                return 1
        rows = store.readings(node=args.node, since=since, quantity=args.quantity)
        untimed = store.untimed(node=args.node, since=since)
    what = f"node {args.node}" if args.node else "any node"
    if rows:
        print(readings_table(rows, now))
    else:
        print(f"no readings of {what} since {iso(since)}")
    if untimed:
        print(
            f"({untimed} record{'s' if untimed > 1 else ''} received since then "
            f"{'have' if untimed > 1 else 'has'} no known time yet and {'are' if untimed > 1 else 'is'} not shown)"
        )
    odd = len({(g.node, g.boot, g.seq) for g in rows if not plausible.start(g.start, now)})
    if odd:
        print(f"({_n(odd, 'record')} with an interval start outside the plausible times, stored by an older "
              "gateway: shown as the raw number stored, Unix seconds)")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    store = _open_readonly(cfg)
    if store is None:
        return 1
    with store:
        nodes = store.nodes()
    print(nodes_table(nodes) if nodes else f"no nodes in {cfg.store.path} yet")
    return 0


def _export_selection(args: argparse.Namespace, now: float) -> "Selection | str":
    """The selection the arguments ask for, or what is wrong with them."""
    from .export import Correction, Selection

    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        try:
            times[name] = None if text is None else parse_since(text, now)
        except ValueError as e:
            return f"--{name}: {e}"
    if times["since"] is not None and times["until"] is not None and times["until"] <= times["since"]:
        return f"--until ({iso(times['until'])}) must be after --since ({iso(times['since'])})"
    if not args.pm_correction and any(q in pm_humidity.CORRECTED.values() for q in args.quantity):
        return "--quantity: the corrected quantities (pm25_corr, ...) need --pm-correction"
    if not 0 < args.kappa <= 1.5:
        return f"--kappa: must be above 0 and at most 1.5, got {args.kappa:g}"
    quantities = list(dict.fromkeys(args.quantity))
    if args.pm_correction:  # `--quantity pm25 --pm-correction`: pm25 and its corrected twin, pm25_corr
        quantities += [c for q in args.quantity if (c := pm_humidity.CORRECTED.get(q)) and c not in quantities]
    return Selection(times["since"], times["until"], tuple(args.node), tuple(quantities),
                     Correction(args.kappa) if args.pm_correction else None)


def _n(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportError, export, metadata_path  # only this command needs it (start-up time)

    cfg = _load(args.config)
    if cfg is None:
        return 1
    sel = _export_selection(args, time.time())
    if isinstance(sel, str):
        print(sel, file=sys.stderr)
        return 2
    output = Path(args.output).absolute() if args.output else None
    if output is not None and not output.parent.is_dir():
        print(f"--output: the folder {output.parent} does not exist", file=sys.stderr)
        return 1
    store = _open_readonly(cfg)
    if store is None:
        return 1
    try:
        with store:
            summary = export(store, sel, args.format, output, sys.stdout)
    except ExportError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        if output is None:
            raise  # stdout: a closed pipe (`export | head`) is handled in main(), other errors are not ours
        print(f"--output: cannot write {output}: {e.strerror or e}", file=sys.stderr)
        return 1
    where = "stdout"
    if output is not None:
        where = f"{output}" + (f" and {metadata_path(output).name}" if args.format == "csv" else "")
    period = f"interval starts {iso(summary.first)} to {iso(summary.last)}" if summary.first is not None else "no data"
    print(f"exported {_n(summary.readings, 'reading')} of {_n(summary.records, 'record')} "
          f"({_n(len(summary.nodes), 'node')}, {period}) to {where}", file=sys.stderr)
    if summary.untimed:
        print(f"left out {summary.untimed} record{'s' if summary.untimed > 1 else ''} received in that period "
              "without a known time yet (their node had no clock)", file=sys.stderr)
    if summary.implausible:
        print(f"left out {_n(summary.implausible, 'record')} received in that period with an implausible interval "
              "start, length or counters, stored by an older gateway (docs/operator.md)", file=sys.stderr)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .public import run  # only this command needs it (start-up time)

    cfg = _load(args.config)
    return 1 if cfg is None else run(cfg, args)


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from . import deadletters

    cfg = _load(args.config)
    if cfg is None:
        return 1
    return deadletters.run(cfg, args)


def cmd_fleet(args: argparse.Namespace) -> int:
    from . import fleetcli

    cfg = _load(args.config)
    if cfg is None:
        return 1
    return fleetcli.run(cfg, args)


def cmd_release(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    return args.run(cfg, args)


COMMANDS = {"run": cmd_run, "check": cmd_check, "readings": cmd_readings, "nodes": cmd_nodes, "export": cmd_export,
            "dead-letters": cmd_dead_letters, "fleet": cmd_fleet, "release": cmd_release, "publish": cmd_publish}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `meetkit-gateway readings | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
