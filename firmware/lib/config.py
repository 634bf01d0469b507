# The node's configuration: config.json (this node: id, Wi-Fi, broker, intervals) and board.json
# (this board: pins, sensors, microphone), both on the flash. A bad or missing field is reported on
# the console and replaced by a safe default where one exists, so the node keeps measuring what it
# can; only what cannot work (no Wi-Fi settings: no uplink) is switched off. A board file that
# cannot be used at all (missing, not JSON, made for another chip) stops the node from measuring:
# the pins could be wrong for this board, and driving a pin that is wired as an output could harm it.
import json
import console

FW_VERSION = "0.2.0"

DEFAULTS = {
    "interval_s": 60,
    "climate_every_s": 5,
    "topic_prefix": "meetkit",
    "ntp_host": "pool.ntp.org",
    "ntp_every_s": 3600,
    "noise_offset_db": 0.0,
    "rh_high_pct": 85,
    "spool_kb": 1700,   # about 64,000 records of 27 bytes (PM, climate, noise): 44 days at 1 minute
    "trial_s": 900,     # a new app not proved within this (a batch acknowledged, its self-test) is rolled back
    "config_trial_s": 300,   # a remote configuration that changes the link, not proved within this, is reverted
    "failover_after_s": 120,   # the broker in use unreachable this long: the next of the `broker` list
    "failback_every_s": 600,   # while on another than the first (home), try the home broker this often
    "batch_records": 1,   # records per batch: more for a metered link (fewer bytes, later delivery)
    "payload": 2,   # payload v2, a third of v1's bytes (docs/payload.md); 1: v1, for a gateway older than v2
}

PM_TYPES = ("pms5003", "pms7003", "sds011")
MIC_TYPES = ("ics43434", "inmp441")
# Self-noise in dB(A) SPL: 94 dB minus the datasheet's A-weighted signal-to-noise ratio (65, 61)
MIC_FLOOR_DB = {"ics43434": 29.0, "inmp441": 33.0}


def _read_json(path, problems):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        problems.append("%s: missing" % path)
    except ValueError:
        problems.append("%s: not valid JSON" % path)
    return None


def _valid_id(s):
    if not isinstance(s, str) or not 1 <= len(s) <= 32:
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "-"):
            return False
    return True


def _int(d, key, lo, hi, problems, where):
    v = d.get(key)
    if type(v) is int and lo <= v <= hi:
        return v
    problems.append("%s.%s: %r is not a whole number from %d to %d" % (where, key, v, lo, hi))
    return None


def chip_mcu():
    """The chip this runs on ("esp32", "esp32s3", ...) from os.uname().machine, e.g. "Generic ESP32
    module with ESP32"; None where the port does not say."""
    try:
        import os
        m = os.uname().machine
    except (AttributeError, ImportError):
        return None
    i = m.rfind(" with ")
    return m[i + 6:].lower() if i >= 0 else None


def load_board(path, problems, chip=None):
    """The board file's usable parts (boardfile.py, loaded for this and dropped: its tables are
    not needed once the node runs)."""
    import sys
    import boardfile
    try:
        return boardfile.load_board(path, problems, chip)
    finally:
        del sys.modules["boardfile"]


def load_node(path, problems, chip_id, wifi=True):
    """Return the node config with defaults filled in; never raises. `wifi`: the board's network
    is Wi-Fi (an Ethernet board needs no wifi section)."""
    return check_node(_read_json(path, problems), problems, chip_id, wifi)


def check_node(raw, problems, chip_id, wifi=True):
    """config.json's content (a dict) checked by the node's rules: the config with defaults filled
    in, each problem named by its key ("config.<key>...: why"; cfgapply.py refuses a remote
    setting by it). Wi-Fi networks and brokers may each be one object or a list of them: the
    first usable one is cfg["wifi"] / cfg["broker"], all are in "wifis" / "brokers" (the
    broker list the uplink fails over along, failover.py; at most 16)."""
    if not isinstance(raw, dict):
        raw = {}
    cfg = dict(DEFAULTS)
    cfg["config_version"] = 0   # the remote configuration's version it runs (0: never set remotely)
    node_id = raw.get("node_id")
    if _valid_id(node_id):
        cfg["node_id"] = node_id
    else:
        cfg["node_id"] = "esp32-" + chip_id
        problems.append("node_id: %r is not 1-32 of a-z, 0-9, '-'; using %s" % (node_id, cfg["node_id"]))
    for key, lo, hi in (("interval_s", 10, 3600), ("climate_every_s", 1, 600), ("ntp_every_s", 60, 86400),
                        ("rh_high_pct", 50, 100), ("spool_kb", 32, 16384), ("trial_s", 120, 86400),
                        ("config_trial_s", 60, 3600), ("failover_after_s", 30, 3600),
                        ("failback_every_s", 60, 86400), ("batch_records", 1, 15), ("payload", 1, 2),
                        ("config_version", 0, 0x3FFFFFFF)):
        if key in raw:
            v = _int(raw, key, lo, hi, problems, "config")
            if v is not None:
                cfg[key] = v
    off = raw.get("noise_offset_db", 0.0)
    if isinstance(off, (int, float)) and not isinstance(off, bool) and -20 <= off <= 20:
        cfg["noise_offset_db"] = float(off)
    else:
        problems.append("config.noise_offset_db: %r is not a number from -20 to 20" % (off,))
    for key in ("topic_prefix", "ntp_host"):
        if key in raw:
            if isinstance(raw[key], str) and raw[key]:
                cfg[key] = raw[key]
            else:
                problems.append("config.%s: must be a non-empty string" % key)
    cfg["wifis"] = _each(raw, "wifi", _wifi, problems)
    cfg["wifi"] = cfg["wifis"][0] if cfg["wifis"] else None
    if cfg["wifi"] is None and wifi and "wifi" not in raw:
        problems.append("config.wifi.ssid: missing; measuring without an uplink")
    cfg["brokers"] = _each(raw, "broker", _broker, problems)
    if len(cfg["brokers"]) > 16:   # the status's `via` is 0..15
        problems.append("config.broker: more than 16 usable entries; using the first 16")
        del cfg["brokers"][16:]
    cfg["broker"] = cfg["brokers"][0] if cfg["brokers"] else None
    if "broker" not in raw:
        problems.append("config.broker.host: missing; measuring without an uplink")
    return cfg


def _each(raw, key, check, problems):
    """The usable entries of config[key]: one object, or a non-empty list of them. An entry that
    fails is named ("config.wifi[1].ssid: ...") and left out; none left: no uplink."""
    if key not in raw:
        return []
    v = raw[key]
    one = isinstance(v, dict)
    if one:
        v = [v]
    elif not isinstance(v, list) or not v:
        problems.append("config.%s: not an object or a non-empty list of them; measuring without an uplink" % key)
        return []
    out = []
    for i in range(len(v)):
        where = "config.%s" % key if one else "config.%s[%d]" % (key, i)
        e = check(v[i], problems, where) if isinstance(v[i], dict) else \
            problems.append("%s: not an object; measuring without an uplink" % where)
        if e is not None:
            out.append(e)
    if not out and not one:
        problems.append("config.%s: no usable entry; measuring without an uplink" % key)
    return out


def _wifi(w, problems, where):
    """A network {"ssid", "password"}, or None. Never the password's value in a message."""
    if not isinstance(w.get("ssid"), str) or not w["ssid"]:
        problems.append("%s.ssid: missing; measuring without an uplink" % where)
        return None
    pw = w.get("password") or ""
    if not isinstance(pw, str):
        problems.append("%s.password: must be a string; measuring without an uplink" % where)
        return None
    return {"ssid": w["ssid"], "password": pw}


def _broker(broker, problems, where):
    """A broker, or None (no uplink) where guessing could send the password in clear. Messages
    name the keys, never a password's value."""
    if not isinstance(broker.get("host"), str) or not broker["host"]:
        problems.append("%s.host: missing; measuring without an uplink" % where)
        return None
    tls = broker.get("tls", False)
    if tls is not True and tls is not False:
        problems.append("%s.tls: %r is not true or false; measuring without an uplink" % (where, tls))
        return None
    b = {"host": broker["host"], "port": 8883 if tls else 1883, "user": broker.get("user"),
         "password": broker.get("password"), "keepalive": 90, "tls": tls, "ca": broker.get("ca", "ca.der")}
    for key in ("user", "password", "ca"):
        if b[key] is not None and (not isinstance(b[key], str) or not b[key]):
            problems.append("%s.%s: must be a non-empty string; measuring without an uplink" % (where, key))
            return None
    if b["password"] is not None and b["user"] is None:
        problems.append("%s.password: set, but %s.user is not; measuring without an uplink" % (where, where[7:]))
        return None
    if b["user"] is not None and b["password"] is None:  # umqtt would fail on it at every connect
        problems.append("%s.password: missing, but %s.user is set; measuring without an uplink" % (where, where[7:]))
        return None
    if "port" in broker:
        p = _int(broker, "port", 1, 65535, problems, where)
        if p is not None:
            b["port"] = p
    return b


def load(config_path="config.json", board_path="board.json", chip_id="000000000000", chip=-1):
    """(cfg, board, problems): board["problems"] and cfg["problems"] hold each file's own (the
    self-test's board and config lines), `problems` both. `chip`: the chip's mcu (default: ask
    os.uname(); None: do not compare)."""
    bprob = []
    cprob = []
    board = load_board(board_path, bprob, chip_mcu() if chip == -1 else chip)
    net = board["net"]
    cfg = load_node(config_path, cprob, chip_id, net is not None and net["type"] == "wifi")
    board["problems"] = bprob
    cfg["problems"] = cprob
    for p in cprob + bprob:
        console.warn("config: " + p)
    return cfg, board, cprob + bprob


def start(chip_id):
    """load(), then the self-test's board and config lines; (cfg, board). A board file the node
    cannot use: its E line, and board["usable"] False (the caller measures nothing)."""
    cfg, board, _ = load(chip_id=chip_id)
    if board["usable"] and not board["problems"]:
        console.check("board", True, "%s (%s)" % (board["board"], board["name"]))
    else:
        console.check("board", False, "; ".join(board["problems"]))
    if not board["usable"]:
        # Measuring with pins that may be wrong for this board could harm what is wired to it.
        # No reset either: the technician needs the REPL to put the right board.json there.
        console.error("board.json cannot be used: measuring nothing. Copy this board's file to "
                      "board.json and reset the node; the REPL is open meanwhile")
        return cfg, board
    if cfg["problems"]:
        console.check("config", False, "; ".join(cfg["problems"]))
    else:
        console.check("config", True, "node %s, interval %d s" % (cfg["node_id"], cfg["interval_s"]))
    return cfg, board

