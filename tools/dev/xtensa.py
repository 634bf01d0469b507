"""Just enough of the ESP32's Xtensa LX6 core to run one viper function of the firmware as the
board would: a decoder for what MicroPython's xtensawin emitter produces, an interpreter that
counts what a cycle model needs (instructions, taken branches, load-use and MULL-use interlocks),
and the loop layout of the emitted code.

The noise benchmark (bench/noise.py: noise_esp32_cpu_load_pct) runs the firmware's noise kernel
on it (meetkit_tools.dev.noise_kernel.emulate_run); tests/firmware/test_noise_c.py holds it
bit-exact with the firmware under micropython.
"""

from __future__ import annotations

from typing import Any, Callable

# Xtensa (LX6 as in the ESP32: density, MUL32, windowed registers; no FLIX). Instructions are
# little-endian; op0 (the low nibble) 8..13 marks the 2-byte density forms, the rest are 3 bytes.
(L32I, S32I, L16UI, L16SI, L8UI, S16I, S8I, L32R, MOVI, MOV, ADD, ADDI, ADDX2, ADDX4, ADDX8, SUB, NEG, ABS,
 AND, OR, XOR, SSR, SSL, SSAI, SLL, SRL, SRA, SLLI, SRAI, SRLI, EXTUI, MULL, J, BR, BRZ, BRI, ENTRY, CALLX8,
 RETW, NOP) = range(40)
OPNAMES = ("l32i s32i l16ui l16si l8ui s16i s8i l32r movi mov add addi addx2 addx4 addx8 sub neg abs and or "
           "xor ssr ssl ssai sll srl sra slli srai srli extui mull j b bz bi entry callx8 retw nop").split()
EQ, NE, LT, GE, LTU, GEU = range(6)
_B4CONST = (-1, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 128, 256)
_B4CONSTU = (32768, 65536, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32, 64, 128, 256)
M32 = 0xFFFFFFFF


class XtensaUnsupported(Exception):
    pass


def sext(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def xtensa_decode(code: bytes, pc: int) -> tuple:
    """(size, op, x, y, z, registers read (stalls), register loaded or -1) of the instruction at pc.
    Covers what MicroPython's xtensawin emitter produces (and a little more); raises
    XtensaUnsupported for anything else."""
    b0 = code[pc]
    op0 = b0 & 15
    if op0 >= 8:
        if op0 >= 14:
            raise XtensaUnsupported(f"{pc:#x}: op0 {op0}")
        ins = b0 | code[pc + 1] << 8
        t, s, r = (ins >> 4) & 15, (ins >> 8) & 15, (ins >> 12) & 15
        if op0 == 8:
            return 2, L32I, t, s, r * 4, (s,), t
        if op0 == 9:
            return 2, S32I, t, s, r * 4, (s,), -1
        if op0 == 10:
            return 2, ADD, r, s, t, (s, t), -1
        if op0 == 11:
            return 2, ADDI, r, s, -1 if t == 0 else t, (s,), -1
        if op0 == 12:
            if t & 8 == 0:  # MOVI.N: -32..95
                imm = r | (t & 7) << 4
                return 2, MOVI, s, imm - 128 if imm >= 96 else imm, 0, (), -1
            return 2, BRZ, NE if t & 4 else EQ, s, pc + 4 + ((t & 3) << 4 | r), (s,), -1
        if r == 0:
            return 2, MOV, t, s, 0, (s,), -1
        if r == 15 and t == 1:
            return 2, RETW, 0, 0, 0, (), -1
        if r == 15 and t == 3:
            return 2, NOP, 0, 0, 0, (), -1
        raise XtensaUnsupported(f"{pc:#x}: {ins:#06x}")
    ins = b0 | code[pc + 1] << 8 | code[pc + 2] << 16
    t, s, r = (ins >> 4) & 15, (ins >> 8) & 15, (ins >> 12) & 15
    op1, op2, imm8 = (ins >> 16) & 15, (ins >> 20) & 15, ins >> 16
    if op0 == 0:
        if op1 == 0:
            if op2 == 0 and r == 0 and t == 14:
                return 3, CALLX8, s, 0, 0, (s,), -1
            if op2 == 0 and r == 0 and t == 9:
                return 3, RETW, 0, 0, 0, (), -1
            if op2 in (1, 2, 3):
                return 3, (AND, OR, XOR)[op2 - 1], r, s, t, (s, t), -1
            if op2 == 4 and r in (0, 1):
                return 3, (SSR, SSL)[r], s, 0, 0, (s,), -1
            if op2 == 4 and r == 4:
                return 3, SSAI, s | (t & 1) << 4, 0, 0, (), -1
            if op2 == 6 and s in (0, 1):
                return 3, (NEG, ABS)[s], r, t, 0, (t,), -1
            if op2 in (8, 9, 10, 11):
                return 3, (ADD, ADDX2, ADDX4, ADDX8)[op2 - 8], r, s, t, (s, t), -1
            if op2 == 12:
                return 3, SUB, r, s, t, (s, t), -1
        elif op1 == 1:
            if op2 in (0, 1):
                return 3, SLLI, r, s, 32 - ((op2 & 1) << 4 | t), (s,), -1
            if op2 in (2, 3):
                return 3, SRAI, r, t, (op2 & 1) << 4 | s, (t,), -1
            if op2 == 4:
                return 3, SRLI, r, t, s, (t,), -1
            if op2 in (9, 10, 11):
                src = s if op2 == 10 else t
                return 3, (SRL, SLL, SRA)[op2 - 9], r, src, 0, (src,), -1
        elif op1 == 2 and op2 == 8:
            return 3, MULL, r, s, t, (s, t), -1
        elif op1 in (4, 5):
            return 3, EXTUI, r, t, ((op1 & 1) << 4 | s, (1 << (op2 + 1)) - 1), (t,), -1
    elif op0 == 1:  # L32R: PC-relative literal, always backwards
        return 3, L32R, t, ((pc + 3) & ~3) + (((ins >> 8) | ~0xFFFF) << 2), 0, (), t
    elif op0 == 2:
        if r in (0, 1, 2, 9):
            op, scale = {0: (L8UI, 1), 1: (L16UI, 2), 2: (L32I, 4), 9: (L16SI, 2)}[r]
            return 3, op, t, s, imm8 * scale, (s,), t
        if r in (4, 5, 6):
            op, scale = {4: (S8I, 1), 5: (S16I, 2), 6: (S32I, 4)}[r]
            return 3, op, t, s, imm8 * scale, (s,), -1
        if r == 10:
            return 3, MOVI, t, sext(s << 8 | imm8, 12), 0, (), -1
        if r in (12, 13):
            return 3, ADDI, t, s, sext(imm8, 8) << (8 if r == 13 else 0), (s,), -1
    elif op0 == 6:
        n, m = (ins >> 4) & 3, (ins >> 6) & 3
        if n == 0:
            return 3, J, pc + 4 + sext(ins >> 6, 18), 0, 0, (), -1
        if n == 1:
            return 3, BRZ, (EQ, NE, LT, GE)[m], s, pc + 4 + sext(ins >> 12, 12), (s,), -1
        if n == 2:
            return 3, BRI, ((EQ, NE, LT, GE)[m], _B4CONST[r]), s, pc + 4 + sext(imm8, 8), (s,), -1
        if m == 0:
            return 3, ENTRY, s, (ins >> 12) * 8, 0, (s,), -1
        if m in (2, 3):
            return 3, BRI, ((LTU, GEU)[m - 2], _B4CONSTU[r]), s, pc + 4 + sext(imm8, 8), (s,), -1
    elif op0 == 7:
        cond = {1: EQ, 9: NE, 2: LT, 10: GE, 3: LTU, 11: GEU}.get(r)
        if cond is not None:
            return 3, BR, cond, (s, t), pc + 4 + sext(imm8, 8), (s, t), -1
    raise XtensaUnsupported(f"{pc:#x}: {ins:#08x}")


def _target(d: tuple) -> int | None:
    if d[1] == J:
        return d[2]
    if d[1] in (BR, BRZ, BRI):
        return d[4]
    return None


class Xtensa:
    """Just enough of an ESP32 core to run one viper function: registers a0-a15 as the function
    sees them (windowed ABI), SAR, a flat little-endian memory, and calls through MicroPython's
    function table answered by Python callables (`services`: table index -> fn(self), arguments
    in a10.., result in a10). Counts what the cycle model needs."""

    def __init__(self, code: bytes, memsize: int, funtab_magic: int,
                 services: dict[int, Callable[[Xtensa], None]]) -> None:
        self.code = code
        self.mem = bytearray(memsize)
        self.m32 = memoryview(self.mem).cast("I")
        self.m16 = memoryview(self.mem).cast("H")
        self.a = [0] * 16
        self.sar = 0
        self.cache: dict[int, tuple] = {}
        self.funtab_magic = funtab_magic
        self.services = services
        self.counts: dict[int, int] = {}
        self.stats = dict.fromkeys(("insns", "taken", "not_taken", "jumps", "loads", "stores", "load_use",
                                    "mull", "mull_use", "calls"), 0)

    def w32(self, addr: int, v: int) -> None:
        self.m32[addr >> 2] = v & M32

    def r32(self, addr: int) -> int:
        return self.m32[addr >> 2]

    def call(self, pc: int, regs: dict[int, int]) -> int:  # noqa: C901 (one dispatch loop)
        a = self.a
        for i, v in regs.items():
            a[i] = v & M32
        code, cache, m32, m16, mem, counts = self.code, self.cache, self.m32, self.m16, self.mem, self.counts
        n = taken = not_taken = jumps = loads = stores = load_use = mull = mull_use = 0
        prev_ld = prev_mul = -1
        while True:
            d = cache.get(pc)
            if d is None:
                d = cache[pc] = xtensa_decode(code, pc)
            size, op, x, y, z, reads, ld = d
            n += 1
            counts[pc] = counts.get(pc, 0) + 1
            if prev_ld >= 0 and prev_ld in reads:
                load_use += 1
            if prev_mul >= 0 and prev_mul in reads:
                mull_use += 1
            prev_ld, prev_mul = ld, -1
            npc = pc + size
            if op == L32I:
                addr = (a[y] + z) & M32
                if addr & 3:
                    raise XtensaUnsupported(f"{pc:#x}: unaligned load at {addr:#x}")
                a[x] = m32[addr >> 2]
                loads += 1
            elif op == MOV:
                a[x] = a[y]
            elif op == S32I:
                addr = (a[y] + z) & M32
                if addr & 3:
                    raise XtensaUnsupported(f"{pc:#x}: unaligned store at {addr:#x}")
                m32[addr >> 2] = a[x]
                stores += 1
            elif op == MOVI:
                a[x] = y & M32
            elif op == ADD:
                a[x] = (a[y] + a[z]) & M32
            elif op == SUB:
                a[x] = (a[y] - a[z]) & M32
            elif op == J:
                npc = x
                jumps += 1
            elif op == BR or op == BRZ or op == BRI:
                if op == BR:
                    u, v, cond = a[y[0]], a[y[1]], x
                elif op == BRZ:
                    u, v, cond = a[y], 0, x
                else:
                    u, v, cond = a[y], x[1] & M32, x[0]
                if cond == EQ:
                    c = u == v
                elif cond == NE:
                    c = u != v
                elif cond == LTU:
                    c = u < v
                elif cond == GEU:
                    c = u >= v
                else:
                    su = u - (1 << 32) if u >> 31 else u
                    sv = v - (1 << 32) if v >> 31 else v
                    c = su < sv if cond == LT else su >= sv
                if c:
                    npc = z
                    taken += 1
                else:
                    not_taken += 1
            elif op == XOR:
                a[x] = a[y] ^ a[z]
            elif op == SSR:
                self.sar = a[x] & 31
            elif op == SSL:
                self.sar = 32 - (a[x] & 31)
            elif op == SRA:
                v = a[y]
                a[x] = ((v - (1 << 32) if v >> 31 else v) >> self.sar) & M32
            elif op == SLL:  # SAR holds 32 - the shift (SSL)
                a[x] = (a[y] << (32 - self.sar)) & M32
            elif op == L32R:
                a[x] = int.from_bytes(code[y:y + 4], "little")
                loads += 1
            elif op == MULL:
                a[x] = (a[y] * a[z]) & M32
                mull += 1
                prev_mul = x
            elif op == L16UI:
                a[x] = m16[((a[y] + z) & M32) >> 1]
                loads += 1
            elif op == AND:
                a[x] = a[y] & a[z]
            elif op == OR:
                a[x] = a[y] | a[z]
            elif op == ADDX2:
                a[x] = ((a[y] << 1) + a[z]) & M32
            elif op == ADDX4:
                a[x] = ((a[y] << 2) + a[z]) & M32
            elif op == ADDX8:
                a[x] = ((a[y] << 3) + a[z]) & M32
            elif op == NEG:
                a[x] = (-a[y]) & M32
            elif op == ABS:
                v = a[y]
                a[x] = ((1 << 32) - v) & M32 if v >> 31 else v
            elif op == ADDI:
                a[x] = (a[y] + z) & M32
            elif op == SRL:
                a[x] = a[y] >> self.sar
            elif op == SLLI:
                a[x] = (a[y] << z) & M32
            elif op == SRAI:
                v = a[y]
                a[x] = ((v - (1 << 32) if v >> 31 else v) >> z) & M32
            elif op == SRLI:
                a[x] = a[y] >> z
            elif op == EXTUI:
                a[x] = (a[y] >> z[0]) & z[1]
            elif op == SSAI:
                self.sar = x
            elif op == L16SI:
                v = m16[((a[y] + z) & M32) >> 1]
                a[x] = (v - 0x10000 if v >> 15 else v) & M32
                loads += 1
            elif op == L8UI:
                a[x] = mem[(a[y] + z) & M32]
                loads += 1
            elif op == S16I:
                m16[((a[y] + z) & M32) >> 1] = a[x] & 0xFFFF
                stores += 1
            elif op == S8I:
                mem[(a[y] + z) & M32] = a[x] & 0xFF
                stores += 1
            elif op == ENTRY:
                a[x] = (a[x] - y) & M32
            elif op == CALLX8:
                idx, rem = divmod(a[x] - self.funtab_magic, 4)
                svc = self.services.get(idx) if rem == 0 else None
                if svc is None:
                    raise XtensaUnsupported(f"{pc:#x}: call to {a[x]:#x}")
                svc(self)
                self.stats["calls"] += 1
                jumps += 1
            elif op == RETW:
                break
            elif op != NOP:
                raise XtensaUnsupported(f"{pc:#x}: {OPNAMES[op]}")
            pc = npc
        for k, v in (("insns", n), ("taken", taken), ("not_taken", not_taken), ("jumps", jumps),
                     ("loads", loads), ("stores", stores), ("load_use", load_use), ("mull", mull),
                     ("mull_use", mull_use)):
            self.stats[k] += v
        return a[2]


def outer_and_inner(back: list[tuple[int, int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(edge, top) of the outermost loop (the tick loop, `while i < end`) and of the largest loop
    nested in it (the per-sample loop, `while i < stop`); the other nested loops are the tick's
    small normalisation loops."""
    outer = max(back, key=lambda e: e[0] - e[1])
    nested = [e for e in back if e != outer and outer[1] <= e[1] and e[0] <= outer[0]]
    if not nested:
        raise XtensaUnsupported("no loop nested in the outer loop")
    return outer, max(nested, key=lambda e: e[0] - e[1])


def loop_structure(code: bytes) -> dict[str, Any]:
    """The viper function's layout: a J over the literal pool, the prologue, then the tick loop
    (`while i < end`) with the per-sample loop (`while i < stop`) inside it. The emitter lays a
    while loop out as a J to its condition, the body, then the condition with the back edge; the
    per-sample region is the inner loop's body and condition, the tick region the rest of the
    outer loop."""
    first = xtensa_decode(code, 0)
    if first[1] != J:
        raise XtensaUnsupported("the code does not start with a jump over its literals")
    start = first[2]
    insns, pc = [], start
    while pc < len(code):
        d = xtensa_decode(code, pc)
        insns.append((pc, d))
        pc += d[0]
    back = [(pc, _target(d)) for pc, d in insns if _target(d) is not None and _target(d) <= pc]
    if not back:
        raise XtensaUnsupported("no loop")
    (edge, top), (in_edge, in_top) = outer_and_inner(back)
    per_sample = [(pc, d) for pc, d in insns if in_top <= pc <= in_edge]
    return {"literal_bytes": start, "insns": len(insns), "narrow": sum(1 for _, d in insns if d[0] == 2),
            "top": top, "edge": edge, "inner_top": in_top, "inner_edge": in_edge,
            "per_sample_insns_static": len(per_sample), "per_sample_bytes_static": sum(d[0] for _, d in per_sample),
            "per_sample_pcs": {pc for pc, _ in per_sample},
            "tick_pcs": {pc for pc, _ in insns if top <= pc <= edge and not in_top <= pc <= in_edge}}
