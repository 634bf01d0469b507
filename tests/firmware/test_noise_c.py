"""The C translation of the noise kernel (tools/dev/noise_c/noise.c, the reference of the benchmark's
noise_viper_vs_c_ratio) computes exactly what the firmware's viper `_run` computes under micropython:
the same state words and histogram, bit for bit, on inputs that reach every branch. That is what makes
the ratio a comparison of one algorithm in two languages.

The Xtensa interpreter (tools/dev/xtensa.py), which runs the board's own machine code for the
benchmark's noise_esp32_cpu_load_pct, is held to the same standard."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from meetkit_tools.dev import noise_kernel as noise
from meetkit_tools.dev import noise_ref as ref
from meetkit_tools.dev.xtensa import loop_structure

S = ref.FS


@pytest.fixture(scope="module")
def c_exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(noise.CC) is None:
        pytest.fail(f"{noise.CC} not found: run make setup (it installs gcc)")
    exe, info = noise.build_c(tmp_path_factory.mktemp("noise_c"))
    assert exe is not None, info.get("error")
    assert "warnings" not in info, info["warnings"]
    return exe


@pytest.fixture(scope="module")
def fresh() -> tuple[list[int], list[int]]:
    """A new NoiseMeter's state words and the log2 table, from the firmware."""
    return noise.firmware_init()


def _signal(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = S // 2
    if kind == "traffic":
        return ref.to_int24(ref.traffic(3 * S // 2, rng, base_db=60))
    if kind == "white":  # full scale
        return rng.integers(-(2**23), 2**23, n)
    if kind == "square":  # clipped: both rails, overload counted
        return np.where(np.arange(n) % 200 < 100, 2**23 - 1, -(2**23))
    if kind == "silence":
        return np.zeros(n, np.int64)
    if kind == "loud-then-silence":  # the Fast level decays to nothing (the exponent floor)
        return np.concatenate([rng.integers(-(2**23), 2**23, S // 10), np.zeros(9 * S, np.int64)])
    raise ValueError(kind)


CASES = [  # input, samples per process() call, warmed-up (Fast levels count from the first tick)
    ("traffic", 960, False),
    ("traffic", 960, True),
    ("white", 100, True),
    ("square", 960, True),
    ("silence", 960, True),
    ("silence", 37, False),
    ("loud-then-silence", 960, True),
]


@pytest.mark.parametrize("kind,block,warm", CASES, ids=[f"{k}-{b}{'-warm' if w else ''}" for k, b, w in CASES])
def test_c_is_bit_exact_with_the_firmware(c_exe: Path, fresh: tuple[list[int], list[int]], tmp_path: Path,
                                          kind: str, block: int, warm: bool) -> None:
    st0, tab = fresh
    st0 = list(st0)
    if warm:
        st0[34] = 0
    x = _signal(kind, np.random.default_rng(11))
    audio = tmp_path / "audio.bin"
    audio.write_bytes(ref.to_slots(x))
    init = noise.write_init(tmp_path / "init.bin", st0, tab)
    want_st, want_hist = noise.firmware_state(audio, st0, block)
    got = noise.run_c(c_exe, audio, init, runs=2, block=block)
    assert got["st"] == want_st
    assert got["hist"] == want_hist
    # the inputs reach what they are here for
    assert want_st[27] == len(x)
    if kind == "square":
        assert want_st[33] > 0
    if warm:
        assert sum(want_hist) == len(x) // noise.TICK
    if kind == "loud-then-silence":
        assert want_st[28] == 0 and want_hist[0] > 0  # G decayed below the floor: the lowest bin


def test_c_timing_runs_repeat_the_same_result(c_exe: Path, fresh: tuple[list[int], list[int]],
                                             tmp_path: Path) -> None:
    """Every timed run starts from the same state: the last run's result is the first run's."""
    st0, tab = fresh
    x = _signal("traffic", np.random.default_rng(5))[: S // 2]
    audio = tmp_path / "audio.bin"
    audio.write_bytes(ref.to_slots(x))
    init = noise.write_init(tmp_path / "init.bin", st0, tab)
    one, three = noise.run_c(c_exe, audio, init, runs=1), noise.run_c(c_exe, audio, init, runs=3)
    assert len(three["ns"]) == 3 and all(ns > 0 for ns in three["ns"])
    assert one["st"] == three["st"] and one["hist"] == three["hist"]


def test_the_xtensa_interpreter_runs_the_board_code_bit_exact(fresh: tuple[list[int], list[int]],
                                                              tmp_path: Path) -> None:
    """_run compiled for the ESP32 (mpy-cross -march=xtensawin), taken out of the .mpy and run
    instruction by instruction: the same result as the firmware under micropython, with the board's
    32-bit registers (where the host's viper ints are 64-bit)."""
    st0, tab = fresh
    st0 = list(st0)
    st0[34] = 0
    code, funtab_index, _ = noise.board_code(tmp_path)  # checks the arch and finds _run among the vipers
    rng = np.random.default_rng(3)
    x = np.concatenate([ref.to_int24(ref.traffic(S // 20, rng, base_db=90)),  # loud: the rounded squares
                        rng.integers(-(2**23), 2**23, S // 40)])
    audio = ref.to_slots(x)
    m, st, hist = noise.emulate_run(code, funtab_index, audio, st0, tab, block=500)
    path = tmp_path / "audio.bin"
    path.write_bytes(audio)
    want_st, want_hist = noise.firmware_state(path, st0, 500)
    assert st == want_st
    assert hist == want_hist
    assert m.stats["mull"] > 0 and m.stats["calls"] == 7 * -(-len(x) // 500)  # 7 argument conversions a call
    lay = loop_structure(code)
    assert lay["per_sample_insns_static"] < lay["insns"]
    # the region the benchmark calls per-sample is the loop that runs once per sample, and the
    # tick region is what runs once per 48 samples (the CPU split in `make bench` rests on this)
    assert m.counts[lay["inner_top"]] == len(x)
    tick_first = min(pc for pc in lay["tick_pcs"] if pc > lay["inner_edge"])
    assert m.counts[tick_first] == pytest.approx(len(x) / 48, abs=7 * -(-len(x) // 500))
