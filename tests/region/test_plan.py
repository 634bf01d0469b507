"""`meetkit region check`: the plan is read whole and every problem names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meetkit_tools import region
from meetkit_tools.cli import main

from .conftest import EXAMPLE_PLAN

GOOD = """
[region]
name = "utrecht-region"
topic_prefix = "meetkit"
central = "mqtts://central.example.org:8883"
store = "http://vm.example.org:8428"

[gateways."ut-1"]
town = "utrecht"
host = "10.0.1.1"
neighbours = ["ut-2"]

[gateways."ut-2"]
town = "utrecht"
host = "10.0.1.2"
neighbours = ["ut-1"]
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    p = tmp_path / "region.toml"
    p.write_text(text)
    with pytest.raises(region.RegionError) as e:
        region.load_plan(p)
    assert all(x.startswith(f"{p}: ") for x in e.value.problems)
    return [x[len(f"{p}: "):] for x in e.value.problems]


def test_the_example_plan_holds_and_check_says_what_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    plan = region.load_plan(EXAMPLE_PLAN)
    assert plan.towns == {"utrecht": ["ut-1", "ut-2"], "zeist": ["zs-1"]}
    assert plan.gateways["ut-1"].neighbours == ("ut-2", "zs-1")
    assert plan.gateways["ut-2"].port == 8883 and plan.gateways["ut-2"].http == 8080  # the defaults
    assert plan.gateways["zs-1"].store_max_bytes == 500_000_000 and plan.gateways["ut-1"].store_max_bytes is None
    assert plan.gateways["ut-2"].broker == (EXAMPLE_PLAN.parent / "ut-2" / "broker").absolute()  # beside the plan
    assert main(["region", "check", "--plan", str(EXAMPLE_PLAN)]) == 0
    out = capsys.readouterr().out
    assert "town zeist: zs-1 (10.0.2.1; fails over to ut-1)" in out
    assert "3 gateway(s) in 2 town(s)" in out and "the plan holds" in out


@pytest.mark.parametrize("change, expected", [
    (lambda t: t.replace('name = "utrecht-region"', 'name = "Utrecht Region"'),
     ["region.name: 'Utrecht Region' must be 1-32 of a-z, 0-9, '-'"]),
    (lambda t: t.replace('topic_prefix = "meetkit"', 'topic_prefix = "meetkit/#"'),
     ["region.topic_prefix: 'meetkit/#' must be levels of letters"]),
    (lambda t: t.replace('central = "mqtts://', 'central = "https://'),
     ["region.central: 'https://central.example.org:8883' is not mqtt://host[:port] or mqtts://host[:port]"]),
    (lambda t: t.replace('store = "http://vm.example.org:8428"', 'store = "vm.example.org:8428"'),
     ["region.store: 'vm.example.org:8428' is not http://host[:port] or https://host[:port]"]),
    (lambda t: t.replace('store = "http', 'stroe = "http'),
     ["region.stroe: not a key of [region]", "region.store: missing or not a string"]),
    (lambda t: t.replace('town = "utrecht"\nhost = "10.0.1.2"', 'town = "Utrecht"\nhost = "10.0.1.2"'),
     ["gateways.ut-2.town: 'Utrecht' must be 1-32 of a-z, 0-9, '-'"]),
    (lambda t: t.replace('neighbours = ["ut-2"]', 'neighbours = ["ut-2", "ut-9"]'),
     ["gateways.ut-1.neighbours: 'ut-9' is not a gateway of the plan (it has ut-1, ut-2)"]),
    (lambda t: t.replace('neighbours = ["ut-2"]', 'neighbours = ["ut-1"]'),
     ["gateways.ut-1.neighbours: names the gateway itself ('ut-1')"]),
    (lambda t: t.replace('neighbours = ["ut-2"]', 'neighbours = "ut-2"'),
     ["gateways.ut-1.neighbours: 'ut-2' is not a list of gateway names"]),
    (lambda t: t.replace('host = "10.0.1.1"', 'host = "10.0.1.1"\nport = 70000'),
     ["gateways.ut-1.port: 70000 is not a port (1-65535)"]),
    (lambda t: t.replace('host = "10.0.1.1"', 'host = "10.0.1.1"\nhttp = "8080"'),
     ["gateways.ut-1.http: '8080' is not a port (1-65535)"]),
    (lambda t: t.replace('host = "10.0.1.2"', 'host = "10.0.1.1"'),
     ["gateways.ut-2.port: 10.0.1.1:8883 is also gateways.ut-1.port's",
      "gateways.ut-2.http: 10.0.1.1:8080 is also gateways.ut-1.http's"]),
    (lambda t: t.replace('host = "10.0.1.1"', 'host = "gw one"'),
     ["gateways.ut-1.host: 'gw one' is not a host name or IP address"]),
    (lambda t: t.replace('host = "10.0.1.1"', 'hots = "10.0.1.1"'),
     ["gateways.ut-1.hots: not a key of a gateway", "gateways.ut-1.host: missing or not a string"]),
    (lambda t: t.replace('[gateways."ut-2"]', '[gateways."UT_2"]').replace('["ut-2"]', '["UT_2"]'),
     ["gateways.UT_2: the gateway's name must be 1-32 of a-z, 0-9, '-'"]),
    (lambda t: t.replace('host = "10.0.1.1"', 'host = "10.0.1.1"\nstore_max_bytes = -1'),
     ["gateways.ut-1.store_max_bytes: -1 is not a positive number of bytes"]),
    (lambda t: t.replace('host = "10.0.1.1"', 'host = "10.0.1.1"\nbroker = ""'),
     ["gateways.ut-1.broker: '' is not a folder"]),
    (lambda t: t.split("[gateways.")[0], ['gateways: none (a [gateways."<name>"] table for each gateway)']),
    (lambda t: t.replace("[region]", "[regoin]"),
     ["regoin: not a table of the plan", "region: missing (a [region] table"]),
])
def test_every_problem_names_its_key(tmp_path: Path, change, expected: list[str]) -> None:
    got = problems(tmp_path, change(GOOD))
    assert len(got) == len(expected), got
    for g, e in zip(got, expected):
        assert g.startswith(e), (g, e)


def test_all_problems_at_once_and_the_cli_exits_1_naming_each(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "region.toml"
    p.write_text(GOOD.replace('town = "utrecht"\nhost = "10.0.1.1"', 'town = "Utrecht"\nhost = "10.0.1.1"\nport = 0')
                 .replace('neighbours = ["ut-1"]', 'neighbours = ["ut-3"]'))
    assert main(["region", "check", "--plan", str(p)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [ln.split(": ")[2] for ln in err] == ["gateways.ut-1.town", "gateways.ut-1.port", "gateways.ut-2.neighbours"]
    assert all(ln.startswith(f"meetkit region check: {p}: ") for ln in err)


def test_not_toml_and_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "region.toml"
    p.write_text('[region]\nname = "x\n')
    assert main(["region", "check", "--plan", str(p)]) == 1
    assert f"{p}: not TOML" in capsys.readouterr().err
    assert main(["region", "check", "--plan", str(tmp_path / "none.toml")]) == 1
    assert "none.toml: cannot be read" in capsys.readouterr().err


def test_a_gateway_without_neighbours_is_allowed_and_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "region.toml"
    p.write_text(GOOD.replace('neighbours = ["ut-1"]', "neighbours = []"))
    assert main(["region", "check", "--plan", str(p)]) == 0
    assert "note: gateways.ut-2.neighbours: none; its nodes have no other broker to fail over to" in capsys.readouterr().out
