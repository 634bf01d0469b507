# network.LAN of the ESP32 port, simulated: the original ESP32's Ethernet MAC with an RMII PHY,
# wired as sim.json devices "lan" says (the board file's net section; runner.devices_for). The
# PHY answers only where it is wired (a wrong pin, address or PHY fails as the driver does). Its
# link is up 1.2 s after active(True), its DHCP address 0.3-1.3 s later, except during `lan_down`
# faults (a cable, a switch port): then it comes back the same way after the fault. simsetup
# imports this only for a board with a PHY (heap) and puts LAN and the constants into `network`.
import micropython
import simcore as _c
import network as _n

PHY_LAN8710 = 0
PHY_LAN8720 = 1
PHY_IP101 = 2
PHY_RTL8201 = 3
PHY_DP83848 = 4
PHY_KSZ8041 = 5
PHY_KSZ8081 = 6
ETH_INITIALIZED = 0
ETH_STARTED = 1
ETH_STOPPED = 2
ETH_CONNECTED = 3
ETH_DISCONNECTED = 4
ETH_GOT_IP = 5


@micropython.native
def _link_t(lan, part=2):
    """When the Ethernet link (part 1) or its address (part 2) came, or None."""
    if lan._t is None:
        return None
    t = _c.now
    s = _c.scen
    if s.fault("lan_down", t / 1000000):
        return None
    start = lan._t
    e = s.last_end("lan_down", t / 1000000)
    if e is not None and e * 1000000 > start:
        start = int(e * 1000000)
    up = start + 1200000 if part == 1 else start + 1500000 + ((start // 1000) * 2654435761 + _c.seed) % 1000000
    return up if t >= up else None


class _LAN:
    """network.LAN of the ESP32 port (internal EMAC + RMII PHY); the port has one: LAN() gives
    the same object again."""

    def __init__(self, kw):
        self._t = None   # when active(True) was called (us)
        self._kw = kw

    @micropython.native
    def active(self, v=None):
        if v is None:
            return self._t is not None
        if v and self._t is None:
            self._t = _c.now
        elif not v:
            self._t = None
        _c.tick()

    @micropython.native
    def link_t(self):
        return _link_t(self)

    @micropython.native
    def isconnected(self):
        _c.tick()
        return _link_t(self) is not None

    @micropython.native
    def status(self):
        _c.tick()
        if self._t is None:
            return ETH_INITIALIZED
        if _link_t(self) is not None:
            return ETH_GOT_IP
        if _c.scen.fault("lan_down", _c.t_s()):
            return ETH_DISCONNECTED
        return ETH_CONNECTED if _link_t(self, 1) is not None else ETH_STARTED

    @micropython.native
    def ifconfig(self, cfg=None):
        if cfg is not None:
            return
        if _link_t(self) is None:
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return ("10.42.0.%d" % (20 + _c.chip_id[-1] % 200), "255.255.255.0", "10.42.0.1", "10.42.0.1")

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
            return
        if args[0] == "mac":   # the ESP32's Ethernet MAC: the base MAC + 3
            m = bytearray(_c.chip_id)
            m[5] = (m[5] + 3) & 0xFF
            return bytes(m)
        if args[0] in ("hostname", "dhcp_hostname"):
            return _n._host
        raise ValueError("unknown config param")


@micropython.native
def _pin_id(p):
    return p if p is None or isinstance(p, int) else p._id


def LAN(id=0, *, mdc=None, mdio=None, phy_type=None, phy_addr=None, power=None, reset=None, ref_clk=None,
        ref_clk_mode=None, spi=None, cs=None, int=None):
    if _n._lan is not None:
        return _n._lan
    if id not in (0, None):
        raise ValueError("invalid LAN interface identifier")
    if _c.mcu != "esp32" and spi is None:   # only the original ESP32 has the Ethernet MAC
        raise ValueError("spi must be specified")
    if mdc is None or mdio is None or phy_type is None or phy_addr is None:
        raise TypeError("mdc, mdio, phy_type and phy_addr are required")
    if not 0 <= phy_type <= 6:
        raise ValueError("invalid phy type")
    if not 0 <= phy_addr <= 0x1F:
        raise ValueError("invalid phy address")
    wired = _c.devices.get("lan")
    given = {"mdc": _pin_id(mdc), "mdio": _pin_id(mdio), "power": _pin_id(power),
             "phy_addr": phy_addr, "ref_clk": _pin_id(ref_clk)}
    # the PHY answers only where it is: a wrong pin, address or PHY gives the driver's failure
    # (LAN8710 and LAN8720 share a driver)
    kind = {"LAN8710": 1}.get(wired.get("phy"), globals().get("PHY_%s" % wired.get("phy"))) if wired else None
    if not wired or (phy_type if phy_type > 1 else 1) != kind or any(k in wired and wired[k] != given[k] and not (k == "ref_clk" and given[k] is None)
                        for k in given):
        _c.advance(1000000)   # the driver waits for the PHY's ID registers
        raise OSError("esp_eth_driver_install failed")
    _c.advance(50000)
    _n._lan = _LAN(given)
    return _n._lan
