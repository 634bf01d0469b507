"""A board's serial port before anyone talks through it: there, ours alone, and ours to open.

check_port() is what `meetkit flash-micropython` and `meetkit provision` do first, so that a
technician hears "busy: close screen (pid 4242)" rather than "the board does not answer".
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class PortError(Exception):
    """The port cannot be used; the message says what to do."""


def holders(port: str) -> list[str]:
    """Processes (of this user) that have the port open: who to close first."""
    if not os.path.isdir("/proc"):
        return []  # not Linux: the message does without names
    real = os.path.realpath(port)
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == real for fd in fds):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cmd = " ".join(cmd.split())
                found.append(f"pid {pid}: {cmd[:60]}{'...' if len(cmd) > 60 else ''}")
        except OSError:
            continue
    return found


def check_port(port: str) -> None:
    """The port exists, this user may open it and nobody else holds it (pyserial's exclusive lock)."""
    import serial

    missing = (f"{port}: no such port. `meetkit ports` lists the boards plugged in; a board that is not "
               "listed needs a data cable (some only charge) or its USB driver")
    if port.startswith("/") and not os.path.exists(port):
        raise PortError(missing)
    try:
        s = serial.Serial(port, exclusive=True)
    except serial.SerialException as e:
        code = e.errno
        if "FileNotFoundError" in str(e):  # Windows: COM9 that is not there
            raise PortError(missing) from None
        if (code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY) or "exclusively lock" in str(e)
                or "Access is denied" in str(e)):  # the last: how Windows says another program has it
            who = holders(port)
            raise PortError(f"{port} is busy: another program has it open"
                            f"{' (' + '; '.join(who) + ')' if who else ''}. Close it (a serial monitor, "
                            "mpremote, Thonny, another meetkit) and run this again") from None
        if code == errno.EACCES:
            raise PortError(f"{port}: no permission to open it. Add yourself to the 'dialout' group "
                            "(sudo usermod -aG dialout $USER) and log in again") from None
        if code == errno.ENOENT:
            raise PortError(f"{port}: no such port (unplugged?)") from None
        raise PortError(f"{port}: cannot open it ({e})") from None
    s.close()
    who = holders(port)   # screen, minicom and most terminals take no lock: look for them
    if who:
        raise PortError(f"{port} is busy: another program has it open ({'; '.join(who)}). Close it (a serial "
                        "monitor, mpremote, Thonny, another meetkit) and run this again")
