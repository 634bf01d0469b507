"""`meetkit region`: a region of gateways from one plan file (docs/operator.md, "A region of gateways").

The plan, `region.toml`, is the operator's (kept beside the fleet registers):

    [region]
    name = "utrecht-region"
    topic_prefix = "meetkit"                      # the nodes' prefix, the same on every gateway
    central = "mqtts://central.example.org:8883"  # the central Mosquitto (open data)
    store = "http://vm.example.org:8428"          # the regional VictoriaMetrics

    [gateways."ut-1"]
    town = "utrecht"
    host = "10.0.1.1"          # how nodes and Prometheus reach it
    port = 8883                # its Mosquitto, for nodes
    http = 8080                # its status server (/metrics), for Prometheus
    neighbours = ["ut-2"]      # where its nodes fail over to, in order
    broker = "ut-1/broker"     # its `meetkit broker init` folder (optional; relative to the plan)
    store_max_bytes = 500000000    # optional: the bound its store-near-its-bound alert measures against,
                                   # instead of the gateway's own meetkit_store_max_bytes ([store] max_bytes)

Commands (each reads the plan and checks it whole first; nothing is written when it has a problem):

    check       the plan's problems, every one naming its key
    accounts    every gateway's Mosquitto accepts the nodes of the gateways that list it as a
                neighbour: their node ids and passwords (a node has one broker password for every
                broker of its list), read from the neighbours' broker folders' secrets.json, added
                to this gateway's password file and kept in its secrets.json under `visitors`, each
                with its home gateway and that gateway's town (so that `meetkit broker init` again
                keeps them, and the gateway forwards a visitor's records under its home town:
                gateway/visitors.py reads `home` and `town`, never a password). The ACL's `pattern` lines already
                give every account its own topics only. Idempotent: prints what it added, changed
                or removed.
    central     the central Mosquitto's conf, password file and ACL: `gw-<gateway>` per gateway,
                which may publish only under <prefix>/<town>/# of its own town, and `reader`,
                which may only read <prefix>/#.
    prometheus  prometheus.yml (every gateway's /metrics, labelled town and gateway) and
                meetkit-alerts.yml (the rules, thresholds from the options).

Password files are hashed by the real `mosquitto_passwd` and secrets written 0600, by
tools/broker.py's functions.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

from meetkit_tools import broker

NAME = re.compile(r"^[a-z0-9-]{1,32}$")  # town, gateway and region names
HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
CENTRAL_READER = "reader"
CENTRAL_GATEWAY = "gw-{gateway}"
CENTRAL_SECRETS = "central-secrets.json"
VISITORS = broker.VISITORS

REGION_KEYS = {"name", "topic_prefix", "central", "store"}
GATEWAY_KEYS = {"town", "host", "port", "http", "neighbours", "broker", "store_max_bytes"}


class RegionError(Exception):
    """Problems the operator can fix; each line names its key."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Gateway:
    name: str
    town: str
    host: str
    port: int = 8883
    http: int = 8080
    neighbours: tuple[str, ...] = ()
    broker: Path | None = None
    # the alert's bound for its store; None: the gateway's own, /metrics meetkit_store_max_bytes
    store_max_bytes: int | None = None


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    topic_prefix: str
    central: str
    store: str
    gateways: dict[str, Gateway] = field(default_factory=dict)

    @property
    def towns(self) -> dict[str, list[str]]:
        """town -> its gateways, in the plan's order."""
        out: dict[str, list[str]] = {}
        for g in self.gateways.values():
            out.setdefault(g.town, []).append(g.name)
        return out

    def listing(self, gateway: str) -> list[str]:
        """The gateways that list `gateway` as a neighbour (their nodes may come to it)."""
        return [g.name for g in self.gateways.values() if gateway in g.neighbours]

    def warnings(self) -> list[str]:
        """What is allowed but worth saying."""
        out = []
        for g in self.gateways.values():
            if not g.neighbours:
                out.append(f"gateways.{g.name}.neighbours: none; its nodes have no other broker to fail over to")
        return out


# ---------------------------------------------------------------------------------------------
# The plan


def _url(value: object, key: str, schemes: tuple[str, ...], problems: list[str]) -> str:
    if not isinstance(value, str):
        problems.append(f"{key}: missing or not a string (a URL: {' or '.join(s + '://host:port' for s in schemes)})")
        return ""
    u = urlsplit(value)
    try:
        port = u.port
    except ValueError:
        port = -1
    if u.scheme not in schemes or not u.hostname or port == -1 or (u.path not in ("", "/")) or u.query:
        problems.append(f"{key}: {value!r} is not {' or '.join(s + '://host[:port]' for s in schemes)}")
    return value


def _name(value: object, key: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        problems.append(f"{key}: {value!r} must be 1-32 of a-z, 0-9, '-'")
        return ""
    return value


def _port(value: object, key: str, default: int, problems: list[str]) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        problems.append(f"{key}: {value!r} is not a port (1-65535)")
        return default
    return value


def _host(value: object, key: str, problems: list[str]) -> str:
    if not isinstance(value, str):
        problems.append(f"{key}: missing or not a string (a host name or IP address)")
        return ""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not HOST.match(value) or value.startswith(("-", ".")):
            problems.append(f"{key}: {value!r} is not a host name or IP address")
    return value


def parse_plan(doc: dict[str, Any], path: Path) -> Plan:
    """The plan from its TOML document; RegionError lists every problem, each naming its key."""
    problems: list[str] = []
    for key in doc:
        if key not in ("region", "gateways"):
            problems.append(f"{key}: not a table of the plan (it has [region] and [gateways.<name>])")
    region = doc.get("region")
    if not isinstance(region, dict):
        problems.append("region: missing (a [region] table: name, topic_prefix, central, store)")
        region = {}
    for key in region:
        if key not in REGION_KEYS:
            problems.append(f"region.{key}: not a key of [region] (it takes {', '.join(sorted(REGION_KEYS))})")
    name = _name(region.get("name"), "region.name", problems) if "name" in region else ""
    if "name" not in region and isinstance(doc.get("region"), dict):
        problems.append("region.name: missing")
    prefix = region.get("topic_prefix", "meetkit")
    if not isinstance(prefix, str) or not broker.PREFIX.match(prefix) or len(prefix) > broker.MAX_PREFIX:
        problems.append(f"region.topic_prefix: {prefix!r} must be levels of letters, digits, '-', '_' "
                        f"separated by '/', at most {broker.MAX_PREFIX} characters (the nodes' topic_prefix)")
        prefix = "meetkit"
    if region or isinstance(doc.get("region"), dict):  # a missing [region] is one problem, not five
        central = _url(region.get("central"), "region.central", ("mqtt", "mqtts"), problems)
        store = _url(region.get("store"), "region.store", ("http", "https"), problems)
    else:
        central = store = ""

    gateways: dict[str, Gateway] = {}
    table = doc.get("gateways")
    if not isinstance(table, dict) or not table:
        problems.append('gateways: none (a [gateways."<name>"] table for each gateway)')
        table = {}
    for gname, g in table.items():
        key = f"gateways.{gname}"
        if not isinstance(gname, str) or not NAME.match(gname):
            problems.append(f"{key}: the gateway's name must be 1-32 of a-z, 0-9, '-'")
        if not isinstance(g, dict):
            problems.append(f"{key}: not a table")
            continue
        for k in g:
            if k not in GATEWAY_KEYS:
                problems.append(f"{key}.{k}: not a key of a gateway (it takes {', '.join(sorted(GATEWAY_KEYS))})")
        town = _name(g.get("town"), f"{key}.town", problems)
        host = _host(g.get("host"), f"{key}.host", problems)
        port = _port(g.get("port"), f"{key}.port", 8883, problems)
        http = _port(g.get("http"), f"{key}.http", 8080, problems)
        neighbours = g.get("neighbours", [])
        if not isinstance(neighbours, list) or not all(isinstance(n, str) for n in neighbours):
            problems.append(f"{key}.neighbours: {neighbours!r} is not a list of gateway names")
            neighbours = []
        folder = g.get("broker")
        broker_dir: Path | None = None
        if folder is not None:
            if not isinstance(folder, str) or not folder:
                problems.append(f"{key}.broker: {folder!r} is not a folder (the gateway's `meetkit broker init` --out)")
            else:
                broker_dir = (path.parent / folder).absolute() if not Path(folder).is_absolute() else Path(folder)
        bound = g.get("store_max_bytes")
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound <= 0):
            problems.append(f"{key}.store_max_bytes: {bound!r} is not a positive number of bytes "
                            "(the bound of the gateway's store for its alert; leave it out for the gateway's own "
                            "[store] max_bytes)")
            bound = None
        gateways[gname] = Gateway(gname, town, host, port, http, tuple(neighbours), broker_dir, bound)

    seen_at: dict[tuple[str, int], str] = {}
    for g in gateways.values():
        key = f"gateways.{g.name}.neighbours"
        if len(set(g.neighbours)) != len(g.neighbours):
            problems.append(f"{key}: names a gateway twice")
        for n in g.neighbours:
            if n == g.name:
                problems.append(f"{key}: names the gateway itself ({n!r}): its nodes are at home there already")
            elif n not in gateways:
                problems.append(f"{key}: {n!r} is not a gateway of the plan (it has {', '.join(gateways) or 'none'})")
        for where, p in (("port", g.port), ("http", g.http)):
            other = seen_at.get((g.host, p))
            if other is not None:
                problems.append(f"gateways.{g.name}.{where}: {g.host}:{p} is also {other}'s")
            seen_at[(g.host, p)] = f"gateways.{g.name}.{where}"
    folders: dict[Path, str] = {}
    for g in gateways.values():
        if g.broker is not None:
            if g.broker in folders:
                problems.append(f"gateways.{g.name}.broker: {g.broker} is also gateways.{folders[g.broker]}.broker")
            folders[g.broker] = g.name
    if problems:
        raise RegionError([f"{path}: {p}" for p in problems])
    return Plan(path, name, prefix, central, store, gateways)


def load_plan(path: Path | str) -> Plan:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RegionError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegionError(f"{path}: not TOML ({e})") from None
    return parse_plan(doc, path)


# ---------------------------------------------------------------------------------------------
# accounts: every gateway accepts its neighbours' nodes


@dataclass
class Accounts:
    gateway: str
    added: list[tuple[str, str]] = field(default_factory=list)  # (node, its home gateway)
    changed: list[tuple[str, str]] = field(default_factory=list)  # a new password (the passwd file changes)
    # (node, home gateway, town): a new home or town only (secrets.json changes, not the passwd file)
    moved: list[tuple[str, str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: int = 0


def _secrets(plan: Plan, g: Gateway, problems: list[str]) -> dict:
    assert g.broker is not None
    try:
        doc = broker.load_secrets(g.broker)
    except broker.BrokerError as e:
        problems.append(f"gateways.{g.name}.broker: {e}")
        return {}
    except (OSError, ValueError) as e:
        problems.append(f"gateways.{g.name}.broker: {g.broker / broker.SECRETS} cannot be read ({e})")
        return {}
    if doc.get("prefix") != plan.topic_prefix:
        problems.append(f"gateways.{g.name}.broker: made for the prefix {doc.get('prefix')!r}, the region's is "
                        f"{plan.topic_prefix!r} (region.topic_prefix): its ACL gives the nodes other topics")
    return doc


def wanted_visitors(plan: Plan) -> dict[str, dict[str, dict[str, str]]]:
    """gateway -> {node: {"password", "home", "town"}}: what each gateway with a broker folder must
    accept, with each visitor's home gateway and that gateway's town (the gateway forwards a
    visitor's records under its home town: gateway/visitors.py reads `home` and `town` back).
    RegionError when a folder is missing or unreadable, when a node has two passwords in the
    region, or when a gateway's nodes cannot trust a neighbour's certificate."""
    problems: list[str] = []
    docs: dict[str, dict] = {}
    involved = {g.name for g in plan.gateways.values() if g.neighbours} | {
        n for g in plan.gateways.values() for n in g.neighbours}
    for name in (n for n in plan.gateways if n in involved):  # in the plan's order
        g = plan.gateways[name]
        if g.broker is None:
            why = (f"its nodes fail over to {', '.join(g.neighbours)}" if g.neighbours else "")
            whom = plan.listing(name)
            why = "; ".join(x for x in (why, f"it takes the nodes of {', '.join(whom)}" if whom else "") if x)
            problems.append(f"gateways.{name}.broker: not set, and {why}: give its `meetkit broker init` folder")
        else:
            docs[name] = _secrets(plan, g, problems)
            passwd = g.broker / "mosquitto" / "passwd"
            if not passwd.is_file():
                problems.append(f"gateways.{name}.broker: {passwd} not found; run `meetkit broker init --out "
                                f"{g.broker}` first")
            visitors = docs[name].get(VISITORS, {})
            if not isinstance(visitors, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("password"), str) for v in visitors.values()):
                problems.append(f"gateways.{name}.broker: {g.broker / broker.SECRETS}: `{VISITORS}` is not "
                                '{"<node>": {"password": ..., "home": ..., "town": ...}}; remove it and run accounts again')
    if problems:
        raise RegionError([f"{plan.path}: {p}" for p in problems])
    # One password per node across the region: the node holds one.
    password: dict[str, tuple[str, str]] = {}
    for name, doc in docs.items():
        for node, pw in doc.get("nodes", {}).items():
            if node in password and password[node][0] != pw:
                problems.append(f"node {node}: has an account at gateways.{password[node][1]} and at gateways.{name} "
                                "with different passwords; a node has one broker password: remove it from one "
                                "folder's secrets.json (it moved?) or give one of them another id")
            password.setdefault(node, (pw, name))
    ca = {name: (plan.gateways[name].broker / "mosquitto" / "ca.crt") for name in docs}  # type: ignore[operator]
    out: dict[str, dict[str, dict[str, str]]] = {}
    for name in docs:
        g = plan.gateways[name]
        visitors: dict[str, dict[str, str]] = {}
        own = docs[name].get("nodes", {})
        for home in plan.listing(name):
            try:
                same_ca = ca[home].read_bytes() == ca[name].read_bytes()
            except OSError as e:
                problems.append(f"gateways.{home}.broker: {e}")
                continue
            if not same_ca:
                problems.append(f"gateways.{home}.neighbours names {name}, but their broker folders have different "
                                f"lab CAs: {home}'s nodes (ca.der) cannot trust {name}'s broker. Give the region one "
                                f"CA: copy {plan.gateways[home].broker}/ca/ to {g.broker}/ca/ and run "
                                f"`meetkit broker init --out {g.broker} --renew-server-cert` (then its own nodes "
                                "need the new ca.der), docs/operator.md \"A region of gateways\"")
            for node, pw in docs[home].get("nodes", {}).items():
                if node in own:
                    continue  # the same node and password (checked above): an account here already
                if node not in visitors:
                    visitors[node] = {"password": pw, "home": home, "town": plan.gateways[home].town}
        out[name] = visitors
    if problems:
        raise RegionError(problems)
    return out


def accounts(plan: Plan) -> list[Accounts]:
    """Bring every gateway's password file and secrets.json `visitors` to what the plan wants."""
    wanted = wanted_visitors(plan)
    results = []
    for name, visitors in wanted.items():
        out = plan.gateways[name].broker
        assert out is not None
        doc = broker.load_secrets(out)
        before: dict[str, dict[str, str]] = dict(doc.get(VISITORS) or {})
        passwd = out / "mosquitto" / "passwd"
        lines = [ln for ln in passwd.read_text().splitlines() if ln.strip()]
        users = {ln.split(":", 1)[0] for ln in lines}
        res = Accounts(name)
        rehash: dict[str, str] = {}
        for node, v in visitors.items():
            old = before.get(node)
            if old is None:
                res.added.append((node, v["home"]))
                rehash[node] = v["password"]
            elif old.get("password") != v["password"] or node not in users:
                res.changed.append((node, v["home"]))
                rehash[node] = v["password"]
            elif old.get("home") != v["home"] or old.get("town") != v["town"]:
                # a new home, or the town an older `accounts` did not write: the gateway's table only
                res.moved.append((node, v["home"], v["town"]))
            else:
                res.kept += 1
        res.removed = sorted(set(before) - set(visitors))
        if not (rehash or res.removed or res.moved):
            results.append(res)
            continue
        if not (rehash or res.removed):  # the password file stays as it is
            doc[VISITORS] = {n: visitors[n] for n in sorted(visitors)}
            broker.save_secrets(out, doc)
            results.append(res)
            continue
        hashed = broker.hash_passwords(rehash, passwd.parent) if rehash else []
        drop = set(rehash) | set(res.removed)
        kept = [ln for ln in lines if ln.split(":", 1)[0] not in drop]
        doc[VISITORS] = {n: visitors[n] for n in sorted(visitors)}
        # The secrets first, as `broker init` does: a password the file does not hold must never be
        # in the password file.
        broker.save_secrets(out, doc)
        broker._write(passwd, "\n".join(kept + hashed) + "\n", 0o640)
        results.append(res)
    return results


# ---------------------------------------------------------------------------------------------
# central: the central Mosquitto, a tenant per town


def central_acl(plan: Plan) -> str:
    p = plan.topic_prefix
    lines = [
        "# meetkit: generated by `meetkit region central`; see docs/operator.md, \"A region of gateways\".",
        f"# Each gateway publishes only under {p}/<its town>/# (the forwarder's topic",
        f"# {p}/<town>/{{node}}/records) and reads nothing; `{CENTRAL_READER}` reads all the towns and",
        "# publishes nowhere. A publish the ACL denies is dropped (MQTT v5: PUBACK \"Not authorized\").",
        "# No `pattern` lines: no account gets anything by its name.",
        "",
    ]
    for g in plan.gateways.values():
        lines += [f"user {CENTRAL_GATEWAY.format(gateway=g.name)}", f"topic write {p}/{g.town}/#", ""]
    lines += [f"user {CENTRAL_READER}", f"topic read {p}/#", ""]
    return "\n".join(lines)


@dataclass
class CentralOptions:
    """Where the files are on the central broker's machine and what differs there (a test runs it
    on a loopback port of its own)."""

    install_dir: Path | None = None  # default: <out>/mosquitto itself
    port: int | None = None  # default: region.central's port (8883 for mqtts, 1883 for mqtt)
    bind: str | None = None  # an address; default all
    persistence_location: str = "/var/lib/mosquitto/"
    pid_file: str | None = "/run/mosquitto/mosquitto.pid"
    log_dest: str = "file /var/log/mosquitto/mosquitto.log"
    user: str | None = None


def central_conf(plan: Plan, opts: CentralOptions, install_dir: Path) -> str:
    u = urlsplit(plan.central)
    tls = u.scheme == "mqtts"
    port = opts.port or u.port or (8883 if tls else 1883)
    d = install_dir
    lines = [
        "# meetkit: generated by `meetkit region central`; see docs/operator.md, \"A region of gateways\".",
        f"# The region's central broker ({plan.central}): the open-data feed of every town.",
    ]
    if opts.pid_file:
        lines.append(f"pid_file {opts.pid_file}")
    if opts.user:
        lines.append(f"user {opts.user}")
    lines += [
        f"log_dest {opts.log_dest}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {d / 'passwd'}",
        f"acl_file {d / 'acl'}",
        "persistence true",
        f"persistence_location {opts.persistence_location}",
        "autosave_interval 60",
        f"max_packet_size {broker.MAX_PACKET_BYTES}",
        "",
        f"listener {port}" + (f" {opts.bind}" if opts.bind else ""),
    ]
    if tls:
        lines += [f"cafile {d / 'ca.crt'}", f"certfile {d / 'server.crt'}", f"keyfile {d / 'server.key'}",
                  "tls_version tlsv1.2", "require_certificate false"]
    # No client takes over another's session by its client id.
    lines += ["use_username_as_clientid true", ""]
    return "\n".join(lines)


@dataclass
class Central:
    out: Path
    written: list[Path]
    kept: list[Path]
    accounts: list[str]


def central(plan: Plan, out: Path, opts: CentralOptions | None = None) -> Central:
    """Write the central broker's files into `out`: mosquitto/{mosquitto.conf,passwd,acl} (and the
    TLS files for mqtts), central-secrets.json and one <account>.password per account (0600).
    Again: the passwords, the CA and the key are kept; accounts of gateways no longer in the plan go."""
    opts = opts or CentralOptions()
    out = Path(out).absolute()
    mdir = out / "mosquitto"
    mdir.mkdir(parents=True, exist_ok=True)
    install_dir = Path(opts.install_dir) if opts.install_dir else mdir
    path = out / CENTRAL_SECRETS
    old: dict[str, str] = {}
    if path.exists():
        try:
            old = dict(json.loads(path.read_text())["accounts"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RegionError(f"{path}: cannot be read ({e}); restore it or move it away (new passwords)") from None
    names = [CENTRAL_GATEWAY.format(gateway=g) for g in plan.gateways] + [CENTRAL_READER]
    accounts = {n: old.get(n) or broker.new_password() for n in names}
    written: list[Path] = []
    kept: list[Path] = []
    broker._write(path, json.dumps({"region": plan.name, "accounts": accounts}, indent=2) + "\n", 0o600)
    written.append(path)
    for n, pw in accounts.items():
        broker._write(out / f"{n}.password", pw + "\n", 0o600)
        written.append(out / f"{n}.password")
    for stale in sorted(set(old) - set(accounts)):
        (out / f"{stale}.password").unlink(missing_ok=True)
    passwd = mdir / "passwd"
    broker._write(passwd, "\n".join(broker.hash_passwords(accounts, mdir)) + "\n", 0o640)
    broker._write(mdir / "acl", central_acl(plan), 0o640)
    written += [passwd, mdir / "acl"]
    if urlsplit(plan.central).scheme == "mqtts":
        host = urlsplit(plan.central).hostname or ""
        try:
            ips, hostname = [str(ipaddress.ip_address(host))], "meetkit-central"
        except ValueError:
            ips, hostname = [], host
        fleet = broker.Fleet(hostname=hostname, ips=ips)
        cadir = out / "ca"
        if not ((cadir / "ca.key").exists() and (cadir / "ca.crt").exists()):
            broker.make_ca(cadir)
            written += [cadir / "ca.key", cadir / "ca.crt"]
        else:
            kept += [cadir / "ca.key", cadir / "ca.crt"]
        if (not (mdir / "server.crt").exists()
                or broker.cert_sans(mdir / "server.crt") != set(broker.server_sans(fleet))):
            broker.make_server_cert(cadir, mdir, fleet)
            written += [mdir / "server.key", mdir / "server.crt"]
        else:
            kept += [mdir / "server.key", mdir / "server.crt"]
        broker._write(mdir / "ca.crt", (cadir / "ca.crt").read_bytes(), 0o644)
        written.append(mdir / "ca.crt")
    broker._write(mdir / "mosquitto.conf", central_conf(plan, opts, install_dir), 0o644)
    written.append(mdir / "mosquitto.conf")
    return Central(out, written, kept, names)


def central_forward_toml(plan: Plan, gateway: str, out: Path) -> str:
    """The [[forward]] table of a gateway's gateway.toml for the central broker."""
    g = plan.gateways[gateway]
    acct = CENTRAL_GATEWAY.format(gateway=gateway)
    lines = ["[[forward]]", 'name = "central"', 'type = "mqtt"', f'url = "{plan.central}"',
             f'username = "{acct}"', f'password_file = "/etc/meetkit-gateway/{acct}.password"   # from {out}']
    if urlsplit(plan.central).scheme == "mqtts":
        lines.append(f'ca_file = "/etc/meetkit-gateway/central-ca.crt"   # {out}/ca/ca.crt')
    # {town}, not the town itself: without the placeholder the gateway puts its town in as the second
    # level (config.region_topic), and a literal town there would be doubled
    lines += [f'topic = "{plan.topic_prefix}/{{town}}/{{node}}/records"   # {{town}}: {g.town}', 'protocol = "v5"']
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# prometheus: the region's health


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def seconds(text: str) -> float:
    """A duration: seconds, or with a unit (ms, s, m, h, d): `600`, `10m`, `1.5h`."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a duration (seconds, or a number with ms, s, m, h or d)")
    return float(m[1]) * _UNIT[m[2]]


def prom_duration(s: float) -> str:
    """Prometheus's spelling of a duration (whole milliseconds at the least)."""
    ms = round(s * 1000)
    if ms <= 0:
        return "0s"
    for unit, n in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class Thresholds:
    """The alerts' thresholds; the defaults suit a town's nodes (a record a minute, a batch every
    few minutes) and the gateways' defaults."""

    scrape_interval_s: float = 60
    evaluation_interval_s: float = 60
    silent_after_s: float = 600  # three batch intervals without a word
    for_s: float = 300  # how long a condition holds before its alert fires
    forward_behind_s: float = 900  # the oldest record not yet forwarded to a target
    backlog_window_s: float = 1800  # held records grew by backlog_records over this long
    backlog_records: int = 20
    store_near: float = 0.9  # of [store] max_bytes
    failover_after_s: float = 600  # a node on a neighbour's broker this long

    def check(self) -> None:
        problems = []
        for name in ("scrape_interval_s", "evaluation_interval_s", "silent_after_s", "backlog_window_s",
                     "failover_after_s", "forward_behind_s"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name[:-2].replace('_', '-')}: must be above 0")
        if self.for_s < 0:
            problems.append("--for: must be 0 or more")
        if not 0 < self.store_near < 1:
            problems.append(f"--store-near: {self.store_near} must be a fraction between 0 and 1")
        if self.backlog_records < 1:
            problems.append("--backlog-records: must be 1 or more")
        if problems:
            raise RegionError(problems)


def _q(s: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is YAML's)."""
    return json.dumps(s)


JOB = "meetkit-gateway"
ALERTS_FILE = "meetkit-alerts.yml"
CONFIG_FILE = "prometheus.yml"

#: alert name -> when it fires ({...}: the thresholds); every alert of the file, in its order
#: (docs/operator.md lists them)
ALERTS = {
    "MeetkitGatewayDown": "Prometheus has not read the gateway's /metrics for {for_} (the gateway, its Pi or "
                          "the way to it is down)",
    "MeetkitNodeSilent": "no gateway of the region heard the node (a batch or a status) for {silent} (--silent-after)",
    "MeetkitSpoolBacklogGrowing": "the node's records held and not yet safe (its status `held`) grew by "
                                  "{backlog_records} or more over {backlog_window}",
    "MeetkitForwardingBehind": "the oldest record not yet forwarded to a target is older than {behind}",
    "MeetkitStoreNearBound": "the gateway's store fills more than {near} of its bound (its [store] max_bytes, "
                             "or the plan's store_max_bytes)",
    "MeetkitFailoverInProgress": "the node is on a neighbour's broker (its status `via` above 0) for {failover}",
    "MeetkitRolloutHalted": "the gateway's newest rollout of a release halted (`meetkit-gateway rollout`)",
}


def _values(th: "Thresholds") -> dict[str, str]:
    return {"for_": prom_duration(th.for_s), "silent": prom_duration(th.silent_after_s),
            "backlog_records": str(th.backlog_records), "backlog_window": prom_duration(th.backlog_window_s),
            "behind": prom_duration(th.forward_behind_s), "near": f"{th.store_near:g}",
            "failover": prom_duration(th.failover_after_s)}


def prometheus_yml(plan: Plan, th: Thresholds, alertmanagers: Sequence[str] = ()) -> str:
    lines = [
        "# meetkit: generated by `meetkit region prometheus`; see docs/operator.md, \"A region of gateways\".",
        f"# The region {plan.name}: every gateway's /metrics, labelled with its town and name.",
        "global:",
        f"  scrape_interval: {prom_duration(th.scrape_interval_s)}",
        f"  evaluation_interval: {prom_duration(th.evaluation_interval_s)}",
        "  external_labels:",
        f"    region: {_q(plan.name)}",
        "rule_files:",
        f"  - {ALERTS_FILE}",
    ]
    if alertmanagers:
        lines += ["alerting:", "  alertmanagers:", "    - static_configs:", "        - targets:"]
        lines += [f"            - {_q(a)}" for a in alertmanagers]
    lines += [
        "scrape_configs:",
        f"  - job_name: {JOB}",
        "    metrics_path: /metrics",
        f"    scrape_timeout: {prom_duration(min(10.0, th.scrape_interval_s))}",
        "    static_configs:",
    ]
    for g in plan.gateways.values():
        host = f"[{g.host}]" if ":" in g.host else g.host
        lines += [f"      - targets: [{_q(f'{host}:{g.http}')}]",
                  f"        labels: {{town: {_q(g.town)}, gateway: {_q(g.name)}}}"]
    return "\n".join(lines) + "\n"


def _rule(lines: list[str], th: Thresholds, alert: str, expr: str, for_s: float, severity: str,
          summary: str) -> None:
    lines += [f"      - alert: {alert}", f"        expr: {_q(expr)}"]
    if for_s > 0:
        lines.append(f"        for: {prom_duration(for_s)}")
    lines += ["        labels:", f"          severity: {severity}",
              "        annotations:", f"          summary: {_q(summary)}",
              f"          description: {_q(ALERTS[alert].format(**_values(th)))}"]


def alerts_yml(plan: Plan, th: Thresholds) -> str:
    th.check()
    j = f'job="{JOB}"'
    # The gateway that heard a node last: a node that failed over is heard by a neighbour, and its
    # home gateway still shows what the node said there last (a stale `via`, `held`): every per-node
    # rule takes the node's values from the gateway that heard it most recently.
    latest = ("meetkit_node_last_seen_timestamp_seconds == on (node) group_left () "
              "max by (node) (meetkit_node_last_seen_timestamp_seconds)")
    lines = [
        "# meetkit: generated by `meetkit region prometheus`; see docs/operator.md, \"A region of gateways\".",
        f"# Thresholds: silent after {prom_duration(th.silent_after_s)}, conditions held {prom_duration(th.for_s)},"
        f" forwarding behind {prom_duration(th.forward_behind_s)}, backlog {th.backlog_records} records over"
        f" {prom_duration(th.backlog_window_s)}, store at {th.store_near:g} of its bound, failover for"
        f" {prom_duration(th.failover_after_s)}.",
        "groups:",
        "  - name: meetkit-region-records",
        "    rules:",
        "      # per node: the gateway that heard it last (value: when)",
        "      - record: meetkit_region:node_last_heard",
        f"        expr: {_q(latest)}",
        "      # per node, wherever it is: the records its spool holds not yet safe, its broker (0: home)",
        "      - record: meetkit_region:node_held_records",
        f"        expr: {_q('max by (node) (meetkit_node_held_records and on (node, gateway) meetkit_region:node_last_heard)')}",
    ]
    # Each gateway's store bound: the plan's store_max_bytes where it gives one, else the gateway's own
    # [store] max_bytes as it exports it (meetkit_store_max_bytes); recorded before the rule that uses
    # the plan's values (the rules of a group run in order)
    own = f"max by (town, gateway) (meetkit_store_max_bytes{{{j}}})"
    given = [g for g in plan.gateways.values() if g.store_max_bytes is not None]
    if given:
        lines.append("      # the bounds the plan gives (gateways.<name>.store_max_bytes)")
    for g in given:
        lines += ["      - record: meetkit_region:store_max_bytes_plan", f"        expr: vector({g.store_max_bytes})",
                  f"        labels: {{town: {_q(g.town)}, gateway: {_q(g.name)}}}"]
    lines += ["      # every gateway's store bound: the plan's, else its own [store] max_bytes",
              "      - record: meetkit_region:store_max_bytes",
              f"        expr: {_q(f'meetkit_region:store_max_bytes_plan or on (town, gateway) {own}' if given else own)}"]
    lines += ["  - name: meetkit-region", "    rules:"]
    _rule(lines, th, "MeetkitGatewayDown", f"up{{{j}}} == 0", th.for_s, "critical",
          "gateway {{ $labels.gateway }} ({{ $labels.town }}) does not answer on /metrics")
    _rule(lines, th, "MeetkitNodeSilent",
          f"min by (node) (time() - meetkit_node_last_seen_timestamp_seconds{{{j}}}) > {th.silent_after_s:g}",
          th.for_s, "warning", "node {{ $labels.node }} silent for {{ $value | humanizeDuration }}")
    _rule(lines, th, "MeetkitSpoolBacklogGrowing",
          f"delta(meetkit_region:node_held_records[{prom_duration(th.backlog_window_s)}]) >= {th.backlog_records}",
          th.for_s, "warning",
          "node {{ $labels.node }}: records held not yet safe grew by {{ $value | printf \"%.0f\" }} in "
          f"{prom_duration(th.backlog_window_s)}")
    _rule(lines, th, "MeetkitForwardingBehind",
          f"meetkit_forward_oldest_age_seconds{{{j}}} > {th.forward_behind_s:g}", th.for_s, "warning",
          "gateway {{ $labels.gateway }}: forwarding to {{ $labels.target }} is {{ $value | humanizeDuration }} behind")
    _rule(lines, th, "MeetkitStoreNearBound",
          f"meetkit_store_bounded_bytes{{{j}}} / on (town, gateway) group_left () meetkit_region:store_max_bytes"
          f" > {th.store_near:g}", th.for_s, "warning",
          "gateway {{ $labels.gateway }}: its store is at {{ $value | humanizePercentage }} of its bound")
    _rule(lines, th, "MeetkitFailoverInProgress",
          f"meetkit_node_via{{{j}}} > 0 and on (node, gateway) meetkit_region:node_last_heard",
          th.failover_after_s, "warning",
          "node {{ $labels.node }} is on gateway {{ $labels.gateway }}, broker {{ $value }} of its list, not its own")
    _rule(lines, th, "MeetkitRolloutHalted", f'meetkit_rollout_state{{{j},state="halted"}} == 1', 0, "warning",
          "gateway {{ $labels.gateway }}: rollout {{ $labels.rollout }} of {{ $labels.release }} halted")
    return "\n".join(lines) + "\n"


def prometheus(plan: Plan, out: Path, th: Thresholds, alertmanagers: Sequence[str] = ()) -> list[Path]:
    th.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rules = alerts_yml(plan, th)
    (out / CONFIG_FILE).write_text(prometheus_yml(plan, th, list(alertmanagers)))
    (out / ALERTS_FILE).write_text(rules)
    return [out / CONFIG_FILE, out / ALERTS_FILE]
