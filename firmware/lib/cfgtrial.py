# A remote configuration on trial (docs/payload.md, "Configuration"): one that changes how the node
# reaches the gateway (KEYS) must prove itself, as a new app does (trial.py), or the node puts the
# previous configuration back by itself: a wrong Wi-Fi network or broker never strands a node.
# Loaded only when needed (heap): by cfgapply.py when a configuration comes, by boot.py at a start
# when config.json.old is on the flash (dropped after), by aftercare.py while a trial runs (node.py
# starts aftercare when config.json.old is there). A revert is reported by aftercare.py when it
# runs anyway, else by cfgapply.py when the retained configuration comes at the connection. Every
# line added to node.py moves the heap's fragmentation: a form that took one more `if` there left a
# release's 2 KB pieces no room (tests/sim/test_fleet_trial.py); measure a change.
#
# Files at the flash's root, each written whole (a temporary file, then one rename):
#   config.json.old  the previous configuration, byte for byte: there while a configuration is on
#                    trial. THE STATE: a trial runs while config.json.old is there and its
#                    config_version differs from config.json's; the same version (a cut before the
#                    switch) is a leftover, removed at the next start.
#   config.trial     JSON {"version", "back_to", "boots", "spent", "bound", "digest", "broker"}: the
#                    trial's counts. "spent": seconds run under it, saved every SAVE_S and counted
#                    across restarts, so a power cut leaves the trial running and the bound still
#                    holds; "boots": starts under it (more than STARTS: reverted at the start, a
#                    configuration that crashes the node cannot loop); "broker": it was reached.
#   config.reverted  JSON {"version", "back_to", "reason", "digest"}: written FIRST by a revert (its
#                    commit point), then config.trial removed, then config.json.old renamed over
#                    config.json; a start that finds it naming config.json's version finishes.
#                    Reported on `event` once connected, then renamed to
#   config.refused   the same: the version the node refused by reverting. The retained configuration
#                    comes again at every connect: that version with the same content (digest) is
#                    not taken again. A newer version applied removes both.
# Order of an apply on trial (cfgapply.py): config.json.old, config.trial, then config.json (the
# switch). A proof: config.json.old removed (the commit point), then config.trial.
import json
import os

CFG = "config.json"
OLD = "config.json.old"
TRIAL = "config.trial"
REVERTED = "config.reverted"
REFUSED = "config.refused"
# What takes a node off the air when wrong: no network, no broker, topics the gateway does not
# read, no clock (records go out only once the clock is known: NTP)
KEYS = ("wifi", "broker", "topic_prefix", "ntp_host")
STARTS = 3
SAVE_S = 30


def _load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def write(p, obj):
    """Whole or not at all: a temporary file, then one rename in the same folder."""
    with open(p + ".tmp", "w") as f:
        if isinstance(obj, str):
            f.write(obj)
        else:
            json.dump(obj, f)
    os.rename(p + ".tmp", p)


def _remove(p):
    try:
        os.remove(p)
    except OSError:
        pass


def version_of(p):
    d = _load(p)
    return d.get("config_version", 0) if isinstance(d, dict) else None


def digest(config):
    """Tells one configuration's content from another (the same version sent with other content
    after the gateway lost its database is a new configuration)."""
    import hashlib
    import binascii
    return binascii.hexlify(hashlib.sha256(json.dumps(config).encode()).digest()[:8]).decode()


def refused(version, dg):
    """The configuration `version` with digest `dg` is the one the node reverted."""
    for p in (REVERTED, REFUSED):
        r = _load(p)
        if isinstance(r, dict) and r.get("version") == version and r.get("digest") == dg:
            return True
    return False


def on_trial():
    """(version on trial, the previous version), or None."""
    o = version_of(OLD)
    if o is None:
        return None
    c = version_of(CFG)
    return None if c is None or c == o else (c, o)


def state():
    """config.trial for the configuration on trial (made afresh when it names another)."""
    v = on_trial()
    if v is None:
        return None
    t = _load(TRIAL)
    if not isinstance(t, dict) or t.get("version") != v[0]:
        t = {"version": v[0], "back_to": v[1], "boots": 0, "spent": 0}
    return t


def boot():
    """At a start, before config.json is read: finish what a power cut interrupted, count the
    start of a trial, revert after STARTS starts. Says what it did on the console."""
    o = version_of(OLD)
    c = version_of(CFG)
    if o is None or c == o:   # nothing on trial, or an apply cut before its switch
        _remove(OLD)
        _remove(TRIAL)
        return
    r = _load(REVERTED)
    if c is None or isinstance(r, dict) and r.get("version") == c:
        _finish()   # a revert cut short (or config.json unreadable: the previous one is whole)
        print("config: back on version %d" % o)
        return
    t = state()
    t["boots"] = t.get("boots", 0) + 1
    if t["boots"] > STARTS:
        revert(t, "not proved in %d starts under version %d" % (STARTS, c))
        print("config: version %d reverted to %d: not proved in %d starts" % (c, o, STARTS))
        return
    write(TRIAL, t)
    print("config: version %d on trial, start %d of %d" % (c, t["boots"], STARTS))


def revert(t, reason):
    """Put the previous configuration back: config.reverted (the commit point), the rename, then
    config.trial goes. The caller restarts (config.json is read at a start only)."""
    write(REVERTED, {"version": t["version"], "back_to": t["back_to"], "reason": reason[:200],
                     "digest": t.get("digest")})
    _finish()


def _finish():
    _remove(TRIAL)   # first: config.json.old (with config.reverted) says what is left to do
    if exists(OLD):
        os.rename(OLD, CFG)


def prove():
    _remove(OLD)   # the commit point: from here the configuration stays
    _remove(TRIAL)   # left by a power cut just before: unread without config.json.old, the next apply removes it


class Running:
    """The trial while the node runs (aftercare.py steps it once a second)."""

    def __init__(self, host):
        t = state() or {}
        self.t = t
        self.bound = t.get("bound") or host.cfg["config_trial_s"]
        self.spent = t.get("spent", 0)

    def step(self, host, connected, acked):
        """True when the trial is over: proved, or reverted (the node then restarts)."""
        if host.restart_why:   # a newer configuration applied, or a revert: the restart decides
            return False
        import console
        import mgmt
        t = self.t
        v = t.get("version", host.cfg["config_version"])
        if connected and not t.get("broker"):
            t["broker"] = 1
            t["spent"] = self.spent + host.up_s
            write(TRIAL, t)
        # safe mode sends no batches: there the broker reached proves the link
        if connected and (acked or host.mode == "safe"):
            prove()
            console.info("config: version %d proved: the previous configuration is deleted" % v)
            mgmt.event(host, {"kind": "config", "state": "proved", "version": v})
            return True
        spent = self.spent + host.up_s
        if spent >= self.bound:
            why = "%s within %d s under version %d" % (
                "no batch acknowledged" if t.get("broker") else "no broker", self.bound, v)
            revert(t, why)
            back = t.get("back_to", 0)
            console.error("config: version %d reverted to %d: %s; restarting on it" % (v, back, why))
            host.cfg["config_version"] = host.uplink.meta["cfg"] = back
            host.restart_why = "configuration %d reverted" % v
            return True
        if host.up_s % SAVE_S == 0:
            t["spent"] = spent
            write(TRIAL, t)
        return False


def report(host):
    """The revert said on `event` (once per start: it waits in the uplink's events while the
    broker is away). Then reported()."""
    r = _load(REVERTED)
    if isinstance(r, dict):
        import mgmt
        mgmt.event(host, {"kind": "config", "state": "reverted", "version": r.get("version"),
                          "back_to": r.get("back_to"), "reason": r.get("reason") or "reverted"})


def reported():
    """config.reverted becomes config.refused: said (a power cut before says it again)."""
    if exists(REVERTED):
        os.rename(REVERTED, REFUSED)
