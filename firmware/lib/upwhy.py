# Why the uplink (uplink.py) fails, in words a technician can act on: the texts for the console and
# the self-test, and the TLS context (made at the start and at a failover's switch, with its
# reasons). Loaded only for that and dropped after: its texts are heap the node needs.
import time
import network
import console
from umqtt.simple import MQTTException

# CONNACK return codes (MQTT 3.1.1): what a technician can act on
_REFUSED = {1: "protocol version", 2: "client id rejected", 3: "broker unavailable",
            4: "bad user name or password", 5: "not authorised: check broker.user and broker.password"}
# WLAN.status() while not connected: the ESP32 port reports ESP-IDF's reason codes
_PASSWORD = "the access point refused the password: check wifi.password in config.json"
_WIFI = {201: "no access point of this name in range: check wifi.ssid in config.json",
         202: _PASSWORD, 15: _PASSWORD, 204: _PASSWORD,
         203: "the access point refused the association (full? a MAC filter?)",
         200: "the access point stopped answering",
         # STAT_CONNECTING: the official port reports 201/202 itself, other failures (a WPA2
         # handshake timing out on a wrong password, say) only as "still connecting"
         1001: "still trying: a wrong wifi.password, or the signal too weak (check both)"}


def why_down(up, now):
    """Why the network is not up, for the self-test: what the interface reports."""
    t = time.ticks_diff(now, up._down_since) // 1000
    try:
        st = up.iface.status()
    except (OSError, ValueError):
        st = None
    if up.lan:
        if st == getattr(network, "ETH_CONNECTED", 3):
            return "ethernet: link up but no address from DHCP for %d s" % t
        return "ethernet: no link for %d s: check the cable, the switch port and its PoE" % t
    return "wifi %s: no connection for %d s (status %s): %s" % (
        up.wifi["ssid"], t, st, _WIFI.get(st, "is the access point in range and on?"))


def why(e):
    """A connection's failure in one line; never the password (umqtt's exceptions do not carry it)."""
    if isinstance(e, MQTTException):
        rc = e.args[0] if e.args else None
        if rc == 0x80:
            return "broker refused the subscription to the acknowledgements (the ACL?)"
        return "broker refused the login, code %s: %s" % (rc, _REFUSED.get(rc, "unknown"))
    if isinstance(e, ValueError):  # mbedtls's text, e.g. "The certificate is not correctly signed..."
        return "tls: certificate rejected: " + " ".join(str(e.args[0] if e.args else e).split())
    if isinstance(e, AssertionError):
        return "no MQTT answer (is broker.tls right for this port?)"
    return repr(e)


def tls_context(ca_path):
    """An SSLContext that trusts only the lab CA (DER) and checks the broker's host name, or None
    with the reason on the console. Made once: the parsed CA stays with it."""
    import ssl  # only with TLS: the module and mbedtls's state cost memory
    try:
        with open(ca_path, "rb") as f:
            ca = f.read()
    except OSError:
        console.error("mqtt: tls: %s is missing on the flash: no uplink (copy the lab CA's ca.der "
                      "next to config.json)" % ca_path)
        console.check("broker", False, "tls: %s is missing on the flash: no uplink" % ca_path)
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=ca)
    except (ValueError, OSError) as e:
        console.error("mqtt: tls: %s is not a CA certificate in DER form (%s): no uplink" % (ca_path, e))
        console.check("broker", False, "tls: %s is not a CA certificate in DER form: no uplink" % ca_path)
        return None
    return ctx

