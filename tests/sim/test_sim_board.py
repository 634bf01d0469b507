"""`meetkit sim board`: real mpremote (the CLI, as a technician runs it) talks to the simulator on
a pty as to an ESP32 with MicroPython: files, exec, raw-paste, soft and hard resets, Ctrl-C."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meetkit_tools.sim.board import REGISTRY, SimBoard
from meetkit_tools.dev.waits import wait_for

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def mpremote(port: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    res = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=timeout)
    return res


def ok(port: str, *args: str) -> str:
    res = mpremote(port, *args)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture
def board(tmp_path: Path):
    with SimBoard(tmp_path / "board") as b:
        yield b


def test_files_exec_and_raw_paste(board: SimBoard, tmp_path: Path) -> None:
    src = tmp_path / "hello.txt"
    src.write_bytes(b"street noise\n" * 400)
    assert "street noise" in ok(board.port, "fs", "cp", str(src), ":hello.txt", "+", "fs", "cat", "hello.txt")
    import hashlib
    assert hashlib.sha256(src.read_bytes()).hexdigest() in ok(board.port, "fs", "sha256sum", "hello.txt")
    assert "hello.txt" in ok(board.port, "fs", "ls")
    assert ok(board.port, "eval", "6*7").strip() == "42"
    # A script larger than raw-paste's window goes through its flow control.
    script = tmp_path / "big.py"
    script.write_text("x = 0\n" + "".join(f"x += {i}  # {'pad' * 20}\n" for i in range(150)) + "print('sum', x)\n")
    assert script.stat().st_size > 8000
    assert f"sum {sum(range(150))}" in ok(board.port, "run", str(script))
    ok(board.port, "fs", "rm", "hello.txt")
    assert "hello.txt" not in ok(board.port, "fs", "ls")
    df = ok(board.port, "df")
    assert "2097152" in df   # the flash partition's real size, from statvfs


def test_main_runs_after_a_hard_reset_and_ctrl_c_stops_it(board: SimBoard, tmp_path: Path) -> None:
    main = tmp_path / "main.py"
    main.write_text("import time\nprint('main starts')\nn = 0\nwhile True:\n    n += 1\n    time.sleep_ms(50)\n")
    boot = tmp_path / "boot.py"
    boot.write_text("print('boot.py ran')\n")
    ok(board.port, "fs", "cp", str(main), ":main.py", "+", "fs", "cp", str(boot), ":boot.py")
    mark = len(board.console_text())
    ok(board.port, "reset")
    wait_for(lambda: "main starts" in board.console_text()[mark:], 30, "main.py after the reset")
    after = board.console_text()[mark:]
    assert "rst:0xc (SW_CPU_RESET)" in after and "boot.py ran" in after and "main starts" in after
    # mpremote's Ctrl-C stops main.py (a KeyboardInterrupt in it), and the board answers.
    mark = len(board.console_text())
    assert ok(board.port, "resume", "exec", "print('in')").strip() == "in"
    assert "KeyboardInterrupt" in board.console_text()[mark:]
    # A soft reset in raw REPL mode runs boot.py but not main.py, as on the ESP32.
    mark = len(board.console_text())
    ok(board.port, "soft-reset", "exec", "print('still here')")
    text = board.console_text()[mark:]
    assert "MPY: soft reboot" in text and "boot.py ran" in text and "main starts" not in text


def test_ctrl_c_interrupts_code_sent_without_waiting(board: SimBoard) -> None:
    mark = len(board.console_text())
    ok(board.port, "exec", "--no-follow", "print('spinning')\nwhile True: pass")
    wait_for(lambda: "spinning" in board.console_text()[mark:], 30, "the loop running on the board")
    assert ok(board.port, "eval", "1+1").strip() == "2"


def test_the_flash_image_persists_and_a_full_flash_refuses_writes(tmp_path: Path) -> None:
    image = tmp_path / "small.img"
    with SimBoard(tmp_path / "b1", flash=image, flash_kb=64) as b:
        keep = tmp_path / "keep.txt"
        keep.write_text("calibration 94.0 dB\n")
        ok(b.port, "fs", "cp", str(keep), ":keep.txt")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(80 * 1024))
        res = mpremote(b.port, "fs", "cp", str(big), ":big.bin")
        assert res.returncode != 0 and "No space left on device" in res.stdout + res.stderr
    with SimBoard(tmp_path / "b2", flash=image, flash_kb=64) as b:
        assert ok(b.port, "fs", "cat", "keep.txt") == "calibration 94.0 dB\n"


def test_a_running_board_is_registered_for_meetkit_ports(tmp_path: Path) -> None:
    with SimBoard(tmp_path / "b") as b:
        entries = [p.read_text() for p in REGISTRY.glob(f"{os.getpid()}-*.json")]
        assert any(b.port in e for e in entries)
    assert not [p for p in REGISTRY.glob(f"{os.getpid()}-*.json") if b.port in p.read_text()]
