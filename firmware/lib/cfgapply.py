# A configuration from the gateway (docs/payload.md, "Configuration"), its envelope already checked
# (mgmt.py): loaded when one arrives, dropped after. The node takes a version above the one it
# runs, merges the keys given into its config.json, checks the result with its own rules
# (config.py's check_node: the same a technician's config.json meets), keeps its current value
# for every key that fails and names it with the rule's reason, writes config.json whole (a
# temporary file, then one rename: a power cut leaves the old or the new), reports on `event`, and
# restarts once the interval it is measuring is spooled. No value is ever printed or sent: a
# reason names the key and the rule (never a password).
import json
import os
import console
from mgmt import event, status

PATH = "config.json"
_FIXED = ("node_id", "config_version")   # not settable over the air


def _key(problem):
    """'config.broker.tls: ...' -> ('broker', 'broker.tls: ...'); 'config.interval_s: 5 is ...' ->
    ('interval_s', '5 is ...'); other problems (node_id's) -> (None, None)."""
    if not problem.startswith("config."):
        return None, None
    p = problem[7:]
    i = 0
    while i < len(p) and p[i] not in ".[:":
        i += 1
    why = p[i + 2:] if p[i:i + 1] == ":" else p
    j = why.find("; measuring without")   # the node keeps its old value: it does not go without
    return p[:i], why[:j] if j >= 0 else why


def apply(host, body):
    version = body.get("version")
    new = body.get("config")
    if type(version) is not int or not isinstance(new, dict):
        event(host, {"kind": "config", "state": "refused", "reason": "not a configuration (version, config)"})
        return
    running = host.cfg.get("config_version", 0)
    if version <= running:
        if version < running:   # the same one again is the retained message at every connect
            console.warn("config: version %d refused: it runs %d" % (version, running))
            event(host, {"kind": "config", "state": "refused", "version": version,
                        "reason": "version %d is not above the %d it runs" % (version, running)})
        return
    try:
        with open(PATH) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict):
        raw = {}
    import config
    refused = {}
    merged = dict(raw)
    for k in new:
        if k in _FIXED:
            if new[k] != raw.get(k):
                refused[k] = "cannot be changed over the air"
        elif k in config.DEFAULTS or k in ("wifi", "broker"):
            merged[k] = new[k]
        else:
            refused[k] = "not a setting of this firmware (%s)" % config.FW_VERSION
    problems = []
    config.check_node(merged, problems, "000000000000", not host.uplink.lan)
    for p in problems:
        k, why = _key(p)
        if k in new and k not in refused:
            refused[k] = why
            if k in raw:
                merged[k] = raw[k]
            else:
                del merged[k]
    del config
    import sys
    del sys.modules["config"]
    applied = [k for k in new if k not in refused]
    changed = [k for k in applied if merged.get(k) != raw.get(k)]
    merged["config_version"] = version
    try:
        with open(PATH + ".new", "w") as f:
            json.dump(merged, f)
        os.rename(PATH + ".new", PATH)
    except OSError as e:
        console.error("config: version %d not written: %r" % (version, e))
        event(host, {"kind": "config", "state": "refused", "version": version,
                    "reason": "config.json not written: %r" % (e,)})
        return
    console.info("config: version %d: applied %s%s" % (version, ", ".join(applied) or "nothing",
                                                       "; refused " + "; ".join("%s: %s" % kv for kv in refused.items())
                                                       if refused else ""))
    event(host, {"kind": "config", "version": version, "applied": applied, "refused": refused})
    host.cfg["config_version"] = host.uplink.meta["cfg"] = version
    if changed:
        host.restart_why = "configuration %d (%s)" % (version, ", ".join(changed))
    else:
        status(host)
