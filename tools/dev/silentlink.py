"""A node's own network path to the broker that a test can make silent, as when a town's gateway
(its Raspberry Pi) dies: its address stops answering at all, no RST and no ICMP, packets vanish.

A network namespace for the node's process (NodeSpec.netns) joined to the host by a veth pair:
the host end `host_ip`, the node's end `node_ip` (a /30 of 10.201.0.0/16 chosen by the process id,
so that parallel runs do not meet). A broker listening on `host_ip` is reached through it.
`silence()` points each end's neighbour entry for the other at a MAC address nobody has: every
frame either way is dropped by the receiving interface, connections already open included, and
nothing says so; `restore()` lets ARP find the real ones again. Needs root and iproute2 (`ip`).
"""

from __future__ import annotations

import os
import subprocess

_NOBODY = "02:00:5e:00:53:01"   # locally administered: no interface here has it


def _ip(*args: str, ns: str | None = None, check: bool = True) -> None:
    cmd = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
    subprocess.run(cmd, check=check, capture_output=True)


class SilentLink:
    def __init__(self) -> None:
        pid = os.getpid()
        self.netns = f"mk-silent-{pid}"
        self.host_if, self.node_if = f"mks{pid % 100000}h", f"mks{pid % 100000}n"
        base = (pid * 4) % 65536   # a /30 within 10.201.0.0/16
        self.host_ip = f"10.201.{base // 256}.{base % 256 + 1}"
        self.node_ip = f"10.201.{base // 256}.{base % 256 + 2}"
        self.silent = False

    def open(self) -> "SilentLink":
        self.close()
        _ip("netns", "add", self.netns)
        try:
            _ip("link", "set", "lo", "up", ns=self.netns)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if, "netns", self.netns)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("addr", "add", f"{self.node_ip}/30", "dev", self.node_if, ns=self.netns)
            _ip("link", "set", self.node_if, "up", ns=self.netns)
        except BaseException:
            self.close()
            raise
        return self

    def silence(self) -> None:
        _ip("neigh", "replace", self.node_ip, "lladdr", _NOBODY, "dev", self.host_if, "nud", "permanent")
        _ip("neigh", "replace", self.host_ip, "lladdr", _NOBODY, "dev", self.node_if, "nud", "permanent",
            ns=self.netns)
        self.silent = True

    def restore(self) -> None:
        _ip("neigh", "del", self.node_ip, "dev", self.host_if, check=False)
        _ip("neigh", "del", self.host_ip, "dev", self.node_if, ns=self.netns, check=False)
        self.silent = False

    def close(self) -> None:
        _ip("link", "del", self.host_if, check=False)   # its peer goes with it
        _ip("netns", "del", self.netns, check=False)
