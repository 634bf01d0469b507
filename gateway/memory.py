"""The process's heap: give memory back after a burst of large messages.

glibc's malloc serves a block of 128 KiB or more with mmap of its own and unmaps it when freed,
but raises that threshold to the size of every such block freed (up to 32 MiB): after the first
large message, paho's buffers for each one (a few copies of it while it is read and decoded)
come from the heap, which does not shrink past what is still in use above them. A burst of 1 MB messages left the
gateway 12 to 18 MB larger for good (bench/flood.py). Setting the threshold once turns that
adjustment off: large blocks stay mmapped and go back to the system when freed. A no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; False where that cannot be done."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, threshold) == 1
    if not ok:
        log.warning("could not fix malloc's mmap threshold: memory may stay high after large messages")
    return ok
