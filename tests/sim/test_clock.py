"""The virtual clock, `time` as on the ESP32, and the ways a run ends (exit codes, state.json)."""

from __future__ import annotations

from pathlib import Path

from tests.sim.harness import START_EPOCH, run_sim

EPOCH_2000 = 946684800


# What an hour of sleep costs in wall time, and how closely `speed` paces, are figures of
# bench/sim_time.py (sim_sleep_hour_vs_boot_ratio, sim_pacing_ratio), not limits here.
def test_an_hour_of_sleep_passes_on_the_virtual_clock_and_ticks_wrap(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, json
        t0 = time.ticks_ms(); u0 = time.ticks_us()
        first = t0
        wrapped = False
        for i in range(3600):
            time.sleep(1)
            t = time.ticks_ms()
            wrapped = wrapped or t < first
            first = t
        print("@" + json.dumps({"t0": t0, "u0": u0, "ms": time.ticks_diff(time.ticks_ms(), t0),
                                "wrapped": wrapped, "t1": time.ticks_ms(),
                                "add": time.ticks_diff(time.ticks_add(t0, 5000), t0),
                                "neg": time.ticks_diff(t0, time.ticks_ms()),
                                "time": time.time()}))
        """, until_ms=None)
    assert r.code == 2, r.out + r.err  # main.py returned: the board sits at the REPL
    d = r.json_lines()[0]
    assert 2**30 - 60_000 < d["t0"] < 2**30, "ticks_ms must start close to the wrap"
    assert d["wrapped"] and d["t1"] < 3_600_000
    assert 3_600_000 <= d["ms"] < 3_600_100
    assert d["neg"] == -d["ms"]
    assert d["add"] == 5000
    assert d["time"] == 3600  # the RTC started at 2000-01-01 00:00:00 at power-on


def test_time_is_the_esp32s_until_ntp_gives_the_true_time(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, json, network, ntptime, machine
        out = {"t": time.time(), "type": str(type(time.time())), "g0": time.gmtime(0),
               "gm": time.gmtime(86400 * 366 + 3661), "mk": time.mktime((2026, 11, 24, 7, 0, 0, 0, 0))}
        try:
            ntptime.settime()
        except OSError as e:
            out["ntp_down"] = e.errno
        out["after_fail_ms"] = time.ticks_diff(time.ticks_ms(), 0)
        w = network.WLAN(network.STA_IF)
        w.active(True)
        w.connect("lab", "pw")
        while not w.isconnected():
            time.sleep_ms(50)
        time.sleep_ms(12345)
        ntptime.settime()
        out["ns"] = time.time_ns()
        out["now"] = time.time()
        out["rtc"] = machine.RTC().datetime()
        out["lt"] = time.localtime()
        print("@" + json.dumps(out))
        """)
    d = r.json_lines()[0]
    assert d["t"] == 0 and d["type"] == "<class 'int'>"
    assert d["g0"] == [2000, 1, 1, 0, 0, 0, 5, 1]
    assert d["gm"] == [2001, 1, 1, 1, 1, 1, 0, 1]
    assert d["mk"] == 1795503600 - EPOCH_2000
    assert d["ntp_down"] == 110
    # the true time: scenario start + virtual seconds since
    true_s = d["ns"] / 1e9 + EPOCH_2000 - START_EPOCH
    assert 13 < true_s < 17
    assert d["now"] == int(d["ns"] // 10**9)
    y, mo, day, wd, h, mi, s, us = d["rtc"]
    assert (y, mo, day, wd, h) == (2026, 11, 24, 1, 7)  # a Tuesday
    assert d["lt"][:4] == [2026, 11, 24, 7]


def test_the_rtc_carries_over_a_reset(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, machine
        print("@", time.time(), machine.reset_cause(), machine.DEEPSLEEP_RESET, machine.wake_reason())
        """, t_ms=50_000, rtc=848_826_000.25, reset_cause="deepsleep")
    t, cause, ds, wake = r.lines[0].split()[1:]
    assert int(t) == 848_826_000 and cause == ds == "4" and wake == "4"


def test_until_ms_exits_0_with_state(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time
        while True:
            time.sleep_ms(7)
        """, until_ms=90_000, t_ms=30_000)
    assert r.code == 0, r.err
    assert r.state["cause"] == "until" and r.state["t_ms"] == 90_000
    assert r.state["rtc"] == 60.0  # power-on RTC: 2000-01-01 + 60 s of this boot
    assert r.state["stats"]["sim_heap"] > 0


def test_machine_reset_exits_3_with_state(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, machine, esp32
        n = esp32.NVS("meetkit")
        n.set_i32("boots", 7)
        n.commit()
        n.set_i32("lost", 1)   # not committed: lost at the reset
        time.sleep(12.5)
        machine.reset()
        print("not reached")
        """)
    assert r.code == 3 and "not reached" not in r.out
    assert r.state["cause"] == "soft" and r.state["t_ms"] == 12_500
    assert r.state["nvs"] == {"meetkit": {"boots": 7}}


def test_nvs_comes_back_from_sim_json(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import esp32
        n = esp32.NVS("meetkit")
        b = bytearray(8)
        print("@", n.get_i32("boots"), n.get_blob("k", b), bytes(b[:3]))
        try:
            n.get_i32("nope")
        except OSError as e:
            print("@", e.args[0])
        """, extra={"nvs": {"meetkit": {"boots": 7, "k": "616263"}}})
    assert r.lines[0] == "@ 7 3 b'abc'" and r.lines[1] == "@ -4354"


def test_deepsleep_exits_3_and_the_clock_moves_on(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, machine
        time.sleep(2)
        machine.deepsleep(60_000)
        """)
    assert r.code == 3
    assert r.state["cause"] == "deepsleep" and r.state["t_ms"] == 62_000 and r.state["rtc"] == 62.0


def test_an_unfed_watchdog_resets_the_board(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, machine
        w = machine.WDT(timeout=5000)
        for i in range(10):
            w.feed()
            time.sleep_ms(1000)
        while True:          # hangs without feeding
            time.sleep_ms(100)
        """)
    assert r.code == 3, r.out + r.err
    assert r.state["cause"] == "wdt" and r.state["t_ms"] == 14_000
    assert r.state["stats"]["wdt_feeds"] == 10


def test_a_fed_watchdog_keeps_running(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time, machine
        w = machine.WDT(timeout=2000)
        while True:
            time.sleep_ms(1500)
            w.feed()
        """, until_ms=300_000)
    assert r.code == 0 and r.state["cause"] == "until"
    assert r.state["stats"]["wdt_feeds"] == 199


def test_a_busy_wait_on_ticks_terminates(tmp_path: Path) -> None:
    # Every clock read costs virtual time, as on the board: polling loops end.
    r = run_sim(tmp_path, """
        import time
        t0 = time.ticks_ms()
        n = 0
        while time.ticks_diff(time.ticks_ms(), t0) < 50:
            n += 1
        print("@", n)
        """, until_ms=None)
    assert r.code == 2 and 1000 < int(r.lines[0].split()[1]) < 100_000


def test_an_uncaught_exception_is_a_crash(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time
        time.sleep(3)
        def f():
            raise ValueError("boom")
        f()
        """)
    assert r.code == 1
    assert "Traceback (most recent call last):" in r.out and 'File "main.py", line 5' in r.out
    assert "ValueError: boom" in r.out
    assert r.state["cause"] == "crash" and r.state["t_ms"] == 3000


def test_boot_py_runs_first_and_its_error_does_not_stop_main(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        print("@main", x)
        """, files={"boot.py": "x = 42\nraise OSError(5)\n"}, until_ms=None)
    assert "OSError: 5" in r.out or "OSError: [Errno 5]" in r.out
    assert "@main 42" in r.out


def test_the_board_modules_are_there_after_the_mount(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import sys, os
        from umqtt.simple import MQTTClient
        import umqtt.simple
        import machine, network, ntptime, esp32, time, socket, usocket, utime, umachine
        print("@", sys.path, sorted(os.listdir("/")), umqtt.simple.socket is socket is usocket,
              utime is time)
        print("@", time.gmtime(0)[0], esp32.raw_temperature() > 32, hasattr(esp32, "mcu_temperature"))
        print("@", machine.unique_id(), network.WLAN(network.STA_IF).config("mac"))
        """, until_ms=None)
    assert r.code == 2, r.out + r.err
    assert r.lines[0] == "@ ['', '.frozen', '/lib'] ['main.py'] True True"
    assert r.lines[1] == "@ 2000 True False"
    assert r.lines[2] == "@ b'$\\n\\xc4\\x124V' b'$\\n\\xc4\\x124V'"


def test_speed_paces_the_virtual_clock(tmp_path: Path) -> None:
    r = run_sim(tmp_path, """
        import time
        time.sleep(3)
        """, until_ms=None, extra={"speed": 10})
    # never ahead of 10x real time, however fast the machine (how late: bench/sim_time.py)
    assert r.code == 2 and r.wall >= 0.3
