"""`meetkit-gateway dead-letters list|show|replay`: what the gateway refused, for an operator.

    list    the newest first (--node, --code, --limit): id, when, node, code, bytes, reason
    show    one whole: its topic, reason and payload (JSON pretty-printed; anything else as the
            first bytes in Python's escapes)
    replay  IDs, or --all (of --node, --code): through the checks again (replay.py); what went
            through is stored and the dead letter deleted, what is still refused stays with the
            reason of now

Exit codes: 0 done; 1 the configuration or store cannot be used, or no such dead letter; 2 bad
arguments. A replay writes the store, beside a running gateway.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import Config
from .replay import replay
from .store import DeadLetter, Store, StoreError
from .table import render
from .timefmt import iso
from .topics import Topics

REASON_WIDTH = 100


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.action == "show" and len(args.ids) != 1:
        print("dead-letters show: give one ID", file=sys.stderr)
        return 2
    if args.action == "replay" and not args.ids and not args.all:
        print("dead-letters replay: give IDs, or --all (with --node or --code to narrow it)", file=sys.stderr)
        return 2
    if args.action == "list" and args.ids:
        print("dead-letters list: takes no IDs (use show)", file=sys.stderr)
        return 2
    try:
        store = Store(cfg.store.path, readonly=args.action != "replay")
    except StoreError as e:
        print(e, file=sys.stderr)
        return 1
    with store:
        if args.action == "list":
            return _list(store, args)
        if args.action == "show":
            return _show(store, args.ids[0])
        return _replay(store, cfg, args)


def _list(store: Store, args: argparse.Namespace) -> int:
    letters = store.dead_letters(limit=args.limit, node=args.node, code=args.code)
    if not letters:
        print("no dead letters" + (f" of node {args.node}" if args.node else "")
              + (f" with code {args.code}" if args.code else ""))
        return 0
    rows = [(str(d.id), iso(d.received_at), d.node or "-", d.code, str(d.size), _short(d.reason)) for d in letters]
    print(render(("id", "received (UTC)", "node", "code", "bytes", "reason"), rows,
                 (True, False, False, False, True, False)))
    count, size = store.dead_letter_usage(every=True)
    print(f"({len(letters)} shown, newest first; {count} dead letters of {size} bytes in all)")
    return 0


def _short(reason: str) -> str:
    return reason if len(reason) <= REASON_WIDTH else reason[:REASON_WIDTH - 3] + "..."


def _show(store: Store, id_: int) -> int:
    d = store.dead_letter(id_)
    if d is None:
        print(f"no dead letter {id_}", file=sys.stderr)
        return 1
    print(f"dead letter {d.id}, received {iso(d.received_at)} on {d.topic}")
    print(f"node      {d.node or '-'}")
    print(f"code      {d.code}")
    print(f"reason    {d.reason}")
    print(f"payload   {d.size} bytes kept:")
    print(_payload(d))
    return 0


def _payload(d: DeadLetter) -> str:
    try:
        return json.dumps(json.loads(d.payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        head = d.payload[:2048]
        more = f"\n... ({len(d.payload) - len(head)} more bytes)" if len(d.payload) > len(head) else ""
        return repr(head)[2:-1] + more


def _replay(store: Store, cfg: Config, args: argparse.Namespace) -> int:
    if args.ids:
        letters = [store.dead_letter(i) for i in args.ids]
        missing = [i for i, d in zip(args.ids, letters) if d is None]
        if missing:
            print(f"no dead letter {', '.join(map(str, missing))}", file=sys.stderr)
            return 1
    else:
        letters = list(reversed(store.dead_letters(limit=10**9, node=args.node, code=args.code)))  # oldest first
    out = replay(store, Topics(cfg.mqtt.topic_prefix), [d for d in letters if d is not None])
    print(f"replayed {len(letters)} dead letter{'s' if len(letters) != 1 else ''}: {out.replayed} went through "
          f"and were deleted, {out.kept} still refuse something; {out.records} records stored, "
          f"{out.duplicates} held already, {out.values} values filled in, {out.statuses} status messages, "
          f"{out.events} events")
    for id_, reason in out.still:
        print(f"  {id_}: {_short(reason)}")
    return 0
