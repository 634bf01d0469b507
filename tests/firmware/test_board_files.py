"""The board files: every boards/*.json passes the JSON Schema (boards/board.schema.json) and the
firmware's own loader (config.load_board, run in real MicroPython) without a problem; broken ones
are refused by the loader with a message naming the key, whole (the node measures nothing) or
section by section (the rest keeps working)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

from meetkit_tools.dev.micropython import ROOT, run_mpy

BOARDS = ROOT / "boards"
SCHEMA = json.loads((BOARDS / "board.schema.json").read_text())
FILES = sorted(p for p in BOARDS.glob("*.json") if p.name != "board.schema.json")
SECTIONS = ("i2c", "climate", "pm", "mic")

# Loads each file of a folder with the firmware's loader: one MicroPython process for a table.
LOADER = r"""
import json, os, config
for name in sorted(os.listdir(".")):
    if not name.endswith(".json") or name == "chips.json":
        continue
    chip = CHIPS.get(name)
    problems = []
    board = config.load_board(name, problems, chip)
    print("RESULT " + json.dumps({"file": name, "board": board, "problems": problems}))
"""


def load_all(tmp: Path, files: dict[str, Any], chips: dict[str, str | None]) -> dict[str, dict]:
    for name, content in files.items():
        (tmp / name).write_text(content if isinstance(content, str) else json.dumps(content))
    res = run_mpy("CHIPS = %s\n" % json.dumps(chips).replace("null", "None") + LOADER, cwd=tmp)
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    results = [json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT ")]
    assert len(results) == len(files), out
    return {r["file"]: r for r in results}


def board(name: str) -> dict[str, Any]:
    return json.loads((BOARDS / f"{name}.json").read_text())


def test_every_board_file_passes_the_schema_and_the_firmwares_loader(tmp_path: Path) -> None:
    assert {p.stem for p in FILES} >= {"esp32-devkitc", "esp32-s3-devkitc-1", "olimex-esp32-poe",
                                       "esp32-devkitc-air", "esp32-devkitc-sds011"}
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for p in FILES:
        errors = [e.message for e in validator.iter_errors(json.loads(p.read_text()))]
        assert errors == [], f"{p.name}: {errors}"
    got = load_all(tmp_path, {p.name: p.read_text() for p in FILES},
                   {p.name: json.loads(p.read_text())["mcu"] for p in FILES})
    for p in FILES:
        src = json.loads(p.read_text())
        r = got[p.name]
        assert r["problems"] == [], p.name
        b = r["board"]
        assert b["usable"] and b["board"] == p.stem == src["board"] and b["mcu"] == src["mcu"]
        for key in SECTIONS:   # nothing the file describes is dropped
            assert (key in b) == (key in src), (p.name, key)
        led = src["led"]
        assert b["led"] == (None if led is None else {"pin": led["pin"], "type": led.get("type", "gpio")})
        assert b["net"]["type"] == src.get("net", {"type": "wifi"})["type"]


def test_the_three_boards_say_what_a_technician_needs() -> None:
    s3, poe = board("esp32-s3-devkitc-1"), board("olimex-esp32-poe")
    assert board("esp32-devkitc")["micropython"] == "ESP32_GENERIC"
    assert s3["micropython"] == "ESP32_GENERIC_S3" and "303a:1001" in s3["usb"]
    assert s3["led"] == {"pin": 38, "type": "ws2812"}           # v1.1 (v1.0: 48, see its notes)
    assert poe["micropython"] == "OLIMEX_ESP32_POE" and poe["usb"] == ["1a86:7523"]
    assert poe["net"] == {"type": "lan", "phy": "LAN8720", "mdc": 23, "mdio": 18, "power": 12, "phy_addr": 0,
                          "ref_clk": 17, "ref_clk_mode": "out"}
    assert poe["led"] is None   # the ESP32-POE has no user LED
    for name in ("esp32-devkitc", "esp32-s3-devkitc-1", "olimex-esp32-poe"):
        b = board(name)
        assert b["mic"]["type"] in ("ics43434", "inmp441") and b["mic"]["sens_dbfs"] == -26.0
        assert {"set", "reset"} <= set(b["pm"])


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def f(b: dict) -> None:
        *parents, last = path.split(".")
        d = b
        for k in parents:
            d = d[k]
        d[last] = value
    return f


# name, base board, change, chip it runs on, usable?, sections dropped, message, schema rejects it?
# (the loader passes i2c on with the climate sensor that uses it: one goes, both go)
BROKEN: list[tuple[str, str, Any, str | None, bool, set[str], str, bool]] = [
    ("unknown-mcu", "esp32-devkitc", _set("mcu", "esp8266"), "esp32", False, set(SECTIONS),
     "board.mcu: 'esp8266' is not one of esp32, esp32s3", True),
    ("other-chip", "esp32-s3-devkitc-1", None, "esp32", False, set(SECTIONS),
     "board.mcu: 'esp32s3', but this chip is an ESP32: this board file is for another board", False),
    ("other-chip-s3", "esp32-devkitc", None, "esp32s3", False, set(SECTIONS),
     "board.mcu: 'esp32', but this chip is an ESP32-S3", False),
    ("pin-out-of-range", "esp32-devkitc", _set("pm.tx", 40), "esp32", True, {"pm"},
     "board.pm.tx: 40 is not a GPIO of the ESP32", False),
    ("pin-that-does-not-exist", "esp32-devkitc", _set("mic.ws", 20), "esp32", True, {"mic"},
     "board.mic.ws: 20 is not a GPIO of the ESP32", False),
    ("s3-pin-that-does-not-exist", "esp32-s3-devkitc-1", _set("i2c.scl", 23), "esp32s3", True, {"i2c", "climate"},
     "board.i2c.scl: 23 is not a GPIO of the ESP32-S3", False),
    ("pin-beyond-any-chip", "esp32-s3-devkitc-1", _set("led.pin", 49), "esp32s3", True, set(),
     "board.led.pin: 49 is not a GPIO of the ESP32-S3", True),
    ("flash-pin", "esp32-devkitc", _set("mic.sck", 6), "esp32", True, {"mic"},
     "board.mic.sck: GPIO 6 belongs to the ESP32's flash", False),
    ("repl-pin", "esp32-devkitc", _set("pm.tx", 1), "esp32", True, {"pm"},
     "board.pm.tx: GPIO 1 is the ESP32's console (REPL)", False),
    ("s3-usb-pin", "esp32-s3-devkitc-1", _set("mic.sd", 20), "esp32s3", True, {"mic"},
     "board.mic.sd: GPIO 20 is the ESP32-S3's console (REPL)", False),
    ("input-only-uart-tx", "esp32-devkitc", _set("pm.tx", 34), "esp32", True, {"pm"},
     "board.pm.tx: GPIO 34 is input only (ESP32 GPIO 34-39): it cannot drive tx", False),
    ("input-only-set", "esp32-devkitc", _set("pm.set", 35), "esp32", True, {"pm"},
     "board.pm.set: GPIO 35 is input only", False),
    ("input-only-reset", "esp32-devkitc", _set("pm.reset", 39), "esp32", True, {"pm"},
     "board.pm.reset: GPIO 39 is input only", False),
    ("input-only-i2s-sck", "esp32-devkitc", _set("mic.sck", 36), "esp32", True, {"mic"},
     "board.mic.sck: GPIO 36 is input only", False),
    ("input-only-i2s-ws", "esp32-devkitc", _set("mic.ws", 37), "esp32", True, {"mic"},
     "board.mic.ws: GPIO 37 is input only", False),
    ("input-only-led", "esp32-devkitc", _set("led.pin", 38), "esp32", True, set(),
     "board.led.pin: GPIO 38 is input only", False),
    ("input-only-i2c", "esp32-devkitc", _set("i2c.sda", 34), "esp32", True, {"i2c", "climate"},
     "board.i2c.sda: GPIO 34 is input only", False),
    ("pin-used-twice", "esp32-devkitc", _set("mic.ws", 17), "esp32", True, {"mic"},
     "board.mic.ws: GPIO 17 is already board.pm.tx", False),
    ("pin-used-twice-in-a-section", "esp32-devkitc", _set("pm.set", 16), "esp32", True, {"pm"},
     "board.pm.set: GPIO 16 is already board.pm.rx", False),
    ("ethernet-rmii-pin-reused", "olimex-esp32-poe", _set("mic.sck", 25), "esp32", True, {"mic"},
     "board.mic.sck: GPIO 25 is already the Ethernet's RMII RXD0", False),
    ("ethernet-mdc-reused", "olimex-esp32-poe", _set("i2c.scl", 23), "esp32", True, {"i2c", "climate"},
     "board.i2c.scl: GPIO 23 is already board.net.mdc", False),
    ("ethernet-clock-reused", "olimex-esp32-poe", _set("pm.set", 17), "esp32", True, {"pm"},
     "board.pm.set: GPIO 17 is already board.net.ref_clk", False),
    ("ethernet-on-an-s3", "esp32-s3-devkitc-1", _set("net", board("olimex-esp32-poe")["net"]), "esp32s3", True,
     set(), "board.net.type: lan needs the ESP32's Ethernet MAC; the ESP32-S3 has none; no uplink", False),
    ("unknown-phy", "olimex-esp32-poe", _set("net.phy", "W5500"), "esp32", True, set(),
     "board.net.phy: 'W5500' is not one of LAN8710, LAN8720", True),
    ("unknown-climate-sensor", "esp32-devkitc", _set("climate.type", "sht31"), "esp32", True, {"i2c", "climate"},
     "board.climate.type: 'sht31' is not a supported sensor (bme280)", True),
    ("unknown-pm-sensor", "esp32-devkitc", _set("pm.type", "hm3301"), "esp32", True, {"pm"},
     "board.pm.type: 'hm3301' is not one of pms5003, pms7003, sds011", True),
    ("unknown-microphone", "esp32-devkitc", _set("mic.type", "sph0645"), "esp32", True, {"mic"},
     "board.mic.type: 'sph0645' is not one of ics43434, inmp441", True),
    ("bad-sensitivity", "esp32-devkitc", _set("mic.sens_dbfs", 12), "esp32", True, {"mic"},
     "board.mic.sens_dbfs: 12 is not a sensitivity in dBFS (-60 to 0)", True),
    ("sensitivity-as-text", "esp32-devkitc", _set("mic.sens_dbfs", "-26"), "esp32", True, {"mic"},
     "board.mic.sens_dbfs: '-26' is not a sensitivity in dBFS", True),
    ("repl-uart", "esp32-devkitc", _set("pm.uart", 0), "esp32", True, {"pm"},
     "board.pm.uart: 0 is not one of 1, 2", True),
    ("bme280-address", "esp32-devkitc", _set("climate.addr", 0x40), "esp32", True, {"i2c", "climate"},
     "board.climate.addr: 64 is not a BME280's address", True),
    ("not-json", "esp32-devkitc", '{"board": "esp32-devkitc", "mcu": "esp32",', "esp32", False, set(SECTIONS),
     "not-json.json: not valid JSON", True),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_board_files_are_rejected_by_the_schema_where_it_can(case: tuple) -> None:
    name, base, change, _, _, _, _, schema_rejects = case
    if isinstance(change, str):
        assert schema_rejects
        with pytest.raises(json.JSONDecodeError):
            json.loads(change)
        return
    b = copy.deepcopy(board(base))
    if change:
        change(b)
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(b))
    assert bool(errors) == schema_rejects, [e.message for e in errors]


def test_the_firmware_refuses_every_broken_board_file_naming_the_key(tmp_path: Path) -> None:
    files, chips = {}, {}
    for name, base, change, chip, *_ in BROKEN:
        if isinstance(change, str):
            files[name + ".json"] = change
        else:
            b = copy.deepcopy(board(base))
            if change:
                change(b)
            files[name + ".json"] = b
        chips[name + ".json"] = chip
    got = load_all(tmp_path, files, chips)
    for name, base, change, chip, usable, dropped, message, _ in BROKEN:
        r = got[name + ".json"]
        b = r["board"]
        assert any(message in p for p in r["problems"]), (name, r["problems"])
        assert b["usable"] is usable, name
        src = board(base)
        for key in SECTIONS:
            if key in src:
                assert (key in b) == (key not in dropped), (name, key, r["problems"])
        if usable:   # one problem (and its consequence for the climate), the rest is taken as it is
            own = [p for p in r["problems"] if p != "board.climate: needs an i2c section"]
            assert len(own) == 1, (name, r["problems"])
