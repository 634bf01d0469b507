"""The regional ledger judge (tools/dev/regionrig.py) on ledgers and stores made here: it names
every way a record can be missing, doubled or wrong in the region's store, so that its zeros in
tests/region/test_region_faults.py mean something."""

from __future__ import annotations

from meetkit_tools.dev.faultrig import Ledger
from meetkit_tools.dev.regionrig import Sample, judge_region

EPOCH = 1795500000


def rec(seq: int, ts: int | None = None, up: int = 0, **values: object) -> dict:
    return {"seq": seq, "ts": ts, "up": up, "dur": 60, **values}


def ledger(*recs: dict, boot: int = 0, dropped: tuple[int, int] | None = None) -> Ledger:
    led = Ledger(records={(boot, r["seq"]): r for r in recs}, boot_t0={boot: 0.0})
    if dropped:
        led.dropped.append((dropped[1] - dropped[0] + 1, boot, *dropped))
    return led


def test_once_missing_dropped_doubled_and_in_two_towns() -> None:
    led = ledger(rec(0, EPOCH, pm25=[5.0, 4, 6, 58], temp=[12.5, 12, 13, 12]),
                 rec(1, EPOCH + 60, pm25=[6.0, 4, 8, 58], temp=[12.0, 12, 12, 12]),
                 rec(2, EPOCH + 120, pm25=[7.0, 4, 8, 58]),
                 rec(3, EPOCH + 180, pm25=[8.0, 4, 8, 58]),
                 rec(4, EPOCH + 240, pm25=[9.0, 4, 9, 58]),
                 rec(5, EPOCH + 300, pm25=[1.0, 1, 1, 58], temp=[3.0, 3, 3, 12]),
                 dropped=(6, 6))
    led.records[(0, 6)] = rec(6, EPOCH + 360, pm25=[2.0, 2, 2, 58])
    ms = lambda t: (EPOCH + t) * 1000  # noqa: E731
    samples = {"n1": {
        ("pm25", ms(0)): [Sample("utrecht", 5.0)], ("temp", ms(0)): [Sample("utrecht", 12.5)],   # once
        ("pm25", ms(60)): [Sample("utrecht", 6.0)],                                              # temp missing
        ("pm25", ms(120)): [Sample("utrecht", 7.0), Sample("utrecht", 7.0)],                     # twice, one series
        ("pm25", ms(180)): [Sample("utrecht", 8.0), Sample("zeist", 8.0)],                       # two towns
        # seq 4: nowhere; seq 6: dropped by the spool, as it logged
        ("pm25", ms(300)): [Sample("utrecht", 1.5)], ("temp", ms(300)): [Sample("utrecht", 3.0)],  # a wrong value
    }}
    out = judge_region("t", {"n1": (led, EPOCH)}, samples, sent_readings=12, table=False)
    assert (out.generated, out.delivered, out.lost, out.dropped, out.duplicated) == (7, 4, 2, 1, 2)
    assert out.notes["in_two_towns"] == 1 and out.notes["wrong_values"] == 1
    assert out.notes["region_readings"] == 9 and out.notes["resent_readings"] == 3
    assert any("partly lost n1 boot 0 seq 1" in p for p in out.problems)
    assert any("lost n1 boot 0 seq 4" in p for p in out.problems)


def test_an_untimed_record_is_found_near_its_true_start() -> None:
    led = ledger(rec(0, None, up=30, pm25=[5.0, 4, 6, 58]), rec(1, None, up=90, pm25=[6.0, 4, 6, 58]))
    samples = {"n1": {("pm25", (EPOCH + 31) * 1000): [Sample("utrecht", 5.0)],      # within the tolerance
                      ("pm25", (EPOCH + 100) * 1000): [Sample("utrecht", 6.0)]}}    # 10 s off: not it
    out = judge_region("t", {"n1": (led, EPOCH)}, samples, table=False)
    assert (out.delivered, out.untimed, out.lost) == (1, 1, 1)
