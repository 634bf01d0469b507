"""A node's spool read on the host: the files under sp/ (as `SimNode.flash_files()` or
`read_flash` give them) decoded by the firmware's own recline (firmware/lib/recline.py, loaded
under CPython), for tests and benchmarks that look at what is on flash.

A segment is records back to back, each a length byte and then its bits; a record is decoded
from the one before it in its segment (a key frame starts each segment and every spool.KEY_EVERY
records), so a segment is read from its start. Anything that is not whole records raises
ValueError: the spool holds nothing else."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType

from meetkit_tools.paths import FIRMWARE


def firmware_module(name: str) -> ModuleType:
    """A module of firmware/lib loaded under CPython (those that import nothing of MicroPython's),
    under its firmware name: recread imports recline by that name."""
    if name in _loaded:
        return _loaded[name]
    spec = importlib.util.spec_from_file_location(name, FIRMWARE / "lib" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = _loaded[name] = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


_loaded: dict[str, ModuleType] = {}


recline = firmware_module("recline")
recread = firmware_module("recread")


def segment_records(data: bytes) -> list[list]:
    """The records of one segment file, in recline's form (keys not filled in)."""
    out: list[list] = []
    prev = None
    off = 0
    while off < len(data):
        k = data[off]
        body = data[off + 1:off + 1 + k]
        if not k or len(body) != k:
            raise ValueError(f"a record cut short at byte {off}")
        prev = recread.unpack(body, prev)
        out.append(prev)
        off += 1 + k
    return out


def read_spool(files: dict[str, bytes], prefix: str = "sp/", anchored: bool = True) -> list[tuple[int, dict]]:
    """Every record on flash, oldest segment first: (boot, the record as payload v1's JSON object).
    anchored: a record made before the clock was known gets its ts from the boot's clock anchor, as
    when it is sent (False: null, as the console's `record N:` line shows it)."""
    segs = sorted((int(m[1]), data) for path, data in files.items()
                  if (m := re.fullmatch(re.escape(prefix) + r"s(\d+)", path)))
    out = []
    for _, data in segs:
        for rec in segment_records(data):
            boot = rec[0]
            keys = json.loads(files[f"{prefix}b{boot}"])["keys"]
            anchor = files.get(f"{prefix}t{boot}") if anchored else None
            out.append((boot, json.loads(recline.to_json(rec, keys, int(anchor) if anchor else None))))
    return out
