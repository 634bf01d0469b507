# Why a self-test item failed, in words a technician can act on (docs/technician.md, "The
# self-test"). Loaded only when something fails and dropped after (console.why): the
# texts cost heap the measuring needs. Never a secret in a text.
import time


def pm(s, now):
    dev = s.dev
    t = time.ticks_diff(now, s._last) // 1000
    if dev.checksum_errors + dev.bytes_skipped > s._bad0:
        if dev.checksum_errors:
            return "only damaged frames from the %s on %s for %d s (%d checksum errors): check its wiring" % (
                s.kind, s.where, t, dev.checksum_errors)
        return "unreadable data on %s for %d s: is a %s connected there?" % (s.where, t, s.kind)
    return "no data from the %s on %s for %d s: check its wiring (its TX to rx) and 5 V supply" % (
        s.kind, s.where, t)


def climate(s, e):
    try:
        found = s.i2c.scan()
    except OSError:
        found = []
    if s.addr in found:   # something answers there: the driver's reason (a wrong chip id)
        return "%s on %s" % (e.args[0] if e.args and isinstance(e.args[0], str) else repr(e), s.where)
    if found:
        return "no bme280 at 0x%02x on %s; the bus answers at %s: is climate.addr in board.json right?" % (
            s.addr, s.where, ", ".join("0x%02x" % a for a in found))
    return "no bme280 at 0x%02x on %s, and no device answers: check its wiring and 3.3 V supply" % (
        s.addr, s.where)


def mic(s, over_n):
    over, n = over_n
    if over * 100 > n:
        return "%s: %d of %d samples at full scale: a broken microphone or a wrong sens_dbfs" % (s.kind, over, n)
    return ("only zeros from the %s on %s: check its wiring (SD, SCK, WS), its L/R pin (to GND) and "
            "3.3 V supply" % (s.kind, s.where))


# WLAN.status() while not connected: the ESP32 port reports ESP-IDF's reason codes
_PASSWORD = "the access point refused the password: check wifi.password in config.json"
_WIFI = {201: "no access point of this name in range: check wifi.ssid in config.json",
         202: _PASSWORD, 15: _PASSWORD, 204: _PASSWORD,
         203: "the access point refused the association (full? a MAC filter?)",
         200: "the access point stopped answering"}


def network(u, now):
    import network as net
    t = time.ticks_diff(now, u._down_since) // 1000
    try:
        st = u.iface.status()
    except (OSError, ValueError):
        st = None
    if u.lan:
        if st == getattr(net, "ETH_CONNECTED", 3):
            return "ethernet: link up but no address from DHCP for %d s" % t
        return "ethernet: no link for %d s: check the cable, the switch port and its PoE" % t
    return "wifi %s: no connection for %d s (status %s): %s" % (
        u.wifi["ssid"], t, st, _WIFI.get(st, "is the access point in range and on?"))
