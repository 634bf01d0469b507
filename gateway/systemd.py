"""systemd's notify protocol (sd_notify(3)), without a library: one datagram per state change on
the socket in $NOTIFY_SOCKET. Outside systemd (no $NOTIFY_SOCKET) every call does nothing.

The unit (packaging/meetkit-gateway.service) is `Type=notify` with `WatchdogSec=`: the gateway
says READY=1 once it runs, RELOADING=1/READY=1 around a SIGHUP reload, STOPPING=1 when it stops,
and WATCHDOG=1 only while it makes progress (service.run decides what that means).
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):  # an abstract socket
            addr = "\0" + addr[1:]
        self.address = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        #: the watchdog interval in seconds, None when systemd keeps no watchdog on us
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def notify(self, *states: str) -> bool:
        """Send `KEY=value` lines; False when there is no systemd to tell (or it is gone)."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(self.address)
                s.sendall("\n".join(states).encode())
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
