"""The public page for residents: a static site, `meetkit-gateway publish --config ... --out DIR`.

    indicators  daily PM means, LAeq, Lday/Levening/Lnight and Lden in local time, coverage (pure)
    gather      each location of the fleet register with its values, from the store
    site        the pages in English and Dutch, the plots' data, the CSV and JSON downloads
    texts       the words of both languages

`publish(store, register, out, tz, now, days)` does it all; `run` is the command. docs/operator.md,
"The public page", says how to run it and what is public.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Config
from ..fleet import FleetError, load
from ..store import Store, StoreError
from ..timefmt import parse_since
from .gather import Site, gather
from .site import CACHE, write

DAYS_MAX = 3660  # ten years: more is a typo, and a slow one


def publish(store: Store, register: dict[str, dict[str, Any]], out: Path, tz: ZoneInfo, now: float,
            days: int) -> tuple[Site, list[Path]]:
    """Gather and write the site into `out`, with the days of the last run's cache there that did
    not change."""
    site = gather(store, register, tz, now, days, read_cache(out))
    return site, write(site, out)


def read_cache(out: Path) -> dict[str, Any] | None:
    """The last run's cache in `out`; None when there is none or it cannot be read (then every
    day is computed: the cache only saves time)."""
    try:
        doc = json.loads((out / CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def run(cfg: Config, args: argparse.Namespace) -> int:
    """`meetkit-gateway publish`: 0 written, 1 a problem with the register, store or folder, 2 usage."""
    zone = args.tz or cfg.http.timezone   # the operator's page's zone unless told otherwise
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"--tz: {zone!r} is not a time zone (an IANA name like Europe/Amsterdam)", file=sys.stderr)
        return 2
    if not 1 <= args.days <= DAYS_MAX:
        print(f"--days: must be from 1 to {DAYS_MAX}, got {args.days}", file=sys.stderr)
        return 2
    now = time.time()
    if args.at is not None:
        try:
            now = parse_since(args.at, now)
        except ValueError as e:
            print(f"--at: {e}", file=sys.stderr)
            return 2
    if cfg.fleet is None:
        print(f"{cfg.source}: publish needs [fleet] path: the public page shows the locations of the fleet "
              "register, and nothing of a node that is not in it", file=sys.stderr)
        return 1
    try:
        register = load(cfg.fleet)
    except FleetError as e:
        print(f"{e.source}: {len(e.errors)} problem(s), nothing published:", file=sys.stderr)
        for err in e.errors:
            print(f"  {err}", file=sys.stderr)
        return 1
    if not cfg.store.path.exists():
        print(f"store.path: {cfg.store.path} does not exist (yet): run the gateway first", file=sys.stderr)
        return 1
    out = Path(args.out)
    try:
        with Store(cfg.store.path, readonly=True) as store:
            site, written = publish(store, register, out, tz, now, args.days)
    except StoreError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"--out: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    with_data = sum(1 for loc in site.locations if loc.days)
    print(f"published {len(site.locations)} location(s), {with_data} with data, days {site.first} to {site.today} "
          f"({tz.key}): {out / 'index.html'} (English), {out / 'nl.html'} (Dutch), {len(written)} files; "
          f"{site.counts['computed']} day(s) computed, {site.counts['reused']} unchanged since the last run")
    if site.unregistered:
        print(f"left out {len(site.unregistered)} node(s) not in the fleet register: {', '.join(site.unregistered)}")
    bad = sum(loc.implausible for loc in site.locations)
    if bad:
        print(f"left out {bad} record(s) with an implausible interval start, length or counters, stored by an older "
              "gateway (docs/operator.md)")
    return 0
