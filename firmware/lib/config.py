# The node's configuration: config.json (this node: id, Wi-Fi, broker, intervals) and board.json
# (this board: pins, sensors, microphone), both on the flash. A bad or missing field is reported on
# the console and replaced by a safe default where one exists, so the node keeps measuring what it
# can; only what cannot work (no Wi-Fi settings: no uplink) is switched off.
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
    "spool_kb": 1700,   # about 10,500 records of 165 bytes (PM, climate, noise): 7.3 days at 1 minute
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


def _section(board, key, problems, needed):
    sec = board.get(key)
    if sec is None:
        return None
    if not isinstance(sec, dict):
        problems.append("board.%s: must be an object" % key)
        return None
    for pin in needed:
        if _int(sec, pin, 0, 48, problems, "board." + key) is None:
            return None
    return sec


def load_board(path, problems):
    """Return the usable parts of the board file; unusable sections are dropped with a message."""
    board = _read_json(path, problems)
    if not isinstance(board, dict):
        if board is not None:
            problems.append("%s: must be an object" % path)
        return {"board": "unknown"}
    out = {"board": board.get("board", "unknown"), "led": board.get("led")}
    i2c = _section(board, "i2c", problems, ("scl", "sda"))
    clim = board.get("climate")
    if clim is not None:
        if not isinstance(clim, dict) or clim.get("type") != "bme280":
            problems.append("board.climate.type: %r is not a supported sensor (bme280)"
                            % (clim.get("type") if isinstance(clim, dict) else clim))
        elif i2c is None:
            problems.append("board.climate: needs an i2c section")
        else:
            out["i2c"] = i2c
            out["climate"] = {"type": "bme280", "addr": clim.get("addr", 0x76)}
    pm = _section(board, "pm", problems, ("uart", "tx", "rx"))
    if pm is not None:
        if pm.get("type") not in PM_TYPES:
            problems.append("board.pm.type: %r is not one of %s" % (pm.get("type"), ", ".join(PM_TYPES)))
        else:
            out["pm"] = pm
    mic = _section(board, "mic", problems, ("i2s", "sck", "ws", "sd"))
    if mic is not None:
        sens = mic.get("sens_dbfs")
        if mic.get("type") not in MIC_TYPES:
            problems.append("board.mic.type: %r is not one of %s" % (mic.get("type"), ", ".join(MIC_TYPES)))
        elif not isinstance(sens, (int, float)) or not -60 <= sens <= 0:
            problems.append("board.mic.sens_dbfs: %r is not a sensitivity in dBFS (-60 to 0)" % (sens,))
        elif mic.get("rate", 48000) != 48000:
            # the A-weighting filter's coefficients are for 48 kHz
            problems.append("board.mic.rate: %r is not supported (48000)" % (mic.get("rate"),))
        elif not isinstance(mic.get("floor_db", 0), (int, float)) or not 0 <= mic.get("floor_db", 0) <= 80:
            problems.append("board.mic.floor_db: %r is not a self-noise level in dB(A) (0 to 80)"
                            % (mic.get("floor_db"),))
        elif "ibuf" in mic and _int(mic, "ibuf", 8192, 131072, problems, "board.mic") is None:
            pass
        else:
            mic = dict(mic)
            mic["floor_db"] = float(mic.get("floor_db", MIC_FLOOR_DB[mic["type"]]))
            out["mic"] = mic
    return out


def load_node(path, problems, chip_id):
    """Return the node config with defaults filled in; never raises."""
    raw = _read_json(path, problems)
    if not isinstance(raw, dict):
        raw = {}
    cfg = dict(DEFAULTS)
    node_id = raw.get("node_id")
    if _valid_id(node_id):
        cfg["node_id"] = node_id
    else:
        cfg["node_id"] = "esp32-" + chip_id
        problems.append("node_id: %r is not 1-32 of a-z, 0-9, '-'; using %s" % (node_id, cfg["node_id"]))
    for key, lo, hi in (("interval_s", 10, 3600), ("climate_every_s", 1, 600), ("ntp_every_s", 60, 86400),
                        ("rh_high_pct", 50, 100), ("spool_kb", 32, 16384)):
        if key in raw:
            v = _int(raw, key, lo, hi, problems, "config")
            if v is not None:
                cfg[key] = v
    off = raw.get("noise_offset_db", 0.0)
    if isinstance(off, (int, float)) and -20 <= off <= 20:
        cfg["noise_offset_db"] = float(off)
    else:
        problems.append("config.noise_offset_db: %r is not a number from -20 to 20" % (off,))
    for key in ("topic_prefix", "ntp_host"):
        if key in raw:
            if isinstance(raw[key], str) and raw[key]:
                cfg[key] = raw[key]
            else:
                problems.append("config.%s: must be a non-empty string" % key)
    wifi = raw.get("wifi")
    if isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str) and wifi["ssid"]:
        cfg["wifi"] = {"ssid": wifi["ssid"], "password": wifi.get("password") or ""}
    else:
        cfg["wifi"] = None
        problems.append("config.wifi.ssid: missing; measuring without an uplink")
    broker = raw.get("broker")
    if isinstance(broker, dict) and isinstance(broker.get("host"), str) and broker["host"]:
        cfg["broker"] = _broker(broker, problems)
    else:
        cfg["broker"] = None
        problems.append("config.broker.host: missing; measuring without an uplink")
    return cfg


def _broker(broker, problems):
    """The broker section, or None (no uplink) where guessing could send the password in clear.
    Messages name the keys, never a password's value."""
    tls = broker.get("tls", False)
    if tls is not True and tls is not False:
        problems.append("config.broker.tls: %r is not true or false; measuring without an uplink" % (tls,))
        return None
    b = {"host": broker["host"], "port": 8883 if tls else 1883, "user": broker.get("user"),
         "password": broker.get("password"), "keepalive": 60, "tls": tls, "ca": broker.get("ca", "ca.der")}
    for key in ("user", "password", "ca"):
        if b[key] is not None and (not isinstance(b[key], str) or not b[key]):
            problems.append("config.broker.%s: must be a non-empty string; measuring without an uplink" % key)
            return None
    if b["password"] is not None and b["user"] is None:
        problems.append("config.broker.password: set, but broker.user is not; measuring without an uplink")
        return None
    if b["user"] is not None and b["password"] is None:  # umqtt would fail on it at every connect
        problems.append("config.broker.password: missing, but broker.user is set; measuring without an uplink")
        return None
    if "port" in broker:
        p = _int(broker, "port", 1, 65535, problems, "config.broker")
        if p is not None:
            b["port"] = p
    return b


def load(config_path="config.json", board_path="board.json", chip_id="000000000000"):
    problems = []
    cfg = load_node(config_path, problems, chip_id)
    board = load_board(board_path, problems)
    for p in problems:
        console.warn("config: " + p)
    return cfg, board, problems
