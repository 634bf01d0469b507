"""docs/operator.md, "A region of gateways", says what `meetkit region` does, checked: the plan shown
is deploy/region/region.example.toml and loads; its key table is the keys the plan takes, with
their defaults; every `meetkit` command the section shows parses; the options table is the
options of `meetkit region prometheus` with their defaults; the alerts table is the alerts the
rules file has, each from a metric its rule reads."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from meetkit_tools import region
from meetkit_tools.cli import build_parser

from .conftest import EXAMPLE_PLAN, ROOT

OPERATOR = ROOT / "docs" / "operator.md"


def section() -> str:
    text = OPERATOR.read_text()
    start = text.index("\n## A region of gateways\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def table(after: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table after the line starting with `after`."""
    lines = section().splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(after))
    rows = []
    for ln in lines[i + 1:]:
        if ln.startswith("|"):
            rows.append([c.strip() for c in ln.strip("|").split("|")])
        elif rows:
            break
    return rows[1:]  # without the head's rule


def test_the_plan_shown_is_the_example_and_it_loads(tmp_path: Path) -> None:
    # the plan's block (the section also shows a gateway's [region] table)
    (shown,) = [b for b in re.findall(r"```toml\n(.*?)```", section(), re.S) if "[gateways." in b]
    assert shown == EXAMPLE_PLAN.read_text()
    plan = region.load_plan(EXAMPLE_PLAN)
    assert set(plan.gateways) == {"ut-1", "ut-2", "zs-1"}


def test_the_key_table_is_the_keys_the_plan_takes_with_their_defaults(tmp_path: Path) -> None:
    rows = table("| key | what | default |")
    keys = {r[0].strip("`"): r[2].strip("`") for r in rows}
    assert {k.split(".")[-1] for k in keys if k.startswith("region.")} == region.REGION_KEYS
    assert {k.split(".")[-1] for k in keys if k.startswith("gateways.")} == region.GATEWAY_KEYS
    # the defaults said are the plan's: a gateway with only the required keys
    p = tmp_path / "region.toml"
    p.write_text('[region]\nname = "r"\ncentral = "mqtt://c"\nstore = "http://s"\n'
                 '[gateways."g-1"]\ntown = "t"\nhost = "h"\n')
    plan = region.load_plan(p)
    g = plan.gateways["g-1"]
    assert keys["region.topic_prefix"] == plan.topic_prefix
    assert (keys["gateways.<name>.port"], keys["gateways.<name>.http"]) == (str(g.port), str(g.http))
    assert keys["gateways.<name>.store_max_bytes"] == "none" and g.store_max_bytes is None  # the gateway's own
    assert keys["gateways.<name>.neighbours"] == "none" and g.neighbours == ()
    assert keys["gateways.<name>.broker"] == "none" and g.broker is None
    assert [k for k, v in keys.items() if v == "required"] == [
        "region.name", "region.central", "region.store", "gateways.<name>.town", "gateways.<name>.host"]


def commands() -> list[str]:
    """Every `meetkit ...` command the section shows, in backticks or as an indented line."""
    text = section()
    found = re.findall(r"`(meetkit [^`]+)`", text)
    found += [ln.strip().split("  #")[0].strip() for ln in text.splitlines()
              if ln.startswith("    meetkit ")]
    return found


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


@pytest.mark.parametrize("command", commands())
def test_every_command_shown_parses(command: str) -> None:
    argv = ["x" if a == "..." else a for a in shlex.split(command)[1:]]
    if any(a.startswith("-") for a in argv):
        build_parser().parse_args(argv)  # exits (SystemExit) on an option it does not take
    else:  # a command named, not run: each word is a command of the one before
        parser = build_parser()
        for word in argv:
            assert word in _subcommands(parser), command
            parser = _subcommands(parser)[word]


def test_the_section_shows_every_region_command() -> None:
    shown = {c.split()[2] for c in commands() if c.startswith("meetkit region ")}
    assert shown == set(_subcommands(_subcommands(build_parser())["region"]))


def _prometheus_options() -> dict[str, object]:
    prom = _subcommands(_subcommands(build_parser())["region"])["prometheus"]
    return {a.option_strings[0]: a.default for a in prom._actions
            if a.option_strings and a.option_strings[0] not in ("-h", "--plan", "--out")}


def test_the_options_table_is_the_options_of_region_prometheus_with_their_defaults() -> None:
    rows = table("| option | default | what |")
    said = {r[0].strip("`"): r[1].strip("`") for r in rows}
    options = _prometheus_options()
    assert set(said) == set(options)
    for opt, default in options.items():
        if isinstance(default, (int, float)) and opt not in ("--store-near", "--backlog-records"):
            assert region.prom_duration(default) == said[opt], opt
        elif isinstance(default, list):
            assert said[opt] == "none" and default == []
        else:
            assert said[opt] == str(default), opt


def test_the_alerts_table_is_the_rules_file(tmp_path: Path) -> None:
    rows = table("| alert | fires when | from |")
    assert [r[0].strip("`") for r in rows] == list(region.ALERTS)
    rules = region.alerts_yml(region.load_plan(EXAMPLE_PLAN), region.Thresholds())
    exprs = dict(re.findall(r"- alert: (\w+)\n        expr: (.*)\n", rules))
    records = dict(re.findall(r"- record: ([\w:]+)\n        expr: (.*)\n", rules))
    for name, _when, source in rows:
        metric = re.findall(r"`([a-z_:]+)", source)[0]
        expr = exprs[name.strip("`")]
        used = expr + " ".join(v for k, v in records.items() if k in expr)
        assert metric in used, (name, metric, expr)
