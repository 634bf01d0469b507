"""The node's config and board file, loaded by the firmware under micropython: bad or missing
fields give a clear console message and a safe default, and never stop the node."""

from __future__ import annotations

import json
from pathlib import Path

from meetkit_tools.dev.micropython import run_mpy

BOARD = json.loads((Path(__file__).resolve().parents[2] / "boards" / "esp32-devkitc.json").read_text())

LOAD = r"""
import json, config
cfg, board, problems = config.load(chip_id="240ac4abcdef")
print("RESULT " + json.dumps({"cfg": cfg, "board": board, "problems": problems}))
"""


def load(tmp_path: Path, config: object | None, board: object | None = BOARD) -> tuple[dict, str]:
    for name, content in (("config.json", config), ("board.json", board)):
        p = tmp_path / name
        p.unlink(missing_ok=True)
        if content is not None:
            p.write_text(content if isinstance(content, str) else json.dumps(content))
    res = run_mpy(LOAD, cwd=tmp_path)
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    lines = out.splitlines()
    result = json.loads([l for l in lines if l.startswith("RESULT ")][0][7:])
    console = "\n".join(l for l in lines if not l.startswith("RESULT "))
    return result, console


GOOD = {"node_id": "ams-001", "wifi": {"ssid": "lab", "password": "s3cret-pw"},
        "broker": {"host": "10.0.0.2", "port": 1884}, "interval_s": 30}


def test_good_config_is_taken_as_is(tmp_path: Path) -> None:
    r, out = load(tmp_path, GOOD)
    cfg = r["cfg"]
    assert r["problems"] == []
    assert cfg["node_id"] == "ams-001" and cfg["interval_s"] == 30
    assert cfg["broker"]["host"] == "10.0.0.2" and cfg["broker"]["port"] == 1884
    assert set(r["board"]) >= {"pm", "climate", "mic", "i2c"}


def test_missing_config_keeps_measuring_without_uplink(tmp_path: Path) -> None:
    r, out = load(tmp_path, None)
    cfg = r["cfg"]
    assert cfg["node_id"] == "esp32-240ac4abcdef"
    assert cfg["wifi"] is None and cfg["broker"] is None
    assert "config.json: missing" in out
    assert "measuring without an uplink" in out
    assert "pm" in r["board"]  # the sensors still run


def test_bad_values_are_named_and_replaced_by_defaults(tmp_path: Path) -> None:
    bad = dict(GOOD, node_id="Bad Id!", interval_s=5, noise_offset_db="loud")
    bad["broker"] = {"host": "10.0.0.2", "port": 70000}
    r, out = load(tmp_path, bad)
    cfg = r["cfg"]
    assert cfg["node_id"] == "esp32-240ac4abcdef" and "node_id: 'Bad Id!'" in out
    assert cfg["interval_s"] == 60 and "config.interval_s: 5 is not a whole number from 10 to 3600" in out
    assert cfg["noise_offset_db"] == 0.0 and "noise_offset_db" in out
    assert cfg["broker"]["port"] == 1883 and "config.broker.port: 70000" in out


def test_secrets_never_reach_the_console(tmp_path: Path) -> None:
    bad = dict(GOOD, interval_s="x")
    _, out = load(tmp_path, bad)
    assert "interval_s" in out
    assert "s3cret-pw" not in out


def test_not_json_is_reported(tmp_path: Path) -> None:
    r, out = load(tmp_path, "{node_id: ")
    assert "config.json: not valid JSON" in out
    assert r["cfg"]["wifi"] is None


def test_unusable_board_sections_are_dropped_with_a_message(tmp_path: Path) -> None:
    board = json.loads(json.dumps(BOARD))
    board["pm"]["type"] = "hm3301"
    board["mic"]["sens_dbfs"] = 12
    del board["i2c"]
    r, out = load(tmp_path, GOOD, board)
    assert "board.pm.type: 'hm3301' is not one of pms5003, pms7003, sds011" in out
    assert "board.mic.sens_dbfs: 12" in out
    assert "board.climate: needs an i2c section" in out
    assert not {"pm", "mic", "climate"} & set(r["board"])


def test_missing_board_file(tmp_path: Path) -> None:
    r, out = load(tmp_path, GOOD, None)
    assert "board.json: missing" in out
    assert r["board"]["board"] == "unknown"


def test_failover_settings_and_a_broker_list(tmp_path: Path) -> None:
    """failover_after_s and failback_every_s: defaults, their ranges, each broker its own fields,
    at most 16 brokers (the status's `via` is 0 to 15)."""
    r, _ = load(tmp_path, GOOD)
    assert r["cfg"]["failover_after_s"] == 120 and r["cfg"]["failback_every_s"] == 600
    brokers = [{"host": "gw-1", "tls": True, "user": "ams-001", "password": "pw"},
               {"host": "gw-2", "port": 1884, "user": "ams-001", "password": "pw", "ca": "region.der", "tls": True}]
    r, _ = load(tmp_path, dict(GOOD, broker=brokers, failover_after_s=30, failback_every_s=86400))
    cfg = r["cfg"]
    assert r["problems"] == []
    assert (cfg["failover_after_s"], cfg["failback_every_s"]) == (30, 86400)
    assert [(b["host"], b["port"], b["ca"]) for b in cfg["brokers"]] == [("gw-1", 8883, "ca.der"),
                                                                         ("gw-2", 1884, "region.der")]
    r, _ = load(tmp_path, dict(GOOD, failover_after_s=29, failback_every_s=59))
    assert r["problems"] == ["config.failover_after_s: 29 is not a whole number from 30 to 3600",
                             "config.failback_every_s: 59 is not a whole number from 60 to 86400"]
    assert r["cfg"]["failover_after_s"] == 120 and r["cfg"]["failback_every_s"] == 600
    r, _ = load(tmp_path, dict(GOOD, broker=[{"host": f"gw-{i}"} for i in range(17)]))
    assert r["problems"] == ["config.broker: more than 16 usable entries; using the first 16"]
    assert [b["host"] for b in r["cfg"]["brokers"]] == [f"gw-{i}" for i in range(16)]
