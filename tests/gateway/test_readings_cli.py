"""`meetkit-gateway readings` on a store with known contents."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


from .conftest import OLD_FIRMWARE, batch, cli, example
from .conftest import fill_store as fill

T0 = 1795510800  # 2026-11-24T09:00:00Z


@pytest.fixture
def config(store_toml: Path) -> Path:
    return store_toml


def test_one_node(config):
    fill(config, example(), batch(node="ams-002", seqs=[0], ts0=T0))
    r = cli("readings", "--config", str(config), "--node", "ams-001", "--since", "2026-11-24T08:00Z")
    assert r.returncode == 0, r.stderr
    assert r.stdout == """\
node     interval start (UTC)  quantity      avg     min     max   n  unit   flags
-------  --------------------  --------  -------  ------  ------  --  -----  -------
ams-001  2026-11-24T08:59:00Z  pm1             3       2       4  57  ug/m3
ams-001  2026-11-24T08:59:00Z  pm25            -       -       -   -  ug/m3  missing
ams-001  2026-11-24T08:59:00Z  temp         12.3    12.3    12.4  12  degC
ams-001  2026-11-24T09:00:00Z  pm1           3.1       2       5  58  ug/m3
ams-001  2026-11-24T09:00:00Z  pm25          5.2       4       7  58  ug/m3  rh_high
ams-001  2026-11-24T09:00:00Z  pm10          8.9       6      12  58  ug/m3
ams-001  2026-11-24T09:00:00Z  temp        12.34    12.3    12.4  12  degC
ams-001  2026-11-24T09:00:00Z  rh           81.2    80.9    81.5  12  %
ams-001  2026-11-24T09:00:00Z  press     1013.21  1013.1  1013.3  12  hPa
ams-001  2026-11-24T09:00:00Z  LAeq         55.2    48.3    67.1  60  dB
ams-001  2026-11-24T09:00:00Z  LA10         58.4                      dB
ams-001  2026-11-24T09:00:00Z  LA50         53.9                      dB
ams-001  2026-11-24T09:00:00Z  LA90         49.6                      dB
ams-001  2026-11-24T09:00:00Z  LZeq         63.8                      dB
ams-001  2026-11-24T09:00:00Z  cov             1                      1
"""


def test_noise_indicators_old_and_new(config):
    """Plain numbers show avg only; LZeq of firmware 0.1.0 keeps its min, max and n; a missing
    plain number is `-` with min, max and n still blank."""
    new = example()
    new["recs"][0].update(LAeq=None, LA10=None, LA50=None, LA90=None, LZeq=None, cov=0,
                          f={"pm25": ["missing"], "LAeq": ["missing"]})
    new["recs"][1]["f"] = {"LAeq": ["overload", "floor"], "LA90": ["floor"]}
    fill(config, OLD_FIRMWARE, new)
    r = cli("readings", "--config", str(config), "--since", "2026-11-24T08:00Z", "--node", "ams-001")
    assert r.returncode == 0, r.stderr
    noise = [line for line in r.stdout.splitlines()[2:] if line.split()[2] in ("LAeq", "LA10", "LA50", "LA90", "LZeq", "cov")]
    assert noise == [
        "ams-001  2026-11-24T08:00:00Z  LZeq         55.2    48.1    67.3  60  dB",
        "ams-001  2026-11-24T08:59:00Z  LAeq            -       -       -   -  dB     missing",
        "ams-001  2026-11-24T08:59:00Z  LA10            -                      dB",
        "ams-001  2026-11-24T08:59:00Z  LA50            -                      dB",
        "ams-001  2026-11-24T08:59:00Z  LA90            -                      dB",
        "ams-001  2026-11-24T08:59:00Z  LZeq            -       -       -   -  dB",
        "ams-001  2026-11-24T08:59:00Z  cov             0                      1",
        "ams-001  2026-11-24T09:00:00Z  LAeq         55.2    48.3    67.1  60  dB     overload,floor",
        "ams-001  2026-11-24T09:00:00Z  LA10         58.4                      dB",
        "ams-001  2026-11-24T09:00:00Z  LA50         53.9                      dB",
        "ams-001  2026-11-24T09:00:00Z  LA90         49.6                      dB     floor",
        "ams-001  2026-11-24T09:00:00Z  LZeq         63.8                      dB",
        "ams-001  2026-11-24T09:00:00Z  cov             1                      1",
    ]


def test_one_plain_quantity(config):
    fill(config, example())
    r = cli("readings", "--config", str(config), "--since", "2026-11-24T08:00Z", "--quantity", "cov")
    assert r.returncode == 0, r.stderr
    assert r.stdout == """\
node     interval start (UTC)  quantity  avg  min  max  n  unit  flags
-------  --------------------  --------  ---  ---  ---  -  ----  -----
ams-001  2026-11-24T09:00:00Z  cov         1               1
"""


def test_all_nodes_one_quantity(config):
    fill(config, example(), batch(node="ams-002", seqs=[0, 1], ts0=T0))
    r = cli("readings", "--config", str(config), "--quantity", "pm25", "--since", "2026-11-24T09:00:00+00:00")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[2:] == [
        "ams-001  2026-11-24T09:00:00Z  pm25      5.2    4    7  58  ug/m3  rh_high",
        "ams-002  2026-11-24T09:00:00Z  pm25        5    4    7  58  ug/m3",
        "ams-002  2026-11-24T09:01:00Z  pm25        6    4    8  58  ug/m3",
    ]


def test_since_a_span_back_from_now(config):
    hour_ago = int(time.time()) - 3600
    fill(config, batch(node="ams-003", seqs=[0, 1, 2], ts0=hour_ago - 30 * 60, dur=30 * 60))
    # intervals start 90, 60 and 30 minutes ago
    for since, shown in (("45m", 1), ("61m", 2), ("2h", 3), ("1d", 3)):
        r = cli("readings", "--config", str(config), "--since", since, "--quantity", "temp")
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) - 2 == shown, (since, r.stdout)


def test_records_without_a_time_are_mentioned(config):
    fill(config, batch(node="ams-004", seqs=[0, 1], ts0=None))
    r = cli("readings", "--config", str(config), "--node", "ams-004", "--since", "1h")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("no readings of node ams-004 since ")
    assert lines[1] == "(2 records received since then have no known time yet and are not shown)"


def test_nothing_yet(config):
    fill(config, batch(seqs=[0], ts0=T0))
    r = cli("readings", "--config", str(config), "--since", "2030-01-01")
    assert (r.returncode, r.stdout) == (0, "no readings of any node since 2030-01-01T00:00:00Z\n")


def test_unknown_node(config):
    fill(config, batch(node="ams-001", seqs=[0]), batch(node="ams-002", seqs=[0]))
    r = cli("readings", "--config", str(config), "--node", "ams-007")
    assert r.returncode == 1
    assert f"no node 'ams-007' in {config.parent / 'gateway.db'}; known: ams-001, ams-002" in r.stderr


def test_no_store_yet(config):
    r = cli("readings", "--config", str(config))
    assert r.returncode == 1
    assert r.stderr == f"{config.parent / 'gateway.db'}: no store there (has the gateway run yet?)\n"


def test_bad_since(config):
    fill(config, batch(seqs=[0]))
    r = cli("readings", "--config", str(config), "--since", "yesterday")
    assert r.returncode == 2
    assert "--since: 'yesterday' is neither a span like 30m, 1h, 2d nor an ISO time" in r.stderr
