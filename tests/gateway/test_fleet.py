"""The fleet file (gateway/fleet.py): positions of the nodes, every problem named, read again when it changes."""

from __future__ import annotations

import os

import pytest

from meetkit_gateway.fleet import Fleet, FleetError


def test_positions_names_and_heights_and_nodes_it_does_not_know(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[nodes."ams-001"]\nlat = 52.3731\nlon = 4.8922\nheight_m = 3\nname = "Dam"\n'
                    '[nodes."ams-002"]\nname = "not mounted yet"\n')
    fleet = Fleet(path)
    assert fleet.node_metadata("ams-001") == {"lat": 52.3731, "lon": 4.8922, "height_m": 3.0, "name": "Dam"}
    assert fleet.node_metadata("ams-002") == {"name": "not mounted yet"}
    assert fleet.node_metadata("ams-404") is None
    assert Fleet(None).node_metadata("ams-001") is None  # no file configured: nothing is known


def test_a_change_is_read_without_a_restart(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text('[nodes."ams-001"]\nlat = 52.0\nlon = 4.0\n')
    fleet = Fleet(path)
    assert fleet.node_metadata("ams-002") is None
    path.write_text('[nodes."ams-001"]\nlat = 52.0\nlon = 4.0\n[nodes."ams-002"]\nlat = 51.0\nlon = 5.0\n')
    os.utime(path, ns=(1, 2_000_000_000_000_000_000))  # a different mtime even within the clock's resolution
    assert fleet.node_metadata("ams-002") == {"lat": 51.0, "lon": 5.0}


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
        'nodes."ams-001".heigth_m: unknown key (known: lat, lon, height_m, name)',
        'nodes."ams-002".name: must be a non-empty string',
        'nodes."ams-002": lat and lon go together',
    ]
    path.write_text("[nodes\n")
    with pytest.raises(FleetError, match="not valid TOML"):
        Fleet(path).node_metadata("ams-001")
    with pytest.raises(FleetError, match="cannot read the file: No such file or directory"):
        Fleet(tmp_path / "missing.toml").node_metadata("ams-001")
