"""A new app on trial, a rollback, crashes and safe mode, from the running node's side (docs/payload.md,
"Release offer" and "Events"): simulated nodes (firmware/ as .mpy) against a real Mosquitto, the
real gateway (its acknowledgements are what proves a new app) and the test-side fleet gateway
(tools/dev/fleetsim.py), which offers releases built from firmware/, some of them broken on purpose.
The boot side (appswap.py keeping the previous app, boot.py's rollback, main.py's crash handler)
is lib/trial.py's and lib/crash.py's; here is what a node reports and how it ends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from meetkit_tools.dev import fleetsim
from meetkit_tools.paths import FIRMWARE
from meetkit_tools.sim.runner import SimNode
from meetkit_tools.dev.waits import wait_for

HEAP = fleetsim.OFFER_HEAP   # a release offer's manifest
OLD = fleetsim.fw_version()
RAISES = {"lib/node.py": lambda s: s.replace("def main():\n", "def main():\n    raise ValueError('broken release')\n")}
DEAF = {"lib/sample_noise.py": lambda s: s.replace("if leq is None or over * 100 > n:", "if True:  # deaf")}
# after nodestart.start(): a bug in what the start makes (payload v2's module loaded by _v2)
START_RAISES = {"lib/node.py": lambda s: s.replace("def _v2(node):\n",
                                                   "def _v2(node):\n    raise ValueError('broken start')\n")}
# the loop of a node that has measured: its second interval's close fails, at every start
LOOP_RAISES = {"lib/node.py": lambda s: s.replace("def _close_interval(self, now):\n",
                                                  "def _close_interval(self, now):\n"
                                                  "        if self.seq == 1:\n"
                                                  "            raise ValueError('loop bug')\n")}


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fleetsim.mpy_firmware(tmp_path_factory.mktemp("fw") / "firmware")


class Rig(fleetsim.SimFleet):
    """The stand-in gateway for offers and commands; the real gateway acknowledging batches."""

    def __init__(self, tmp: Path, gateway: bool = True) -> None:
        super().__init__(tmp, gateway=gateway, heapsize=HEAP)


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


APP = ("lib", "boot.py", "main.py", "appswap.py")


def flash_app(node: SimNode) -> dict[str, bytes]:
    return node.flash_files(*APP)


def staged_app(firmware: Path) -> dict[str, bytes]:
    """The app as the technician's copy put it on the flash (the node's first boot)."""
    files = {p.relative_to(firmware).as_posix(): p for p in firmware.rglob("*") if p.is_file()}
    return {k: p.read_bytes() for k, p in files.items() if k.split("/")[0] in APP}


def test_a_release_proves_itself_on_trial_and_the_previous_app_goes(rig: Rig, firmware: Path) -> None:
    n = rig.node("tr-01", firmware)
    rig.status("tr-01", mode="normal", fw=OLD)
    rel = fleetsim.build_release("0.3.0", workdir=rig.tmp)
    rig.gw.offer("tr-01", rel)
    assert rig.ota("tr-01", "installed", "refused")["state"] == "installed"
    rig.status("tr-01", mode="trial", fw="0.3.0")
    assert rig.ota("tr-01", "proved", "rolled_back")["state"] == "proved"
    rig.status("tr-01", mode="normal", fw="0.3.0")
    text = n.console_text()
    assert "trial: 0.3.0 must prove itself within 900 s: a batch acknowledged; " in text
    assert text.index("check: gateway: pass") < text.index("trial: 0.3.0 proved")
    n.stop()
    files = n.list_flash()
    assert not [p for p in files if p.endswith(".old") or p.startswith("app.trial") or p.startswith("new")]
    app = flash_app(n)
    for f in rel.manifest["files"]:
        assert app[f["path"]] == rel.files[f["path"]], f["path"]


@pytest.mark.parametrize("broken, reason", [
    (RAISES, "crash: ValueError: broken release"),
    (START_RAISES, "crash: ValueError: broken start"),
    (DEAF, "self-test: mic: ics43434: "),
])
def test_a_broken_release_is_rolled_back_by_itself_and_says_why(rig: Rig, firmware: Path, broken: dict,
                                                                  reason: str) -> None:
    n = rig.node("rb-01", firmware)
    rig.status("rb-01", mode="normal", fw=OLD)
    before = staged_app(firmware)
    rig.gw.offer("rb-01", fleetsim.build_release("0.3.0", patch=broken, workdir=rig.tmp))
    assert rig.ota("rb-01", "installed", "refused")["state"] == "installed"
    ev = rig.ota("rb-01", "rolled_back", "proved", timeout=300)
    assert ev["state"] == "rolled_back" and ev["release"] == "0.3.0" and ev["back_to"] == OLD
    assert ev["reason"].startswith(reason), ev
    rig.status("rb-01", mode="normal", fw=OLD)
    if broken is not DEAF:   # the crash itself, reported once, its traceback as written on flash
        (crash,) = wait_for(lambda: rig.gw.events_of("rb-01", "crash"), 60, "the crash report")
        assert crash["trace"].startswith("Traceback") and reason[len("crash: "):] in crash["trace"]
        assert len(crash["trace"]) <= 1500
    wait_for(lambda: "check: gateway: pass" in n.console_text().rsplit("meetkit " + OLD, 1)[-1], 120,
             "a batch acknowledged after the rollback")
    n.stop()
    assert flash_app(n) == before
    assert not [p for p in n.list_flash() if p.endswith(".old") or p.startswith("app.")]


def test_a_release_that_never_reaches_a_batch_acknowledged_is_rolled_back(tmp_path: Path, firmware: Path) -> None:
    r = Rig(tmp_path, gateway=False)   # no gateway acknowledges anything
    try:
        r.node("nb-01", firmware, extra_config={"trial_s": 120})
        r.status("nb-01", fw=OLD)
        r.gw.offer("nb-01", fleetsim.build_release("0.3.0", workdir=tmp_path))
        ev = r.ota("nb-01", "rolled_back", "proved", timeout=300)
        assert ev["reason"] == "not proved within 120 s: no batch acknowledged"
        r.status("nb-01", fw=OLD, mode="normal")
    finally:
        r.close()


def test_safe_mode_after_three_crashes_in_a_row_and_out_of_it_with_a_fixed_release(rig: Rig, tmp_path: Path) -> None:
    broken = fleetsim.mpy_firmware(tmp_path / "broken", firmware=_patched(tmp_path / "src", RAISES))
    n = rig.node("sm-01", broken)
    st = rig.status("sm-01", mode="safe", timeout=180)
    assert st["fw"] == OLD
    ev = rig.gw.wait_event("sm-01", lambda e: e["kind"] == "safe_mode")
    assert ev["crashes"] == 3
    crash = rig.gw.wait_event("sm-01", lambda e: e["kind"] == "crash")
    assert "ValueError: broken release" in crash["trace"] and crash["count"] == 3
    text = n.console_text()
    assert text.count("broken release") >= 3 and "safe mode: 3 crashes in a row" in text
    assert " I record " not in text   # nothing measured, the spool untouched
    rig.gw.command("sm-01", "selftest", id=5)
    checks = rig.gw.wait_event("sm-01", lambda e: e["kind"] == "selftest")["checks"]
    assert checks["broker"][0] == "pass" and "mic" not in checks
    rig.gw.offer("sm-01", fleetsim.build_release("0.3.0", workdir=tmp_path))
    assert rig.ota("sm-01", "installed", "refused")["state"] == "installed"
    assert rig.ota("sm-01", "proved", "rolled_back", timeout=300)["state"] == "proved"
    rig.status("sm-01", mode="normal", fw="0.3.0")
    wait_for(lambda: " I record " in n.console_text(), 120, "a record")
    n.stop()
    assert "crash.count" not in n.list_flash()


def test_a_start_that_fails_after_nodestart_every_time_ends_in_safe_mode_and_is_reported(rig: Rig,
                                                                                          tmp_path: Path) -> None:
    """node.py's catch-all once reset such a node every 10 s for ever, with no report and no safe mode."""
    broken = fleetsim.mpy_firmware(tmp_path / "broken", firmware=_patched(tmp_path / "src", START_RAISES))
    n = rig.node("ss-01", broken)
    rig.status("ss-01", mode="safe", timeout=180)
    assert rig.gw.wait_event("ss-01", lambda e: e["kind"] == "safe_mode")["crashes"] == 3
    crash = rig.gw.wait_event("ss-01", lambda e: e["kind"] == "crash")
    assert "ValueError: broken start" in crash["trace"] and crash["count"] == 3
    text = n.console_text()
    assert "unexpected error; resetting" not in text and " I record " not in text


def test_errors_in_the_loop_of_a_node_that_measured_are_reported_and_it_measures_again(rig: Rig,
                                                                                        tmp_path: Path) -> None:
    """An error after the first record of a start: a reset, the node measures again; reported with count 0,
    never counted towards safe mode, however often (here at every start, more than 3 in a row)."""
    broken = fleetsim.mpy_firmware(tmp_path / "broken", firmware=_patched(tmp_path / "src", LOOP_RAISES))
    n = rig.node("lp-01", broken, extra_config={"interval_s": 10})
    wait_for(lambda: n.console_text().count("unexpected error; resetting") >= 4, 300, "4 loop errors")
    wait_for(lambda: n.console_text().rsplit("unexpected error; resetting", 1)[-1].count(" I record 0: "), 120,
             "a record after the 4th")
    st = rig.status("lp-01", mode="normal")
    assert st["fw"] == OLD
    crash = rig.gw.wait_event("lp-01", lambda e: e["kind"] == "crash")
    assert "ValueError: loop bug" in crash["trace"] and crash["count"] == 0
    assert not rig.gw.events_of("lp-01", "safe_mode") and "safe mode" not in n.console_text()
    assert "crash.count" not in n.list_flash()


# a crash report the heap cannot take at its first two tries
REPORT_NO_HEAP = {"lib/crash.py": lambda s: s.replace("def report():\n", "_TRIES = [0]\n\n\ndef report():\n"
                                                      "    _TRIES[0] += 1\n"
                                                      "    if _TRIES[0] < 3:\n"
                                                      "        raise MemoryError('no heap for the report')\n")}


def test_a_crash_report_the_heap_cannot_take_is_sent_later_and_never_restarts_the_node(rig: Rig,
                                                                                       tmp_path: Path) -> None:
    """Else a report left at a tight heap would fail at every start: a restart loop of its own."""
    fw = fleetsim.mpy_firmware(tmp_path / "fw", firmware=_patched(tmp_path / "src", REPORT_NO_HEAP))
    crash_txt = b"boot 3 up 40 s\nTraceback (most recent call last):\nValueError: earlier\n"
    n = rig.node("rp-01", fw, files={"crash.txt": crash_txt})
    ev = rig.gw.wait_event("rp-01", lambda e: e["kind"] == "crash")
    assert ev["trace"].endswith("ValueError: earlier\n") and ev["boot"] == 3
    wait_for(lambda: "crash.txt" not in n.list_flash(), 60, "crash.txt removed once sent")
    wait_for(lambda: " I record 0: " in n.console_text(), 120, "a record")
    text = n.console_text()
    assert text.count(" I meetkit ") == 1 and "Traceback" not in text


def _patched(out: Path, patch: dict[str, Callable[[str], str]]) -> Path:
    import shutil

    shutil.copytree(FIRMWARE, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for rel, f in patch.items():
        p = out / rel
        p.write_text(f(p.read_text()))
    return out


def test_an_install_appswap_could_not_make_is_reported_as_refused_with_its_reason(rig: Rig, firmware: Path) -> None:
    """appswap.py left app.refused (tests/sim/test_trial.py: a file missing from new/, no room for a
    copy): once connected the old app says so, event "refused" with the reason (the rollout halts at
    once, rollouts.decide), and the note goes."""
    why = "install failed: no room to copy 22016 bytes: 12 KB free"
    n = rig.node("rf-01", firmware, files={"app.refused": json.dumps({"release": "0.3.0", "reason": why}).encode()})
    ev = rig.ota("rf-01", "refused")
    assert (ev["release"], ev["reason"]) == ("0.3.0", why)
    wait_for(lambda: "app.refused" not in n.list_flash(), 60, "app.refused removed")
