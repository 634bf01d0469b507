"""`meetkit sim board`: real mpremote (the CLI, as a technician runs it) talks to the simulator on
a pty as to an ESP32 with MicroPython: files, exec, raw-paste, soft and hard resets, Ctrl-C."""

from __future__ import annotations

import os
import re
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


class BoardProcess:
    """`meetkit sim board ARGS` as a technician starts it in a terminal of its own."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "meetkit_tools.cli", "sim", "board", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = self.proc.stdout.readline().strip()
        said = self.proc.stdout.readline()
        m = re.search(r"folder (\S+), flash (\S+), chip id ([0-9a-f]{12}), console also in (\S+);", said)
        assert m, said + self.proc.stderr.read() if self.proc.stderr else said
        self.folder, self.flash, self.chip_id, self.console = m[1], m[2], m[3], m[4]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def test_boards_started_side_by_side_get_their_own_flash_console_and_chip_id(tmp_path: Path) -> None:
    a = BoardProcess()
    b = BoardProcess()
    try:
        assert a.port != b.port
        assert len({a.folder, b.folder}) == len({a.flash, b.flash}) == len({a.console, b.console}) == 2
        assert a.chip_id != b.chip_id
        # what the boards themselves say, through mpremote
        assert ok(a.port, "exec", "import machine; print(machine.unique_id().hex())").strip() == a.chip_id
        assert ok(b.port, "exec", "import machine; print(machine.unique_id().hex())").strip() == b.chip_id
        mark = tmp_path / "mark.txt"
        mark.write_text(f"only on {a.port}\n")
        ok(a.port, "fs", "cp", str(mark), ":mark.txt")
        assert "mark.txt" not in ok(b.port, "fs", "ls")
        ok(b.port, "exec", "print('hello from b')")
        wait_for(lambda: "hello from b" in Path(b.console).read_text(errors="replace"), 10, "b's console")
        assert "hello from b" not in Path(a.console).read_text(errors="replace")
        # a blank board in a's folder would wipe a's flash: refused while a runs, nothing touched
        image = Path(a.flash).read_bytes()
        res = subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "sim", "board", "--blank", "--workdir",
                              a.folder], capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"{a.folder} is in use by a running simulated board (pid {a.proc.pid}, {a.port})" in res.stderr
        assert Path(a.flash).read_bytes() == image
        assert ok(a.port, "fs", "cat", "mark.txt") == f"only on {a.port}\n"
    finally:
        a.stop()
        b.stop()
    # a's folder is free again once a is off; the same folder, the same chip
    again = BoardProcess("--workdir", a.folder)
    try:
        assert again.chip_id == a.chip_id
        assert ok(again.port, "fs", "cat", "mark.txt") == f"only on {a.port}\n"
    finally:
        again.stop()


def test_the_folder_of_a_board_that_was_killed_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "board.lock").write_text(f"{gone.pid} /dev/pts/99")   # left by a SIGKILLed board
    with SimBoard(tmp_path / "b") as b:
        assert (tmp_path / "b" / "board.lock").read_text() == f"{os.getpid()} {b.port}"
        with pytest.raises(Exception, match=r"is in use by a running simulated board \(pid \d+, /dev/"):
            SimBoard(tmp_path / "b", blank=True).start()
        assert ok(b.port, "eval", "1+1").strip() == "2"
    assert not (tmp_path / "b" / "board.lock").exists()


def test_flashing_a_blank_board_without_no_reset_says_one_thing_and_the_board_runs_that_release(
        tmp_path: Path) -> None:
    from meetkit_tools.sim.mpimage import micropython_firmware

    firmware = tmp_path / "ESP32_GENERIC-20241129-v1.24.1.bin"
    firmware.write_bytes(micropython_firmware("esp32", "v1.24.1"))
    with SimBoard(tmp_path / "b", blank=True) as b:
        res = subprocess.run([sys.executable, "-m", "meetkit_tools.cli", "flash-micropython", "--port", b.port,
                              "--firmware", str(firmware)], capture_output=True, text=True, timeout=120)
        said = res.stdout + res.stderr
        assert res.returncode == 0, said
        assert f"{b.port} has no DTR/RTS lines (a simulated board, or a network port): the board is not reset" in said
        assert "Not reset (no DTR/RTS lines): a simulated board starts MicroPython once" in said
        assert "Reset the board through RTS" not in said and "Chip was NOT reset" not in said
        assert "The board now holds MicroPython v1.24.1" in said
        wait_for(lambda: "MicroPython v1.24.1 flashed; the board boots it" in b.console_text(), 30, "the board boots")
        uname = "import os; u = os.uname(); print(u.release, u.version)"
        assert ok(b.port, "exec", uname).strip() == "1.24.1 v1.24.1 (meetkit simulator)"
    with SimBoard(tmp_path / "b") as b:   # powered on again: the release stays what was flashed
        assert ok(b.port, "exec", uname).strip().split()[0] == "1.24.1"
    with SimBoard(tmp_path / "fresh") as b:   # a board that was never flashed by us: the simulator's own
        assert ok(b.port, "exec", uname).strip().split()[0] == "1.29.0"
