# The board file (board.json): what is wired where, checked against the chip the node runs on.
# Loaded by config.load_board at start and dropped after: the tables cost heap the node needs.
# A section that cannot be used is dropped with a message naming the key; a file that cannot be
# used at all (missing, not JSON, unknown mcu, made for another chip) gives "usable": False.
from config import _read_json, _int, PM_TYPES, MIC_TYPES, MIC_FLOOR_DB

# Per chip, one character per GPIO 0..48: "o" in and out, "i" input only, "f" the flash (or
# PSRAM), "r" the REPL (UART0, the S3's USB), "." no such pin. Strapping pins are usable (docs).
_GPIO = {
    "esp32": "ororoo" + "ffffff" + "oooooooo" + "." + "ooo" + "." + "ooo" + "...." + "oo" + "iiiiii" + "." * 9,
    "esp32s3": "o" * 19 + "rr" + "o" + "...." + "fffffff" + "o" * 10 + "rr" + "oooo",
}
_MCU_NAME = {"esp32": "ESP32", "esp32s3": "ESP32-S3"}
# The ESP32's Ethernet MAC (RMII) has fixed pins besides the ones the board file names
_RMII = ((19, "TXD0"), (21, "TX_EN"), (22, "TXD1"), (25, "RXD0"), (26, "RXD1"), (27, "CRS_DV"))
LAN_PHYS = ("LAN8710", "LAN8720", "IP101", "RTL8201", "DP83848", "KSZ8041", "KSZ8081")


def _pins(sec, where, roles, mcu, claimed, problems):
    """Check the section's pins (roles: (key, True for an output) pairs) and claim
    them; False (nothing claimed) when one cannot be used."""
    kinds = _GPIO[mcu]
    mine = {}
    ok = True
    for key, out in roles:
        if key not in sec or (sec[key] is None and key == "power"):
            continue
        v = sec[key]
        name = "%s.%s" % (where, key)
        k = kinds[v] if type(v) is int and 0 <= v < len(kinds) else "."
        if k == ".":
            problems.append("%s: %r is not a GPIO of the %s" % (name, v, _MCU_NAME[mcu]))
        elif k == "f":
            problems.append("%s: GPIO %d belongs to the %s's flash" % (name, v, _MCU_NAME[mcu]))
        elif k == "r":
            problems.append("%s: GPIO %d is the %s's console (REPL)" % (name, v, _MCU_NAME[mcu]))
        elif out and k == "i":
            problems.append("%s: GPIO %d is input only (ESP32 GPIO 34-39): it cannot drive %s"
                            % (name, v, key))
        elif v in claimed or v in mine:
            problems.append("%s: GPIO %d is already %s" % (name, v, claimed.get(v) or mine[v]))
        else:
            mine[v] = name
            continue
        ok = False
    if ok:
        claimed.update(mine)
    return ok


def _section(board, key, problems, needed, mcu, claimed, roles, ids=None):
    """The section as a dict when its pins are usable, else None (with the reasons)."""
    sec = board.get(key)
    if sec is None:
        return None
    where = "board." + key
    if not isinstance(sec, dict):
        problems.append("%s: must be an object" % where)
        return None
    for pin in needed:
        if pin not in sec:
            problems.append("%s.%s: missing" % (where, pin))
            return None
    if ids is not None:
        k, allowed = ids
        if sec.get(k, allowed[0]) not in allowed:
            problems.append("%s.%s: %r is not one of %s" % (where, k, sec.get(k), ", ".join(str(a) for a in allowed)))
            return None
    if not _pins(sec, where, roles, mcu, claimed, problems):
        return None
    return sec


def _net(board, mcu, claimed, problems):
    net = board.get("net")
    if net is None or net == {"type": "wifi"}:
        return {"type": "wifi"}
    if not isinstance(net, dict) or net.get("type") not in ("wifi", "lan"):
        problems.append("board.net.type: %r is not wifi or lan; no uplink"
                        % (net.get("type") if isinstance(net, dict) else net,))
        return None
    if net["type"] == "wifi":
        return {"type": "wifi"}
    if mcu != "esp32":
        problems.append("board.net.type: lan needs the ESP32's Ethernet MAC; the %s has none; no uplink"
                        % _MCU_NAME[mcu])
        return None
    if net.get("phy") not in LAN_PHYS:
        problems.append("board.net.phy: %r is not one of %s; no uplink" % (net.get("phy"), ", ".join(LAN_PHYS)))
        return None
    if type(net.get("phy_addr")) is not int or not 0 <= net["phy_addr"] <= 31:
        problems.append("board.net.phy_addr: %r is not 0 to 31; no uplink" % (net.get("phy_addr"),))
        return None
    if net.get("ref_clk_mode") not in ("in", "out"):
        problems.append("board.net.ref_clk_mode: %r is not in or out; no uplink" % (net.get("ref_clk_mode"),))
        return None
    for key in ("mdc", "mdio", "ref_clk"):
        if key not in net:
            problems.append("board.net.%s: missing; no uplink" % key)
            return None
    rmii = {}
    for pin, sig in _RMII:
        rmii[pin] = "the Ethernet's RMII %s" % sig
    if not _pins(net, "board.net", (("mdc", True), ("mdio", True), ("power", True),
                                    ("ref_clk", net["ref_clk_mode"] == "out")), mcu, rmii, problems):
        problems.append("board.net: unusable; no uplink")
        return None
    claimed.update(rmii)
    return net


def _led(board, mcu, claimed, problems):
    led = board.get("led")
    if led is None:
        return None
    if type(led) is int:  # the first board files' form: a plain GPIO, active high
        led = {"pin": led}
    if not isinstance(led, dict) or led.get("type", "gpio") not in ("gpio", "ws2812"):
        problems.append("board.led: %r is not {\"pin\": <gpio>} with type gpio or ws2812" % (led,))
        return None
    if "pin" not in led:
        problems.append("board.led.pin: missing")
        return None
    if not _pins(led, "board.led", (("pin", True),), mcu, claimed, problems):
        return None
    return {"pin": led["pin"], "type": led.get("type", "gpio")}


def load_board(path, problems, chip=None):
    """Return the usable parts of the board file, with "usable": False (measure nothing) when the
    file as a whole cannot be used: missing, not JSON, no known mcu, or made for another chip
    (`chip`, as chip_mcu() says). A section that cannot be used is dropped with a message."""
    board = _read_json(path, problems)
    out = {"board": "unknown", "name": "", "usable": False, "net": None, "led": None}
    if not isinstance(board, dict):
        if board is not None:
            problems.append("%s: must be an object" % path)
        return out
    bid = board.get("board")
    out["board"] = bid if isinstance(bid, str) and bid else "unknown"
    out["name"] = board.get("name") if isinstance(board.get("name"), str) else ""
    mcu = board.get("mcu")
    if mcu not in _GPIO:
        problems.append("board.mcu: %r is not one of %s" % (mcu, ", ".join(sorted(_GPIO))))
        return out
    if chip is not None and chip != mcu:
        problems.append("board.mcu: %r, but this chip is an %s: this board file is for another board"
                        % (mcu, _MCU_NAME.get(chip, chip.upper())))
        return out
    out["mcu"] = mcu
    out["usable"] = True
    claimed = {}
    out["net"] = _net(board, mcu, claimed, problems)
    i2c = _section(board, "i2c", problems, ("scl", "sda"), mcu, claimed, (("scl", True), ("sda", True)),
                   ("id", (0, 1)))
    clim = board.get("climate")
    if clim is not None:
        if not isinstance(clim, dict) or clim.get("type") != "bme280":
            problems.append("board.climate.type: %r is not a supported sensor (bme280)"
                            % (clim.get("type") if isinstance(clim, dict) else clim))
        elif clim.get("addr", 0x76) not in (0x76, 0x77):
            problems.append("board.climate.addr: %r is not a BME280's address (118 = 0x76, 119 = 0x77)"
                            % (clim.get("addr"),))
        elif i2c is None:
            problems.append("board.climate: needs an i2c section")
        else:
            out["i2c"] = i2c
            out["climate"] = {"type": "bme280", "addr": clim.get("addr", 0x76)}
    pm = board.get("pm")
    if isinstance(pm, dict) and pm.get("type") not in PM_TYPES:
        problems.append("board.pm.type: %r is not one of %s" % (pm.get("type"), ", ".join(PM_TYPES)))
    else:
        pm = _section(board, "pm", problems, ("uart", "tx", "rx"), mcu, claimed,
                      (("tx", True), ("rx", False), ("set", True), ("reset", True)), ("uart", (1, 2)))
        if pm is not None:
            out["pm"] = pm
    mic = board.get("mic")
    if isinstance(mic, dict):
        sens = mic.get("sens_dbfs")
        if mic.get("type") not in MIC_TYPES:
            problems.append("board.mic.type: %r is not one of %s" % (mic.get("type"), ", ".join(MIC_TYPES)))
            mic = None
        elif not isinstance(sens, (int, float)) or not -60 <= sens <= 0:
            problems.append("board.mic.sens_dbfs: %r is not a sensitivity in dBFS (-60 to 0)" % (sens,))
            mic = None
        elif mic.get("rate", 48000) != 48000:
            # the A-weighting filter's coefficients are for 48 kHz
            problems.append("board.mic.rate: %r is not supported (48000)" % (mic.get("rate"),))
            mic = None
        elif not isinstance(mic.get("floor_db", 0), (int, float)) or not 0 <= mic.get("floor_db", 0) <= 80:
            problems.append("board.mic.floor_db: %r is not a self-noise level in dB(A) (0 to 80)"
                            % (mic.get("floor_db"),))
            mic = None
        elif "ibuf" in mic and _int(mic, "ibuf", 8192, 131072, problems, "board.mic") is None:
            mic = None
    if mic is not None:
        mic = _section(board, "mic", problems, ("i2s", "sck", "ws", "sd"), mcu, claimed,
                       (("sck", True), ("ws", True), ("sd", False)), ("i2s", (0, 1)))
        if mic is not None:
            mic = dict(mic)
            mic["floor_db"] = float(mic.get("floor_db", MIC_FLOOR_DB[mic["type"]]))
            out["mic"] = mic
    out["led"] = _led(board, mcu, claimed, problems)
    return out
