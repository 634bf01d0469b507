# Ethernet: the original ESP32's MAC with an RMII PHY, as board.json's net section describes it
# (docs/technician.md, "Boards"). Imported by uplink.py on such a board only.
import network
import console


def start(net):
    """The Ethernet interface of board.json's net section, started; None (and the self-test's
    network fail) when the driver refuses it."""
    from machine import Pin
    try:
        lan = network.LAN(mdc=Pin(net["mdc"]), mdio=Pin(net["mdio"]),
                          power=None if net.get("power") is None else Pin(net["power"]),
                          phy_type=getattr(network, "PHY_" + net["phy"]), phy_addr=net["phy_addr"],
                          ref_clk=Pin(net["ref_clk"]),
                          ref_clk_mode=Pin.OUT if net["ref_clk_mode"] == "out" else Pin.IN)
        lan.active(True)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        console.error("ethernet: cannot start the %s: %r" % (net["phy"], e))
        console.check("network", False, "ethernet: the %s does not start (%r): is board.json's net section "
                                        "right for this board?" % (net["phy"], e))
        return None
    return lan
