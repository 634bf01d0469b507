# `network` as on the ESP32, simulated: one access point that is there except during `wifi_down`
# faults. connect() brings the link up 1-3 s (virtual) later; a fault drops it and, as the ESP32
# reconnects by itself, it comes back 1-3 s after the fault unless the firmware disconnected.
# With sim.json "wifi" (simsetup sets _ap) only that SSID and password connect: another SSID
# reports STAT_NO_AP_FOUND, another password STAT_WRONG_PASSWORD, as the ESP32 port does.
# network.LAN and its constants come from simlan.py, on a board with an Ethernet PHY wired
# (simsetup adds them): while a LAN is active, sockets go over it.
import micropython
import simcore as _c

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204
AUTH_OPEN = 0
AUTH_WEP = 1
AUTH_WPA_PSK = 2
AUTH_WPA2_PSK = 3
AUTH_WPA_WPA2_PSK = 4
MODE_11B = 1
MODE_11G = 2
MODE_11N = 4

_ap = None               # (ssid, password) of the access point; None: any connects
_key = ""                # the password given to connect()
_lan = None              # the LAN interface, once made (simlan.py)
_host = "mpy-esp32"
_country = "EU"
_active = [False, False]
_want = False            # connect() called and no disconnect() since
_t_conn = 0              # when connect() was called (us)
_cfg = {"ssid": "", "channel": 6, "txpower": 20, "reconnects": -1, "pm": 1}


@micropython.native
def hostname(name=None):
    global _host
    if name is None:
        return _host
    _host = name


@micropython.native
def country(code=None):
    global _country
    if code is None:
        return _country
    _country = code


@micropython.native
def _refused():
    """The station's reason code when the access point will not have it, else None."""
    if _ap is None:
        return None
    if _cfg["ssid"] != _ap[0]:
        return STAT_NO_AP_FOUND
    return STAT_WRONG_PASSWORD if _key != _ap[1] else None


@micropython.native
def _link_t():
    """When the current link came up (us), or None while it is down: the LAN's while one is
    active, else the station's."""
    if _lan is not None and _lan._t is not None:
        return _lan.link_t()
    if not (_want and _active[0]) or _refused() is not None:
        return None
    t = _c.now
    s = _c.scen
    if s.fault("wifi_down", t / 1000000):
        return None
    start = _t_conn
    e = s.last_end("wifi_down", t / 1000000)
    if e is not None and e * 1000000 > start:
        start = int(e * 1000000)
    up = start + 1000000 + ((start // 1000) * 2654435761 + _c.seed) % 2000000
    return up if t >= up else None


@micropython.native
def _up():
    return _link_t() is not None


class WLAN:
    IF_STA = 0
    IF_AP = 1
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2

    @micropython.native
    def __init__(self, interface_id=0):
        if interface_id not in (0, 1):
            raise ValueError("invalid WLAN interface identifier")
        self._if = interface_id

    @micropython.native
    def active(self, v=None):
        global _want
        if v is None:
            return _active[self._if]
        _active[self._if] = bool(v)
        if not v and self._if == 0:
            _want = False

    @micropython.native
    def connect(self, ssid=None, key=None, *, bssid=None):
        global _want, _t_conn, _key
        if self._if:
            raise OSError("Wifi Invalid Interface")
        if not _active[0]:
            raise OSError("Wifi Not Started")
        if _want and not _up():
            raise OSError("Wifi Internal Error")  # an attempt is under way
        _c.tick()
        if ssid is not None:
            _cfg["ssid"] = ssid
        _key = key or ""
        _want = True
        _t_conn = _c.now

    @micropython.native
    def disconnect(self):
        global _want
        _want = False

    @micropython.native
    def isconnected(self):
        _c.tick()
        return self._if == 0 and _up()

    @micropython.native
    def status(self, param=None):
        _c.tick()
        if param is None:
            if self._if or not _active[0] or not _want:
                return STAT_IDLE
            if _up():
                return STAT_GOT_IP
            r = _refused()
            if r is not None and _c.now >= _t_conn + 2000000:   # after the scan and the handshake
                return r
            if _c.scen.fault("wifi_down", _c.t_s()):
                return STAT_NO_AP_FOUND
            return STAT_CONNECTING
        if param == "rssi":
            if not _up():
                raise OSError("Wifi Not Connected")
            return -64 + (_c.now // 7000000) % 5 - (_c.rand() & 1)
        if param == "stations":
            return []
        raise ValueError("unknown status param")

    @micropython.native
    def ifconfig(self, cfg=None):
        if cfg is not None:
            return
        if self._if:
            return ("192.168.4.1", "255.255.255.0", "192.168.4.1", "0.0.0.0")
        if not _up():
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return ("192.168.178.%d" % (20 + _c.chip_id[-1] % 200), "255.255.255.0", "192.168.178.1",
                "192.168.178.1")

    @micropython.native
    def ipconfig(self, *args, **kw):
        if args and args[0] == "addr4":
            c = self.ifconfig()
            return (c[0], c[1])
        if args and args[0] == "dhcp4":
            return True
        if args:
            raise ValueError("unexpected key")

    @micropython.native
    def config(self, *args, **kw):
        if kw:
            for k in kw:
                _cfg["ssid" if k == "essid" else k] = kw[k]
            return
        k = args[0]
        if k == "mac":
            m = bytearray(_c.chip_id)
            if self._if:
                m[5] = (m[5] + 1) & 0xFF
            return bytes(m)
        if k in ("essid", "ssid"):
            return _cfg["ssid"]
        if k in ("hostname", "dhcp_hostname"):
            return _host
        if k in _cfg:
            return _cfg[k]
        raise ValueError("unknown config param")

    @micropython.native
    def scan(self):
        if not _active[self._if]:
            raise OSError("Wifi Not Started")
        _c.advance(2200000)
        if _c.scen.fault("wifi_down", _c.t_s()):
            return []
        return [((_ap[0] if _ap else _cfg["ssid"] or "meetkit-lab").encode(), b"\x24\x0a\xc4\x7a\x00\x01", 6,
                 -63, AUTH_WPA2_PSK, False)]

