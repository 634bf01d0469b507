"""`meetkit region prometheus`: the files pass `promtool check`, and the rule tests shipped in
deploy/region/meetkit-alerts.test.yml (written for region.example.toml and the default thresholds)
pass `promtool test rules`: each alert fires on its condition and not without it. A threshold
moved makes its alert's tests fail: they test the rules, not the file's shape."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meetkit_tools.cli import main

from .conftest import EXAMPLE_PLAN, RULE_TESTS

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    r.stdout += r.stderr  # promtool writes its failures to stderr
    return r


def generate(out: Path, *options: str, plan: Path = EXAMPLE_PLAN) -> Path:
    assert main(["region", "prometheus", "--plan", str(plan), "--out", str(out), *options]) == 0
    shutil.copy(RULE_TESTS, out / RULE_TESTS.name)
    return out


def test_promtool_checks_the_config_and_the_rules_and_the_rule_tests_pass(tmp_path: Path) -> None:
    out = generate(tmp_path, "--alertmanager", "127.0.0.1:9093")
    r = promtool("check", "config", "prometheus.yml", cwd=out)
    assert r.returncode == 0 and "SUCCESS: 1 rule files found" in r.stdout, r.stdout + r.stderr
    r = promtool("check", "rules", "meetkit-alerts.yml", cwd=out)
    assert r.returncode == 0 and "SUCCESS: 11 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", RULE_TESTS.name, cwd=out)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    conf = (out / "prometheus.yml").read_text()
    # every gateway of the plan, with its town and name
    assert ('      - targets: ["10.0.2.1:8080"]\n        labels: {town: "zeist", gateway: "zs-1"}\n') in conf
    assert conf.count("- targets: [") == 3 and '- "127.0.0.1:9093"' in conf


@pytest.mark.parametrize("options, alerts", [
    (["--silent-after", "20m"], {"MeetkitNodeSilent"}),
    (["--forward-behind", "30m"], {"MeetkitForwardingBehind"}),
    (["--backlog-records", "30"], {"MeetkitSpoolBacklogGrowing"}),
    (["--backlog-window", "10m"], {"MeetkitSpoolBacklogGrowing"}),
    (["--store-near", "0.95"], {"MeetkitStoreNearBound"}),
    (["--failover-after", "20m"], {"MeetkitFailoverInProgress"}),
    (["--for", "10m"], {"MeetkitGatewayDown", "MeetkitNodeSilent", "MeetkitSpoolBacklogGrowing",
                        "MeetkitForwardingBehind", "MeetkitStoreNearBound"}),
])
def test_a_moved_threshold_fails_its_alerts_tests(tmp_path: Path, options: list[str], alerts: set[str]) -> None:
    out = generate(tmp_path, *options)
    r = promtool("test", "rules", RULE_TESTS.name, cwd=out)
    assert r.returncode != 0
    failed = {line.split("alertname: ")[1].split(",")[0] for line in r.stdout.splitlines() if "alertname: " in line}
    assert failed == alerts, r.stdout


@pytest.mark.parametrize("bound", [pytest.param("store_max_bytes = 600000000", id="moved"),
                                   pytest.param("", id="left-out")])
def test_the_store_bound_comes_from_the_plan_where_it_gives_one(tmp_path: Path, bound: str) -> None:
    """zs-1's bound in the plan moved, or left out (then its gateway's own 2 GB, which the rule
    tests give it): its alert no longer fires where the tests say it does."""
    plan = tmp_path / "region.toml"
    plan.write_text(EXAMPLE_PLAN.read_text().replace("store_max_bytes = 500000000", bound))
    out = generate(tmp_path / "out", plan=plan)
    r = promtool("test", "rules", RULE_TESTS.name, cwd=out)
    assert r.returncode != 0 and "alertname: MeetkitStoreNearBound" in r.stdout
    got = r.stdout.split("got:")[1]
    assert 'gateway="ut-2"' in got and 'gateway="zs-1"' not in got, r.stdout  # ut-2's own bound still fires


def test_without_a_bound_in_the_plan_the_gateways_own_is_used(tmp_path: Path) -> None:
    """The rule tests' ut-2 has no store_max_bytes in the plan: its alert comes from the bound its
    gateway exports. Moved there (its meetkit_store_max_bytes 600 MB), its alert goes."""
    out = generate(tmp_path)
    tests = (out / RULE_TESTS.name).read_text()
    moved = tests.replace("""gateway="ut-2"}'\n        values: '500000000x30'""", """gateway="ut-2"}'\n        values: '600000000x30'""")
    assert moved != tests
    (out / RULE_TESTS.name).write_text(moved)
    r = promtool("test", "rules", RULE_TESTS.name, cwd=out)
    assert r.returncode != 0 and "alertname: MeetkitStoreNearBound" in r.stdout, r.stdout


def test_thresholds_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["region", "prometheus", "--plan", str(EXAMPLE_PLAN), "--out", str(tmp_path)]
    assert main([*args, "--store-near", "1.5"]) == 1
    assert "--store-near: 1.5 must be a fraction between 0 and 1" in capsys.readouterr().err
    assert main([*args, "--silent-after", "0"]) == 1
    assert "--silent-after: must be above 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--silent-after", "ten minutes"])
    assert "'ten minutes' is not a duration" in capsys.readouterr().err
    assert not (tmp_path / "prometheus.yml").exists()
