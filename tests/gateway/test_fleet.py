"""The fleet register (gateway/fleet.py): every key of contract 5 read and typed, every problem
named, read again when it changes."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from meetkit_gateway.fleet import Fleet, FleetError

FULL = '''
# the lab's register
[nodes."ams-001"]
board = "esp32-devkitc"
name = "Dam, lamp post 12"
lat = 52.37310
lon = 4.89220
height_m = 3.5
installed = 2026-11-24
serials = { pm = "PMS5003-2311-0412", mic = "ICS-7781", climate = "BME-0042" }
noise_offset_db = -1.3
calibrated = 2026-11-20
notes = """bracket on the canal side;
key with the caretaker"""
chip = "240AC4123456"
fw = "0.2.0"
provisioned = 2026-11-24T10:12:00+01:00
'''


def test_every_key_of_the_register_is_read_and_typed(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(FULL)
    assert Fleet(path).node_metadata("ams-001") == {
        "board": "esp32-devkitc", "name": "Dam, lamp post 12", "lat": 52.3731, "lon": 4.8922, "height_m": 3.5,
        "installed": dt.date(2026, 11, 24),
        "serials": {"pm": "PMS5003-2311-0412", "mic": "ICS-7781", "climate": "BME-0042"},
        "noise_offset_db": -1.3, "calibrated": dt.date(2026, 11, 20),
        "notes": "bracket on the canal side;\nkey with the caretaker",
        "chip": "240ac4123456",  # lower case, however it was typed
        "fw": "0.2.0",
        "provisioned": dt.datetime(2026, 11, 24, 9, 12, tzinfo=dt.timezone.utc),
    }


def test_positions_names_and_heights_and_nodes_it_does_not_know(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[nodes."ams-001"]\nlat = 52.3731\nlon = 4.8922\nheight_m = 3\nname = "Dam"\n'
                    '[nodes."ams-002"]\nname = "not mounted yet"\n[nodes."ams-003"]\n')
    fleet = Fleet(path)
    assert fleet.node_metadata("ams-001") == {"lat": 52.3731, "lon": 4.8922, "height_m": 3.0, "name": "Dam"}
    assert fleet.node_metadata("ams-002") == {"name": "not mounted yet"}
    assert fleet.node_metadata("ams-404") is None
    # an empty table says nothing of the node, but the node is in the register (the status page lists it)
    assert fleet.node_metadata("ams-003") is None and sorted(fleet.nodes()) == ["ams-001", "ams-002", "ams-003"]
    assert Fleet(None).node_metadata("ams-001") is None and Fleet(None).nodes() == {}  # no file configured


def test_a_change_is_read_without_a_restart(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[nodes."ams-001"]\nlat = 52.0\nlon = 4.0\n')
    fleet = Fleet(path)
    assert fleet.node_metadata("ams-002") is None
    path.write_text('[nodes."ams-001"]\nlat = 52.0\nlon = 4.0\n[nodes."ams-002"]\nlat = 51.0\nlon = 5.0\n')
    os.utime(path, ns=(1, 2_000_000_000_000_000_000))  # a different mtime even within the clock's resolution
    assert fleet.node_metadata("ams-002") == {"lat": 51.0, "lon": 5.0}
    # replaced by a rename (as `meetkit fleet set` does) with the same size and mtime: a new inode
    new = tmp_path / "fleet.new"
    new.write_text(path.read_text().replace("lat = 51.0", "lat = 51.5"))
    st = path.stat()
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)
    assert fleet.node_metadata("ams-002") == {"lat": 51.5, "lon": 5.0}


def test_every_problem_is_named(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('owner = "x"\n[nodes."AMS 1"]\nlat = 1\n[nodes."ams-001"]\nlat = 91\nlon = true\nheigth_m = 2\n'
                    '[nodes."ams-002"]\nlat = 52.0\nname = ""\n')
    with pytest.raises(FleetError) as e:
        Fleet(path).node_metadata("ams-001")
    assert e.value.errors == [
        'owner: unknown key (the file has [nodes."<id>"] tables only)',
        'nodes."AMS 1": not a node id ([a-z0-9-], 1 to 32 characters)',
        'nodes."ams-001".lat: must be a number from -90 to 90, got 91 (an integer)',
        'nodes."ams-001".lon: must be a number from -180 to 180, got true (a boolean)',
        'nodes."ams-001".heigth_m: unknown key; did you mean "height_m"?',
        'nodes."ams-002".name: must be a non-empty string of at most 200 characters, got "" (a string)',
        'nodes."ams-002": lat and lon go together',
    ]
    path.write_text("[nodes\n")
    with pytest.raises(FleetError, match="not valid TOML"):
        Fleet(path).node_metadata("ams-001")
    with pytest.raises(FleetError, match="cannot read the file: No such file or directory"):
        Fleet(tmp_path / "missing.toml").node_metadata("ams-001")


def test_the_new_keys_refuse_what_they_cannot_use(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[nodes."ams-001"]\nboard = "ESP32 DevKitC"\ninstalled = "2026-11-24"\n'
                    'serials = { pm = "A1", pms = "B2", mic = 7 }\nnoise_offset_db = 25\ncalibrated = 2026-11-20T08:00:00\n'
                    'notes = 3\nchip = "24:0a:c4:12:34:56"\nfw = ""\nprovisioned = 2026-11-24T10:12:00\n'
                    'colour = "red"\n'
                    '[nodes."ams-002"]\nserials = "PMS5003-1"\nprovisioned = 2026-11-24\ninstalled = 10:12:00\n')
    with pytest.raises(FleetError) as e:
        Fleet(path).nodes()
    assert e.value.errors == [
        'nodes."ams-001".board: must be a board name (a-z, 0-9 and "-"), like "esp32-devkitc", '
        'got "ESP32 DevKitC" (a string)',
        'nodes."ams-001".installed: must be a date like 2026-11-24 (TOML, without quotes), got "2026-11-24" (a string)',
        'nodes."ams-001".serials.pms: unknown sensor role; did you mean "pm"?',
        'nodes."ams-001".serials.mic: must be a non-empty string of at most 200 characters, got 7 (an integer)',
        'nodes."ams-001".noise_offset_db: must be a number from -20 to 20, got 25 (an integer)',
        'nodes."ams-001".calibrated: must be a date like 2026-11-24 (TOML, without quotes), '
        'got 2026-11-20T08:00:00 (a local date-time, without an offset)',
        'nodes."ams-001".notes: must be a string, got 3 (an integer)',
        'nodes."ams-001".chip: must be the chip id: 12 hex digits (its MAC without ":"), like "240ac4123456", '
        'got "24:0a:c4:12:34:56" (a string)',
        'nodes."ams-001".fw: must be a non-empty string of at most 200 characters, got "" (a string)',
        'nodes."ams-001".provisioned: must be a date-time with its offset like 2026-11-24T10:12:00Z (TOML), '
        'got 2026-11-24T10:12:00 (a local date-time, without an offset)',
        'nodes."ams-001".colour: unknown key (known: board, name, lat, lon, height_m, installed, serials, '
        'noise_offset_db, calibrated, notes, chip, fw, provisioned, config)',
        'nodes."ams-002".serials: must be a table like { pm = "...", mic = "..." }, got "PMS5003-1" (a string)',
        'nodes."ams-002".provisioned: must be a date-time with its offset like 2026-11-24T10:12:00Z (TOML), '
        'got 2026-11-24 (a date)',
        'nodes."ams-002".installed: must be a date like 2026-11-24 (TOML, without quotes), got 10:12:00 (a time)',
    ]


def test_a_wrong_file_stays_wrong_until_it_is_fixed_and_then_is_read(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[nodes."ams-001"]\nlat = 152.4\nlon = 4.9\n')
    fleet = Fleet(path)
    for _ in range(2):  # the same problem every time it is asked, not only the first
        with pytest.raises(FleetError, match=r'nodes\."ams-001"\.lat: must be a number from -90 to 90, got 152\.4'):
            fleet.nodes()
    path.write_text('[nodes."ams-001"]\nlat = 52.4\nlon = 4.9\n')
    os.utime(path, ns=(1, 3_000_000_000_000_000_000))
    assert fleet.nodes() == {"ams-001": {"lat": 52.4, "lon": 4.9}}
    path.unlink()
    with pytest.raises(FleetError, match="cannot read the file"):
        fleet.nodes()


def test_meetkit_gateway_check_shows_the_register_and_its_problems(tmp_path):
    from .conftest import cli

    conf = tmp_path / "gateway.toml"
    conf.write_text('[store]\npath = "data.db"\n[fleet]\npath = "fleet.toml"\n')
    (tmp_path / "fleet.toml").write_text(FULL + '[nodes."ams-002"]\nname = "Spui"\n')
    r = cli("check", "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert f"  fleet       {tmp_path / 'fleet.toml'}: 2 nodes, 1 with a position" in r.stdout.splitlines()
    (tmp_path / "fleet.toml").write_text('[nodes."ams-001"]\nlat = 152.4\nlon = 4.9\ncolour = "red"\n')
    r = cli("check", "--config", str(conf))
    assert r.returncode == 0, r.stderr  # gateway.toml is good, and the gateway runs with a bad register
    lines = r.stdout.splitlines()
    i = lines.index(f"  fleet       {tmp_path / 'fleet.toml'}: CANNOT BE USED, 2 problems (ingest goes on; the "
                    "status page shows no names; sensorthings holds back new nodes):")
    assert lines[i + 1:i + 3] == [
        '                nodes."ams-001".lat: must be a number from -90 to 90, got 152.4 (a number)',
        '                nodes."ams-001".colour: unknown key (known: board, name, lat, lon, height_m, installed, '
        'serials, noise_offset_db, calibrated, notes, chip, fw, provisioned, config)']
