"""MicroPython's .mpy files: compiled by mpy-cross, read back to the machine code of each function.

.mpy v6 (MicroPython docs/reference/mpyfiles.rst, tools/mpy-tool.py): header 'M', version, features
(arch << 2), small-int bits; vuint counts of qstrs and constant objects, the qstrs (vuint len << 1 |
static, bytes, NUL), the objects (type byte, ...); then the module's raw code, recursively: vuint
(len << 3 | has_children << 2 | kind), the code, for native code its scope flags (and viper's
rodata/bss/relocations), then the children. Kinds: 0 bytecode, 1 native, 2 viper, 3 asm.

The noise benchmark (bench/noise.py) and tests/firmware/test_noise_c.py take the viper kernel of
firmware/lib/soundlevel.py out of the xtensawin .mpy this way (meetkit_tools.dev.noise_kernel).
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import Any

from meetkit_tools import appbuild

ARCH_XTENSAWIN = 10  # the features byte's arch field (mpy-cross -march=xtensawin)
KIND_VIPER = 2


class MpyError(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def take(self, n: int) -> bytes:
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def uint(self) -> int:
        v = 0
        while True:
            b = self.byte()
            v = (v << 7) | (b & 0x7F)
            if not b & 0x80:
                return v


def parse_mpy(data: bytes) -> dict[str, Any]:
    """Header, constant object types and every raw code (depth first) of a v6 .mpy."""
    r = _Reader(data)
    if r.take(2) != b"M\x06":
        raise MpyError("not a v6 .mpy")
    features, small_int_bits = r.byte(), r.byte()
    n_qstr, n_obj = r.uint(), r.uint()
    for _ in range(n_qstr):
        ln = r.uint()
        if not ln & 1:
            r.take((ln >> 1) + 1)
    obj_types = []

    def obj() -> None:
        t = r.byte()
        obj_types.append(t)
        if t == 10:  # tuple
            for _ in range(r.uint()):
                obj()
                obj_types.pop()
        elif t > 4:
            r.take(r.uint() + (1 if t in (5, 6) else 0))

    for _ in range(n_obj):
        obj()
    codes: list[dict[str, Any]] = []

    def raw_code(depth: int) -> None:
        kl = r.uint()
        kind, children, n = kl & 3, (kl >> 2) & 1, kl >> 3
        rc: dict[str, Any] = {"kind": kind, "depth": depth, "code": r.take(n)}
        if kind == 1:
            rc["prelude"] = r.uint()
        elif kind >= 2:
            flags = rc["flags"] = r.uint()
            if kind == 2:
                ro = r.uint() if flags & 0x20 else 0
                if flags & 0x40:
                    r.uint()
                r.take(ro)
                if flags & 0x10:
                    while (op := r.byte()) != 0xFF:
                        if op & 1:
                            r.uint()
                        if (op >> 1) <= 5 and (op >> 1) & 1:
                            r.uint()
            else:
                r.uint()
                r.uint()
        codes.append(rc)
        if children:
            for _ in range(r.uint()):
                raw_code(depth + 1)

    raw_code(0)
    if r.pos != len(data):
        raise MpyError(f"{len(data) - r.pos} bytes left after the raw code")
    return {"arch": features >> 2, "small_int_bits": small_int_bits, "obj_types": obj_types, "codes": codes}


def viper_functions(src: str) -> list[str]:
    """Names of the module-level @micropython.viper functions, in source order (the order of the
    viper raw codes in the .mpy)."""
    names = []
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "micropython.viper" for d in node.decorator_list):
            names.append(node.name)
    return names


def compile_mpy(src: Path, out: Path, march: str = "xtensawin") -> tuple[bytes, str]:
    """`src` compiled by mpy-cross (the one the technician's CLI uses) for `march` into `out`:
    (the .mpy, mpy-cross's version)."""
    try:
        exe = appbuild.mpy_cross_bin()
    except appbuild.BuildError as e:
        raise MpyError(str(e)) from None
    res = subprocess.run([exe, f"-march={march}", "-o", str(out), str(src)], capture_output=True, text=True)
    if res.returncode != 0:
        raise MpyError(res.stderr)
    ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return out.read_bytes(), ver


def viper_code(mpy: dict[str, Any], src: str, name: str) -> bytes:
    """The machine code of the module-level viper function `name` of `src`, from its parsed .mpy."""
    names = viper_functions(src)
    vipers = [c for c in mpy["codes"] if c["kind"] == KIND_VIPER]
    if len(vipers) != len(names):
        raise MpyError(f"{len(vipers)} viper raw codes for {len(names)} viper functions")
    return vipers[names.index(name)]["code"]
