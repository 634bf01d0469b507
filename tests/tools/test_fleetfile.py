"""Editing the fleet register (tools/fleetfile.py, `meetkit fleet`): the operator's comments and
order kept, every edit checked as the gateway reads it before the file is replaced, concurrent
provisions on one laptop losing nothing."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from meetkit_gateway.fleet import Fleet, FleetError
from meetkit_tools import fleetfile
from meetkit_tools.cli import main

HAND_WRITTEN = '''\
# Amsterdam living lab: nodes on the canal ring.
# Ask Sanne before moving one.

[nodes."ams-001"]   # the first one up
board = "esp32-devkitc"
name = "Dam, lamp post 12"
lat = 52.37310     # measured with the phone, +-5 m
lon = 4.89220
serials = { pm = "PMS5003-2311-0412" }

# ams-002 waits for its bracket

[nodes."ams-002"]
name = "Spui"
notes = """
ladder needed
"""
'''


def test_a_new_register_gets_a_header_and_the_gateway_reads_every_value_back(tmp_path):
    path = tmp_path / "fleet.toml"
    assert fleetfile.get(path, "ams-001") is None  # no register yet
    when = dt.datetime(2026, 11, 24, 10, 12, tzinfo=dt.timezone.utc)
    fields = {"board": "esp32-s3-devkitc-1", "name": "Dam, lamp post 12", "lat": 52.3731, "lon": 4.8922,
              "height_m": 3.5, "installed": dt.date(2026, 11, 24), "serials": {"pm": "PMS-1", "mic": "ICS-2"},
              "noise_offset_db": -1.3, "calibrated": dt.date(2026, 11, 20), "notes": "canal side",
              "chip": "240ac4123456", "fw": "0.2.0", "provisioned": when}
    fleetfile.upsert(path, "ams-001", fields)
    text = path.read_text()
    assert text.startswith("# meetkit fleet register: one [nodes.\"<id>\"] table per node")
    assert '\n[nodes."ams-001"]\nboard = "esp32-s3-devkitc-1"\n' in text  # quoted as the docs write it
    assert "installed = 2026-11-24\n" in text and "provisioned = 2026-11-24T10:12:00Z\n" in text  # TOML dates
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the gateway's service user reads it
    assert Fleet(path).node_metadata("ams-001") == fields == fleetfile.get(path, "ams-001")
    assert fleetfile.get(path, "ams-404") is None


def test_comments_order_and_the_other_nodes_are_kept(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(HAND_WRITTEN)
    fleetfile.upsert(path, "ams-001", {"lat": 52.3732, "height_m": 3.5, "fw": "0.2.0", "serials": {"mic": "ICS-9"},
                                       "installed": dt.date(2026, 11, 24)})
    fleetfile.upsert(path, "ams-002", {"notes": None, "lat": 52.3668, "lon": 4.8897})
    fleetfile.upsert(path, "ams-003", {"board": "olimex-esp32-poe"})
    assert path.read_text() == textwrap.dedent('''\
        # Amsterdam living lab: nodes on the canal ring.
        # Ask Sanne before moving one.

        [nodes."ams-001"]   # the first one up
        board = "esp32-devkitc"
        name = "Dam, lamp post 12"
        lat = 52.3732     # measured with the phone, +-5 m
        lon = 4.89220
        height_m = 3.5
        installed = 2026-11-24
        serials = { pm = "PMS5003-2311-0412", mic = "ICS-9"}
        fw = "0.2.0"

        # ams-002 waits for its bracket

        [nodes."ams-002"]
        name = "Spui"
        lat = 52.3668
        lon = 4.8897

        [nodes."ams-003"]
        board = "olimex-esp32-poe"
        ''')
    # a serial removed alone, then the last one: the table goes
    fleetfile.upsert(path, "ams-001", {"serials": {"pm": None}})
    assert fleetfile.get(path, "ams-001")["serials"] == {"mic": "ICS-9"}
    fleetfile.upsert(path, "ams-001", {"serials": {"mic": None}})
    assert "serials" not in fleetfile.get(path, "ams-001") and "serials" not in path.read_text()


def test_a_bad_edit_names_the_problem_and_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(HAND_WRITTEN)
    before, inode = path.read_bytes(), path.stat().st_ino
    cases = [
        ({"lat": 152.4}, ['nodes."ams-001".lat: must be a number from -90 to 90, got 152.4 (a number)']),
        ({"installed": "2026-11-24"}, ['nodes."ams-001".installed: must be a date like 2026-11-24 (TOML, without '
                                       'quotes), got "2026-11-24" (a string)']),
        ({"serials": {"pms": "X"}}, ['nodes."ams-001".serials.pms: unknown sensor role; did you mean "pm"?']),
        ({"colour": "red"}, ['nodes."ams-001".colour: unknown key (known: board, name, lat, lon, height_m, '
                             'installed, serials, noise_offset_db, calibrated, notes, chip, fw, provisioned, config)']),
        ({"lon": None}, ['nodes."ams-001": lat and lon go together']),
    ]
    for fields, errors in cases:
        with pytest.raises(FleetError) as e:
            fleetfile.upsert(path, "ams-001", fields)
        assert e.value.errors == errors
    with pytest.raises(FleetError) as e:
        fleetfile.upsert(path, "AMS 1", {"name": "x"})
    assert e.value.errors == ['nodes."AMS 1": not a node id ([a-z0-9-], 1 to 32 characters)']
    assert path.read_bytes() == before and path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.toml", "fleet.toml.lock"]  # no temporary file left
    # a register someone broke by hand: an edit of another node says what is wrong there, and writes nothing
    path.write_text(HAND_WRITTEN.replace('name = "Spui"', 'name = "Spui"\nlat = 52.1'))
    with pytest.raises(FleetError) as e:
        fleetfile.upsert(path, "ams-001", {"fw": "0.2.0"})
    assert e.value.errors == ['nodes."ams-002": lat and lon go together']
    path.write_text("[nodes\n")
    with pytest.raises(FleetError, match="not valid TOML"):
        fleetfile.upsert(path, "ams-001", {"fw": "0.2.0"})
    assert path.read_text() == "[nodes\n"


def test_the_file_is_replaced_whole_and_keeps_its_mode(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(HAND_WRITTEN)
    path.chmod(0o640)
    inode = path.stat().st_ino
    fleetfile.upsert(path, "ams-002", {"lat": 52.3668, "lon": 4.8897})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # a new file renamed over the old: a reader sees one or the other whole


WRITER = """
import sys
from meetkit_tools.fleetfile import upsert
path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    upsert(path, f"{prefix}-{i:03d}", {"name": f"{prefix} {i}", "lat": 52.0 + i / 1000, "lon": 4.9})
"""


def test_concurrent_provisions_on_one_laptop_keep_every_row(tmp_path):
    path = tmp_path / "fleet.toml"
    n = 40
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), prefix, str(n)], stderr=subprocess.PIPE,
                              text=True) for prefix in ("north", "south", "east")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    nodes = Fleet(path).nodes()
    assert len(nodes) == 3 * n, sorted(nodes)
    assert nodes["south-039"] == {"name": "south 39", "lat": 52.039, "lon": 4.9}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_meetkit_fleet_set_show_and_check(tmp_path, capsys, monkeypatch):
    path = tmp_path / "fleet.toml"
    monkeypatch.setenv("MEETKIT_FLEET", str(path))  # the default file, as a technician's shell would set it
    code, out, _ = run(capsys, "fleet", "set", "ams-001", "--lat", "52.3731", "--lon", "4.8922", "--height", "3.5",
                       "--name", "Dam, lamp post 12", "--installed", "2026-11-24", "--serial", "pm=PMS-1",
                       "--serial", "mic=ICS-2", "--noise-offset", "-1.3", "--calibrated", "2026-11-20",
                       "--notes", "canal side", "--board", "esp32-devkitc")
    assert code == 0 and out.startswith(f"{path}: ams-001 written\nams-001\n  board            esp32-devkitc\n")
    assert Fleet(path).node_metadata("ams-001") == {
        "board": "esp32-devkitc", "name": "Dam, lamp post 12", "lat": 52.3731, "lon": 4.8922, "height_m": 3.5,
        "installed": dt.date(2026, 11, 24), "serials": {"pm": "PMS-1", "mic": "ICS-2"}, "noise_offset_db": -1.3,
        "calibrated": dt.date(2026, 11, 20), "notes": "canal side"}
    assert run(capsys, "fleet", "set", "ams-002", "--name", "Spui", "--installed", "today")[0] == 0
    code, out, err = run(capsys, "fleet", "set", "ams-002", "--lat", "152", "--lon", "4.9")
    assert code == 1 and err == (f"meetkit fleet set: not written, {path} is as it was\n{path}: 1 error\n"
                                 '  nodes."ams-002".lat: must be a number from -90 to 90, got 152.0 (a number)\n')
    code, out, _ = run(capsys, "fleet", "show")
    assert code == 0 and out.splitlines() == [
        f"{path}: 2 nodes",
        "  node     board          name               position                    installed   fw",
        "  ams-001  esp32-devkitc  Dam, lamp post 12  52.37310, 4.89220 at 3.5 m  2026-11-24  -",
        f"  ams-002  -              Spui               -                           {dt.date.today()}  -"]
    code, out, _ = run(capsys, "fleet", "show", "ams-001")
    assert code == 0 and "  serials          pm PMS-1, mic ICS-2\n" in out and (
        "  map              https://www.openstreetmap.org/?mlat=52.37310&mlon=4.89220#map=18/52.37310/4.89220\n" in out)
    assert run(capsys, "fleet", "show", "ams-404")[0] == 1
    code, out, _ = run(capsys, "fleet", "check")
    assert code == 0 and out == (f"{path}: OK, 2 nodes, 1 with a position\n"
                                 "  ams-002: no position (lat, lon): a sensorthings target refuses its readings\n")
    code, out, _ = run(capsys, "fleet", "set", "ams-002", "--unset", "installed", "--serial", "pm=X", "--serial", "pm=")
    assert code == 0 and fleetfile.get(path, "ams-002") == {"name": "Spui"}
    # --fleet names another file; a broken one is named problem by problem, exit 1
    other = tmp_path / "other.toml"
    other.write_text('[nodes."ams-009"]\nlat = 152.4\nlon = "4.9"\n')
    code, out, err = run(capsys, "fleet", "check", "--fleet", str(other))
    assert code == 1 and err == (f"{other}: 2 errors\n"
                                 '  nodes."ams-009".lat: must be a number from -90 to 90, got 152.4 (a number)\n'
                                 '  nodes."ams-009".lon: must be a number from -180 to 180, got "4.9" (a string)\n')
    assert run(capsys, "fleet", "show", "--fleet", str(tmp_path / "none.toml"))[0] == 1
    assert os.path.exists(path)


def test_the_registers_config_keys_are_the_firmwares():
    """fleet.CONFIG_KEYS is the gateway's list of config.json keys a node may be sent: the firmware's
    own (firmware/lib/config.py's DEFAULTS) less noise_offset_db (the register's own key, beside
    `calibrated`), with wifi and broker. A key the firmware gains fails this until the register takes it."""
    from meetkit_gateway.fleet import CONFIG_KEYS
    from meetkit_tools import nodeconfig

    firmware = set(nodeconfig.firmware_config().DEFAULTS)
    assert set(CONFIG_KEYS) == firmware - {"noise_offset_db"} | {"wifi", "broker"}


def test_meetkit_fleet_set_config_is_checked_with_the_firmwares_rules(tmp_path, capsys):
    path = tmp_path / "fleet.toml"
    path.write_text(HAND_WRITTEN)
    code, out, err = run(capsys, "fleet", "set", "ams-001", "--fleet", str(path), "--config", "interval_s=120",
                         "--config", 'broker={"host": "meetkit-gw", "port": 8883, "tls": true}', "--wifi", "lab")
    assert code == 0, err
    assert "  config           interval_s 120, broker {\"host\": \"meetkit-gw\", \"port\": 8883, \"tls\": true}, " \
           "wifi {\"ssid\": \"lab\"}\n" in out
    text = path.read_text()
    assert text.startswith(HAND_WRITTEN.split("# ams-002")[0].rstrip("\n"))  # comments and order kept
    assert ('[nodes."ams-001".config]\ninterval_s = 120\nbroker = {host = "meetkit-gw", port = 8883, tls = true}\n'
            'wifi = {ssid = "lab"}\n') in text
    assert fleetfile.get(path, "ams-001")["config"] == {  # type: ignore[index]
        "interval_s": 120, "broker": {"host": "meetkit-gw", "port": 8883, "tls": True}, "wifi": {"ssid": "lab"}}
    before = path.read_text()
    for args, said in (
        (["--config", "interval_s=5"],
         'nodes."ams-001".config.interval_s: 5 is not a whole number from 10 to 3600 (the firmware\'s rule)'),
        (["--config", "spool_kb=99999"],
         'nodes."ams-001".config.spool_kb: 99999 is not a whole number from 32 to 16384 (the firmware\'s rule)'),
        (["--config", 'broker={"host": "gw", "tls": "yes"}'],
         "nodes.\"ams-001\".config.broker.tls: must be true or false, got \"yes\" (a string)"),
        (["--noise-offset", "25"], 'nodes."ams-001".noise_offset_db: must be a number from -20 to 20, got 25.0'),
        (["--config", 'wifi={"ssid": "lab", "password": "hunter2-SECRET"}'],
         'nodes."ams-001".config.wifi.password: never in the register'),
    ):
        code, out, err = run(capsys, "fleet", "set", "ams-001", "--fleet", str(path), *args)
        assert code == 1 and said in err, err
        assert "hunter2-SECRET" not in out + err
        assert path.read_text() == before
    code, out, err = run(capsys, "fleet", "set", "ams-001", "--fleet", str(path), "--config", "interval_s=")
    assert code == 0 and "interval_s" not in fleetfile.get(path, "ams-001")["config"]  # type: ignore[index]
    # a register edited by hand past the firmware's rules: `fleet check` names it, as the node would
    path.write_text(path.read_text().replace('wifi = {ssid = "lab"}', 'wifi = {ssid = "lab"}\nntp_every_s = 5'))
    code, out, err = run(capsys, "fleet", "check", "--fleet", str(path))
    assert code == 1 and err == (f"{path}: 1 error\n  nodes.\"ams-001\".config.ntp_every_s: 5 is not a whole number "
                                 "from 60 to 86400 (the firmware's rule)\n")
