"""`meetkit-gateway publish`: what it refuses and says (exit 1 for the register, store or folder, 2
for an option), and an older store's implausible records (tests/gateway/older_store.py) left out
and counted, the site otherwise the same as from the same store without them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import cli
from .older_store import T0, build

AT = "2026-11-24T12:00:00+01:00"  # T0 is 09:00 UTC on that day: the page of the day after has it
REGISTER = '[nodes."ams-001"]\nname = "Dam"\nlat = 52.37\nlon = 4.89\n[nodes."ams-002"]\nname = "Spui"\n'


def setup(tmp_path: Path, register: str | None = REGISTER, store: bool = True) -> Path:
    fleet = '[fleet]\npath = "fleet.toml"\n' if register is not None else ""
    (tmp_path / "gateway.toml").write_text(f'[mqtt]\nhost = "127.0.0.1"\n[store]\npath = "gateway.db"\n{fleet}')
    if register is not None:
        (tmp_path / "fleet.toml").write_text(register)
    if store:
        build(tmp_path / "gateway.db", T0, implausible_too=False)
    return tmp_path / "gateway.toml"


def publish(config: Path, out: Path, *extra: str):
    return cli("publish", "--config", str(config), "--out", str(out), "--at", "2026-11-25T12:00:00+01:00", *extra)


def test_without_a_register_nothing_is_published(tmp_path):
    done = publish(setup(tmp_path, register=None), tmp_path / "site")
    assert done.returncode == 1 and "publish needs [fleet] path" in done.stderr, done.stderr
    assert not (tmp_path / "site").exists()


def test_a_wrong_register_names_its_problems(tmp_path):
    done = publish(setup(tmp_path, register='[nodes."ams-001"]\nlat = 152.4\n'), tmp_path / "site")
    assert done.returncode == 1, done.stderr
    assert 'nodes."ams-001".lat: must be a number from -90 to 90, got 152.4' in done.stderr
    assert "lat and lon go together" in done.stderr and "nothing published" in done.stderr


def test_no_store_yet(tmp_path):
    done = publish(setup(tmp_path, store=False), tmp_path / "site")
    assert done.returncode == 1 and "does not exist (yet): run the gateway first" in done.stderr, done.stderr


@pytest.mark.parametrize("extra, said", [
    (("--tz", "Europe/Amsterdm"), "--tz: 'Europe/Amsterdm' is not a time zone"),
    (("--days", "0"), "--days: must be from 1 to 3660, got 0"),
    (("--at", "yesterday"), "--at: "),
])
def test_wrong_options(tmp_path, extra, said):
    done = publish(setup(tmp_path), tmp_path / "site", *extra)
    assert done.returncode == 2 and said in done.stderr, done.stderr


def test_an_unwritable_folder(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    done = publish(setup(tmp_path), tmp_path / "file" / "site")
    assert done.returncode == 1 and "--out: cannot write" in done.stderr, done.stderr


def test_an_older_store_s_implausible_records_are_left_out_and_counted(tmp_path):
    clean, odd = tmp_path / "clean", tmp_path / "odd"
    clean.mkdir(), odd.mkdir()
    setup(clean)
    config = setup(odd, store=False)
    build(odd / "gateway.db", T0, implausible_too=True)
    a, b = publish(clean / "gateway.toml", clean / "site"), publish(config, odd / "site")
    assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
    assert "implausible" not in a.stdout and "not in the fleet register: ams-004\n" in a.stdout, a.stdout
    assert "left out 2 node(s) not in the fleet register: ams-003, ams-004" in b.stdout, b.stdout
    assert "left out 1 record(s) with an implausible interval start, length or counters" in b.stdout, b.stdout
    for f in ("daily.csv", "hourly.csv"):
        assert (odd / "site" / "data" / f).read_text() == (clean / "site" / "data" / f).read_text(), f
    assert (clean / "site" / "data" / "hourly.csv").read_text().count("\n") > 1  # it had something to show


def test_the_publisher_s_systemd_unit_is_hardened():
    """packaging/meetkit-public.service: the gateway's dynamic user (to read the store), a oneshot that
    writes only its web folder, no network; systemd-analyze rates it "OK" (2.0 at most), offline."""
    unit = Path(__file__).resolve().parents[2] / "packaging" / "meetkit-public.service"
    text = unit.read_text()
    for line in ("Type=oneshot", "DynamicUser=yes", "User=meetkit-gateway", "StateDirectory=meetkit-gateway",
                 "ReadWritePaths=/var/www/meetkit-public", "PrivateNetwork=yes", "ProtectSystem=strict",
                 "publish --config /etc/meetkit/gateway.toml --out /var/www/meetkit-public"):
        assert line in text, line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found (Debian: package systemd)")
    res = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m[1]) <= 2.0, res.stdout
    timer = unit.with_suffix(".timer").read_text()
    assert "OnUnitActiveSec=10min" in timer and "WantedBy=timers.target" in timer


@pytest.mark.parametrize("extra, zone", [((), "America/Sao_Paulo"), (("--tz", "Europe/Brussels"), "Europe/Brussels")])
def test_the_days_are_in_the_operators_time_zone_unless_told(tmp_path, extra, zone):
    """The page's days and noise periods follow `[http] timezone` (the status page's) by default."""
    config = setup(tmp_path)
    config.write_text(config.read_text() + '[http]\ntimezone = "America/Sao_Paulo"\n')
    done = publish(config, tmp_path / "site", *extra)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "site" / "data" / "daily.json").read_text())["timezone"] == zone
