# `os` as on the board: the unix port's own (files, the VFS), plus uname(), which the unix port
# lacks and the firmware reads to tell the chip it runs on (machine: "... with ESP32S3").
from uos import *  # noqa: F401,F403
import simcore as _c

_MACHINE = {"esp32": "Generic ESP32 module with ESP32", "esp32s3": "Generic ESP32S3 module with ESP32S3"}


def uname():
    from collections import namedtuple
    r = namedtuple("uname_result", ("sysname", "nodename", "release", "version", "machine"))
    return r("esp32", "esp32", _c.mp_release, "v%s (meetkit simulator)" % _c.mp_release,
             _MACHINE.get(_c.mcu, "Generic %s module with %s" % (_c.mcu.upper(), _c.mcu.upper())))
