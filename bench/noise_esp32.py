"""noise_esp32_cpu_load_pct, for bench/noise.py: the ESP32's CPU share for the noise pipeline at
48 kHz, from the code the board runs. `_run` compiled by mpy-cross -march=xtensawin, its machine
code taken out of the .mpy and executed instruction by instruction on the Xtensa model
(meetkit_tools.dev.noise_kernel, meetkit_tools.dev.xtensa) over a piece of the benchmark's input,
its result checked bit-exact against the firmware; cycles from the pipeline model below at
240 MHz. The static code size and a scaling of the host's viper speed are cross-checks (`detail`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from meetkit_tools.dev import mpyfile
from meetkit_tools.dev import noise_ref as ref
from meetkit_tools.dev.noise_kernel import BLOCK, OUT, RATE, SOURCE, board_code, emulate_run, firmware_state
from meetkit_tools.dev.xtensa import XtensaUnsupported, loop_structure, outer_and_inner
from meetkit_tools.paths import ROOT

# The ESP32 (Xtensa LX6 at 240 MHz) and the cycle model of noise_esp32_cpu_load_pct
ESP32_HZ = 240e6
EMU_START_S = 2.0     # the piece of the input the Xtensa interpreter runs: 0.5 s from 2 s on
EMU_SECONDS = 0.5
CYCLE_MODEL = {
    "issue": 1,            # in-order, single issue: one cycle per instruction
    "taken_branch": 2,     # extra cycles per taken branch or jump (5-stage pipeline, no prediction)
    "load_use": 1,         # extra cycle when the next instruction reads a register just loaded
    "mull_use": 1,         # extra cycle when the next instruction reads a MULL result
}
CYCLE_ASSUMPTIONS = (
    "Xtensa LX6 at 240 MHz: one instruction per cycle, +2 cycles per taken branch or jump, +1 per "
    "load-use interlock (the next instruction reads a register an L32I/L16UI/L32R loaded; store data "
    "is forwarded), +1 when a MULL result is used by the next instruction; code in IRAM (where the "
    "port loads a .mpy's native code) or cache hits, data in internal SRAM, no wait states; "
    "interrupts, Wi-Fi and the I2S DMA's own cost are not included, nor the interpreter's call of "
    "process() once per 20 ms block (about 10 us, 0.05 %)")


def _emulated(tmp: Path, x: np.ndarray, st0: list[int], tab: list[int], code: bytes, funtab_index: int,
              lay: dict[str, Any]) -> dict[str, Any]:
    a0 = int(EMU_START_S * RATE)
    piece = x[a0:a0 + int(EMU_SECONDS * RATE)]
    audio = ref.to_slots(piece)
    emu_st0 = list(st0)
    emu_st0[34] = 0  # Fast levels count from the first tick: the steady state's per-tick work
    t0 = time.perf_counter()
    m, st, hist = emulate_run(code, funtab_index, audio, emu_st0, tab)
    emu_wall = time.perf_counter() - t0
    audio_path = tmp / "emu.bin"
    audio_path.write_bytes(audio)
    fw_st, fw_hist = firmware_state(audio_path, emu_st0)
    s = m.stats
    n = len(piece)
    cm = CYCLE_MODEL
    cycles = (s["insns"] * cm["issue"] + (s["taken"] + s["jumps"]) * cm["taken_branch"]
              + s["load_use"] * cm["load_use"] + s["mull_use"] * cm["mull_use"])
    per = cycles / n
    samp = sum(c for pc, c in m.counts.items() if pc in lay["per_sample_pcs"]) / n
    tick = sum(c for pc, c in m.counts.items() if pc in lay["tick_pcs"]) / n
    return {
        "input": f"{EMU_SECONDS:g} s of the bench input from {EMU_START_S:g} s ({n} samples, {-(-n // BLOCK)} calls "
                 f"of up to {BLOCK} samples), the state words of a new NoiseMeter with the warm-up done",
        "bit_exact_with_firmware": st == fw_st and hist == fw_hist,
        "per_sample": {k: round(v / n, 3) for k, v in s.items()},
        "instructions_per_sample_split": {"sample_path": round(samp, 1), "tick_amortized": round(tick, 1),
                                          "call_amortized": round(s["insns"] / n - samp - tick, 2)},
        "cycle_model_extra_cycles": cm, "cycles_per_sample": round(per, 1), "cpi": round(cycles / s["insns"], 3),
        "load_pct": round(per * RATE / ESP32_HZ * 100, 2),
        "load_pct_at_cpi_1": round(s["insns"] / n * RATE / ESP32_HZ * 100, 2),
        "interpreter_wall_s": round(emu_wall, 1)}


def x64_per_sample_insns(tmp: Path) -> int | None:
    """The same per-sample loop in the x64 viper code the host runs (static count), via objdump
    (binutils comes with gcc); None without it."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    try:
        data, _ = mpyfile.compile_mpy(SOURCE, tmp / "soundlevel.x64.mpy", "x64")
        code = mpyfile.viper_code(mpyfile.parse_mpy(data), SOURCE.read_text(), "_run")
    except mpyfile.MpyError:
        return None
    (tmp / "run.x64.bin").write_bytes(code)
    dis = subprocess.run([objdump, "-D", "-b", "binary", "-m", "i386:x86-64", str(tmp / "run.x64.bin")],
                         capture_output=True, text=True).stdout
    lines = [(int(m[1], 16), m[2], m[3]) for m in re.finditer(r"^\s+([0-9a-f]+):\t[0-9a-f ]+\t(\S+)\s*(.*)$", dis, re.M)]
    jumps = [(a, int(t[2:], 16)) for a, op, t in lines if op.startswith("j") and re.fullmatch(r"0x[0-9a-f]+", t)]
    back = [(a, t) for a, t in jumps if t <= a]
    try:
        _, (in_edge, in_top) = outer_and_inner(back) if back else (None, (None, None))
    except XtensaUnsupported:
        return None
    if in_edge is None:
        return None
    return sum(1 for a, *_ in lines if in_top <= a <= in_edge)


def estimate(tmp: Path, x: np.ndarray, st0: list[int], tab: list[int], viper_msps: float | None,
             input_kind: str) -> dict[str, Any]:
    """noise_esp32_cpu_load_pct and how it was made (see CYCLE_ASSUMPTIONS), on `x` (the samples of
    bench/noise.py's input, described by `input_kind`)."""
    OUT.mkdir(parents=True, exist_ok=True)
    code, funtab_index, mpy = board_code(tmp, OUT / "soundlevel.xtensawin.mpy")
    lay = loop_structure(code)
    out: dict[str, Any] = {
        "mpy": f"{mpy['path'].relative_to(ROOT)} ({mpy['bytes']} bytes), {mpy['mpy_cross']}",
        "run_native_code_bytes": len(code),
        "run_literal_pool_bytes": lay["literal_bytes"],
        "run_instructions": lay["insns"],
        "run_instructions_2_and_3_bytes": [lay["narrow"], lay["insns"] - lay["narrow"]],
        "per_sample_region_static": {
            "instructions": lay["per_sample_insns_static"], "bytes": lay["per_sample_bytes_static"],
            "what": "the per-sample loop (`while i < stop`): its body and condition, both arms of every if"},
    }
    # static estimate: the per-sample region at CPI 1.0 - 1.5, plus nothing for ticks and calls
    sta = lay["per_sample_insns_static"]
    out["static_estimate"] = {
        "cycles_per_sample": [sta, round(1.5 * sta)],
        "load_pct": [round(sta * RATE / ESP32_HZ * 100, 1), round(1.5 * sta * RATE / ESP32_HZ * 100, 1)],
        "assumption": "every instruction of the per-sample region once per sample (an over-count: one arm "
                      "of each if runs), CPI 1.0 - 1.5 at 240 MHz"}
    out["static_estimate"]["cycles_per_sample_cpi_1.3"] = round(1.3 * sta)
    # dynamic: run the board's code on a piece of the bench input, from a warmed-up state
    try:
        out["emulated"] = _emulated(tmp, x, st0, tab, code, funtab_index, lay)
    except (XtensaUnsupported, KeyError, IndexError, ValueError) as e:
        out["emulated"] = {"error": f"{type(e).__name__}: {e}"}
    if "load_pct" in out["emulated"] and out["emulated"]["bit_exact_with_firmware"]:
        out["load_pct"] = out["emulated"]["load_pct"]
        out["method"] = ("the xtensawin machine code of _run run by the Xtensa interpreter (tools/dev/xtensa.py) "
                         "(result bit-exact with the firmware), cycles from the counted instructions, taken "
                         "branches and interlocks with the cycle model")
    else:
        out["load_pct"] = round(1.3 * sta * RATE / ESP32_HZ * 100, 2)
        out["method"] = ("static: the per-sample region's instructions at CPI 1.3 (the interpreter could not "
                         "run the code or disagreed with the firmware: see emulated)")
    out["assumptions"] = CYCLE_ASSUMPTIONS
    out["load_pct_at_160_mhz"] = round(out["load_pct"] * 240e6 / 160e6, 2)
    out["clock_note"] = ("MicroPython's generic ESP32 build boots at 160 MHz (micropython/micropython#5203) and "
                         "firmware/ does not call machine.freq(240000000): at 160 MHz the load is 1.5 times the "
                         "figure")
    out["input"] = {"kind": f"the bench input ({input_kind}) from {EMU_START_S:g} s",
                    "seconds": EMU_SECONDS, "samples": int(EMU_SECONDS * RATE), "block_samples": BLOCK}
    out["runs"] = "1 (the interpreter counts exactly; the cross-check uses the median viper run above)"
    # cross-check: scale the host's viper speed to an in-order single-issue core
    host_mhz = _host_mhz()
    if viper_msps and host_mhz:
        host_cyc = host_mhz / viper_msps
        x64 = x64_per_sample_insns(tmp)
        cc: dict[str, Any] = {
            "host_mhz": host_mhz, "host_cycles_per_sample": round(host_cyc, 1),
            "method": "ESP32 cycles/sample = host cycles/sample x host IPC (an in-order single-issue core "
                      "needs at least one cycle per instruction); host IPC 3 - 5 assumed for this "
                      "load/store-bound straight-line code on an out-of-order x86",
            "cycles_per_sample": [round(3 * host_cyc), round(5 * host_cyc)],
            "load_pct": [round(3 * host_cyc * RATE / ESP32_HZ * 100, 1), round(5 * host_cyc * RATE / ESP32_HZ * 100, 1)]}
        if x64:
            emu = out["emulated"]
            ipsample = emu["per_sample"]["insns"] if "per_sample" in emu else sta
            implied = ipsample * x64 / sta
            ipc = implied / host_cyc
            cc["x64_per_sample_region_static_insns"] = x64
            cc["x64_insns_per_sample_estimated"] = round(implied, 1)
            cc["host_ipc_implied"] = round(ipc, 2)
            cc["note"] = (f"the host's x64 viper code has {x64} instructions in the same per-sample region as the "
                          f"xtensawin code's {sta} (same emitter, locals on the stack); scaled by that, the host "
                          f"runs ~{implied:.0f} instructions per sample in {host_cyc:.1f} cycles, IPC ~{ipc:.1f} at "
                          f"the reported clock (less if it boosts). With that IPC the scaling gives "
                          f"{host_cyc * ipc * RATE / ESP32_HZ * 100:.1f} % at CPI 1, against "
                          f"{out['load_pct']} % from the cycle model")
        out["cross_check_host_scaling"] = cc
    return out


def _host_mhz() -> float | None:
    try:
        m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return float(m[1]) if m else None
