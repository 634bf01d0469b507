# A configuration from the gateway (docs/payload.md, "Configuration"), its envelope already checked
# (mgmt.py): loaded when one arrives, dropped after. The node takes a version above the one it
# runs, merges the keys given into its config.json, checks the result with its own rules
# (config.py's check_node: the same a technician's config.json meets), keeps its current value
# for every key that fails and names it with the rule's reason, writes config.json whole (a
# temporary file, then one rename: a power cut leaves the old or the new), reports on `event`, and
# restarts once the interval it is measuring is spooled. No value is ever printed or sent: a
# reason names the key and the rule (never a password). A configuration that changes how the node
# reaches the gateway (cfgtrial.KEYS), or any while one is on trial, runs on trial: the previous
# config.json is kept, and put back by the node itself when the new one has no batch acknowledged
# within config_trial_s (cfgtrial.py). The version it reverted is not taken again.
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
    import cfgtrial
    dg = cfgtrial.digest(new)
    if cfgtrial.refused(version, dg):   # the retained message at every connect: it was reverted
        console.info("config: version %d is the one reverted: not taken again" % version)
        cfgtrial.report(host)   # the revert not yet said: now (the node just connected)
        if not host.uplink.events:   # out: the broker took it
            cfgtrial.reported()
        return
    try:
        with open(PATH) as f:
            text = f.read()
        raw = json.loads(text)
    except (OSError, ValueError):
        raw = text = None
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
    cfg = config.check_node(merged, problems, "000000000000", not host.uplink.lan)
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
    on = cfgtrial.on_trial()
    trial = on is not None or text is not None and [k for k in cfgtrial.KEYS if merged.get(k) != raw.get(k)]
    try:
        if not trial:   # a trial's note a power cut left after its proof
            try:
                os.remove(cfgtrial.TRIAL)
            except OSError:
                pass
        if trial:   # the previous configuration kept, the trial's note, then the switch
            if on is None:
                cfgtrial.write(cfgtrial.OLD, text)
            cfgtrial.write(cfgtrial.TRIAL, {"version": version, "back_to": on[1] if on else running, "boots": 0,
                                            "spent": 0, "bound": cfg["config_trial_s"], "digest": dg})
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
    ev = {"kind": "config", "version": version, "applied": applied, "refused": refused}
    if trial:
        ev["trial_s"] = cfg["config_trial_s"]
        console.info("config: version %d on trial: reverted unless a batch is acknowledged within %d s"
                     % (version, cfg["config_trial_s"]))
    event(host, ev)
    cfgtrial.report(host)   # a revert not yet said: now, before its note goes
    for p in (cfgtrial.REVERTED, cfgtrial.REFUSED):
        try:
            os.remove(p)
        except OSError:
            pass
    host.cfg["config_version"] = host.uplink.meta["cfg"] = version
    if changed or trial:
        host.restart_why = "configuration %d (%s)" % (version, ", ".join(changed) or "on trial")
    else:
        status(host)
