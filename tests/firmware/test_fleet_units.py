"""The node's side of running the fleet, module by module under the real MicroPython (docs/payload.md,
"Running the fleet"): the signed envelope (firmware/lib/mgmt.py) against Python's own hmac, a remote
configuration checked key by key (cfgapply.py with config.py's rules) and written whole on a
littlefs image with the power cut at every flash program, and a release offer's checks
(otaoffer.py). The host the modules work with (node.py's Node) is a small stand-in here whose
uplink keeps the events instead of publishing them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from meetkit_tools.dev import fleetsim
from meetkit_tools.dev.micropython import FIRMWARE_LIB, SIM_MPY, run_mpy
from meetkit_tools.sim.runner import micropython_bin

KEY = bytes(range(32))
NODE = "ams-001"

HOST = """
import sys, os, json
import simcore, simflash
img, blocks = sys.argv[1], int(sys.argv[2])
if sys.argv[3] == "1":
    simflash.create(img, blocks)
dev = simflash.Flash(img, blocks)
if sys.argv[3] == "1":
    os.VfsLfs2.mkfs(dev)
os.mount(os.VfsLfs2(dev), "/flash")
os.chdir("/flash")
import console


class Up:
    lan = False
    client = None
    base = "meetkit/ams-001/"
    connects = 1

    def __init__(self, fw, cfg_v):
        self.events = []
        self.meta = {"fw": fw, "boot": 1, "mode": "normal", "cfg": cfg_v}

    def _status(self, up_s):
        pass


class Host:
    def __init__(self, cfg, fw="0.2.0", mode="normal", board="esp32-devkitc"):
        self.cfg = cfg
        self.board = board
        self.mode = mode
        self.up_s = 5
        self.inbox = []
        self.restart_why = self.ota = self.after = None
        self.uplink = Up(fw, cfg.get("config_version", 0))


def out(**kw):
    print("R " + json.dumps(kw))
"""


def write_image(tmp: Path, files: dict[str, bytes], blocks: int = 64) -> Path:
    """A littlefs image holding `files` (made by MicroPython through simflash)."""
    tmp.mkdir(parents=True, exist_ok=True)
    img = tmp / "flash.img"
    prog = HOST + textwrap.dedent("""
        files = json.loads(sys.stdin.read())
        for name, text in files.items():
            with open(name, "w") as f:
                f.write(text)
        out(ok=1)
        """)
    res = run_fw(prog, img, blocks, fresh=True, stdin=json.dumps({k: v.decode() for k, v in files.items()}))
    assert res["ok"] == 1
    return img


def run_fw(prog: str, img: Path, blocks: int = 64, fresh: bool = False, stdin: str = "",
           cut_at: int = 0) -> dict[str, Any]:
    """`prog` (after HOST's setup) on the image; its `R {...}` line, or {"cut": True} when the power
    went at flash program `cut_at` (counted in this run, from 1)."""
    if cut_at:
        prog = prog.replace("import console\n", "import console\ndev.cut_at = dev.writes + %d\n" % cut_at, 1)
    p = tmp_prog(img.parent, prog)
    env = dict(os.environ, MICROPYPATH=":".join([str(SIM_MPY), str(FIRMWARE_LIB), ".frozen"]))
    res = subprocess.run([micropython_bin(), "-X", "heapsize=512K", str(p), str(img), str(blocks),
                          "1" if fresh else "0"], input=stdin.encode(), capture_output=True, env=env, timeout=120)
    text = res.stdout.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("R "):
            return dict(json.loads(line[2:]), console=text)
    if cut_at and res.returncode != 0:
        return {"cut": True, "console": text + res.stderr.decode(errors="replace")}
    raise AssertionError(f"no result (exit {res.returncode}):\n{text}\n{res.stderr.decode(errors='replace')}")


def tmp_prog(d: Path, prog: str) -> Path:
    p = d / "prog.py"
    p.write_text(prog)
    return p


# -- the signed envelope ----------------------------------------------------------------------------
def test_the_nodes_hmac_is_rfc2104_hmac_sha256(tmp_path: Path) -> None:
    """Keys of 16, 32, 64 and 100 bytes (longer than a block: hashed first), messages of 0 to 3000
    bytes, text and bytes: the firmware's HMAC equals Python's hmac module."""
    cases = []
    for klen in (16, 32, 64, 100):
        for mlen in (0, 1, 63, 64, 65, 3000):
            key = hashlib.sha256(b"k%d" % klen).digest() * 4
            cases.append([key[:klen].hex(), ("é" * mlen)[:mlen]])
    res = run_mpy(textwrap.dedent("""
        import sys, json, binascii, mgmt
        out = []
        for k, m in json.loads(sys.stdin.read()):
            out.append(binascii.hexlify(mgmt.hmac_sha256(binascii.unhexlify(k), m)).decode())
        print(json.dumps(out))
        """), path=[FIRMWARE_LIB], stdin=json.dumps(cases))
    assert res.returncode == 0, res.stderr.decode()
    got = json.loads(res.stdout)
    want = [hmac.new(bytes.fromhex(k), m.encode(), hashlib.sha256).hexdigest() for k, m in cases]
    assert got == want


VERIFY = """
import io, mgmt
for msg in json.loads(sys.stdin.read()):
    body, why = mgmt.verify(io.BytesIO(msg.encode()), "ams-001")
    print("V " + json.dumps([body, why]))
out(ok=1)
"""


def verify(tmp: Path, msgs: list[bytes], key: bytes | None = KEY) -> list[list[Any]]:
    files = {"node.key": key.hex().encode()} if key is not None else {}
    img = write_image(tmp, files or {"x": b""})
    # as UTF-8: MicroPython's json joins no escaped surrogate pair
    r = run_fw(HOST + VERIFY, img, stdin=json.dumps([m.decode() for m in msgs], ensure_ascii=False))
    return [json.loads(line[2:]) for line in r["console"].splitlines() if line.startswith("V ")]


def test_a_message_is_taken_only_with_this_nodes_key_and_name(tmp_path: Path) -> None:
    good = fleetsim.envelope(KEY, {"node": NODE, "cmd": "selftest", "id": 3})
    env = json.loads(good)
    tampered_body = json.dumps(dict(env, body=env["body"].replace('"id":3', '"id":4'))).encode()
    tampered_mac = json.dumps(dict(env, mac="0" * 64)).encode()
    other_key = fleetsim.envelope(bytes(32), {"node": NODE, "cmd": "selftest"})
    other_node = fleetsim.envelope(KEY, {"node": "ams-002", "cmd": "selftest"})
    got = verify(tmp_path, [good, tampered_body, tampered_mac, other_key, other_node, b"{not json",
                            b'{"v":1,"body":{"node":"ams-001"},"mac":"00"}'])
    assert got[0] == [{"node": NODE, "cmd": "selftest", "id": 3}, None]
    assert [why for _, why in got[1:]] == ["bad mac", "bad mac", "bad mac", "another node's",
                                           "not a signed message", "not a signed message"]
    assert all(body is None for body, _ in got[1:])


def test_the_envelope_is_read_as_json_whatever_its_form(tmp_path: Path) -> None:
    """The node reads the envelope as a stream (an offer's 4 KB body is never whole in its heap):
    keys in any order, white space, an extra key, escapes of every kind and characters beyond
    ASCII, written either way (\\u escapes, or UTF-8), give the body the gateway signed. A
    character beyond the BMP is a surrogate pair in the envelope's escapes (the node joins them);
    inside the body text it must be UTF-8: MicroPython's json does not join an escaped pair."""
    body = {"node": NODE, "cmd": "selftest", "id": 7, "note": "caf\u00e9 \u20ac \"q\" \\ / \n\t\u0001"}
    wide = dict(body, note="\U0001F600")
    msgs = []
    for inner_ascii, b in ((True, body), (False, body), (False, wide)):
        text = json.dumps(b, ensure_ascii=inner_ascii)
        mac = hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()
        for outer_ascii in (True, False):
            msgs.append(json.dumps({"mac": mac, "x-extra": [1, 2], "body": text, "v": 1},
                                   ensure_ascii=outer_ascii, indent=2).encode())
            msgs.append(json.dumps({"v": 1, "body": text, "mac": mac}, ensure_ascii=outer_ascii,
                                   separators=(",", ":")).encode())
    got = verify(tmp_path, msgs)
    assert got == [[body, None]] * 8 + [[wide, None]] * 4


def test_without_a_node_key_nothing_is_taken(tmp_path: Path) -> None:
    got = verify(tmp_path, [fleetsim.envelope(KEY, {"node": NODE, "cmd": "selftest"})], key=None)
    assert got[0][0] is None and got[0][1].startswith("no node key on the flash (node.key)")


# -- remote configuration ------------------------------------------------------------------------
OLD = {"node_id": NODE, "interval_s": 60, "noise_offset_db": 1.5,
       "wifi": {"ssid": "lab", "password": "wifi-s3cret"},
       "broker": {"host": "10.0.0.2", "user": NODE, "password": "broker-s3cret"}}

APPLY = """
import cfgapply, config
cfg, _, _ = config.load(chip_id="240ac4abcdef", chip=None)
host = Host(cfg)
cfgapply.apply(host, json.loads(sys.stdin.read()))
out(events=host.uplink.events, restart=host.restart_why, cfg=host.cfg["config_version"],
    meta=host.uplink.meta["cfg"], cut=not dev.live)
"""


def apply(tmp: Path, body: dict[str, Any], old: dict[str, Any] = OLD) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node runs `old`; the gateway's configuration `body` arrives: (result, config.json after)."""
    img = write_image(tmp, {"config.json": json.dumps(old).encode(), "board.json": b"{}"})
    r = run_fw(HOST + APPLY, img, stdin=json.dumps(body))
    after = run_fw(HOST + 'out(text=open("config.json").read())\n', img)
    r["events"] = [json.loads(e) for e in r["events"]]
    return r, json.loads(after["text"])


def test_configuration_is_merged_checked_per_key_and_written_whole(tmp_path: Path) -> None:
    body = {"node": NODE, "version": 7, "config": {
        "interval_s": 30,
        "noise_offset_db": 45,                                      # outside the rule
        "wifi": [{"ssid": "lab", "password": "wifi-s3cret"}, {"ssid": "lab-2", "password": "two-s3cret"}],
        "broker": {"host": "10.0.0.3", "tls": "yes", "user": NODE, "password": "new-broker-s3cret"},
        "node_id": "ams-999",
        "colour": "blue",
        "spool_kb": 900}}
    r, cfg = apply(tmp_path, body)
    (ev,) = r["events"]
    assert ev["kind"] == "config" and ev["version"] == 7 and ev["node"] == NODE
    assert sorted(ev["applied"]) == ["interval_s", "spool_kb", "wifi"]
    assert ev["refused"] == {
        "noise_offset_db": "45 is not a number from -20 to 20",
        "broker": "broker.tls: 'yes' is not true or false",
        "node_id": "cannot be changed over the air",
        "colour": "not a setting of this firmware (0.2.0)"}
    # config.json: the accepted keys new, the refused ones as they were, the version it runs
    assert cfg == dict(OLD, interval_s=30, spool_kb=900, wifi=body["config"]["wifi"], config_version=7)
    assert r["cfg"] == 7 and r["meta"] == 7
    assert r["restart"].startswith("configuration 7 (")   # once the interval being measured is spooled
    assert sorted(r["restart"][17:-1].split(", ")) == ["interval_s", "spool_kb", "wifi"]
    # never a secret in what the node says
    text = r["console"] + json.dumps(r["events"])
    for secret in ("wifi-s3cret", "two-s3cret", "broker-s3cret", "new-broker-s3cret"):
        assert secret not in text


def test_an_older_or_the_same_version_changes_nothing(tmp_path: Path) -> None:
    old = dict(OLD, config_version=7)
    r, cfg = apply(tmp_path, {"node": NODE, "version": 7, "config": {"interval_s": 30}}, old)
    assert r["events"] == [] and r["restart"] is None and cfg == old   # the retained one, at every connect
    r, cfg = apply(tmp_path / "b", {"node": NODE, "version": 5, "config": {"interval_s": 30}}, old)
    assert r["events"][0]["state"] == "refused"
    assert r["events"][0]["reason"] == "version 5 is not above the 7 it runs"
    assert cfg == old and r["restart"] is None


def test_a_new_version_with_the_same_values_is_taken_without_a_restart(tmp_path: Path) -> None:
    r, cfg = apply(tmp_path, {"node": NODE, "version": 2, "config": {"interval_s": 60}})
    assert r["events"][0]["applied"] == ["interval_s"] and r["events"][0]["refused"] == {}
    assert cfg["config_version"] == 2 and r["cfg"] == 2 and r["restart"] is None


def test_a_bad_entry_in_a_list_of_networks_refuses_the_list(tmp_path: Path) -> None:
    body = {"node": NODE, "version": 3, "config": {
        "wifi": [{"ssid": "lab", "password": "wifi-s3cret"}, {"password": "orphan-s3cret"}],
        "broker": [{"host": "10.0.0.2", "user": NODE, "password": "broker-s3cret"}, {"host": "10.0.0.9", "port": 0}]}}
    r, cfg = apply(tmp_path, body)
    assert r["events"][0]["refused"] == {"wifi": "wifi[1].ssid: missing",
                                         "broker": "broker[1].port: 0 is not a whole number from 1 to 65535"}
    assert cfg["wifi"] == OLD["wifi"] and cfg["broker"] == OLD["broker"]
    assert "orphan-s3cret" not in r["console"] + json.dumps(r["events"])


def test_the_failover_settings_and_a_broker_list_over_the_air(tmp_path: Path) -> None:
    """failover_after_s and failback_every_s are taken by their rules, and a broker list with
    them (home first, a neighbour's next)."""
    brokers = [{"host": "10.0.1.1", "tls": True, "user": NODE, "password": "broker-s3cret"},
               {"host": "10.0.1.2", "tls": True, "user": NODE, "password": "broker-s3cret"}]
    body = {"node": NODE, "version": 4, "config": {"failover_after_s": 60, "failback_every_s": 10, "broker": brokers}}
    r, cfg = apply(tmp_path, body)
    (ev,) = r["events"]
    assert sorted(ev["applied"]) == ["broker", "failover_after_s"]
    assert ev["refused"] == {"failback_every_s": "10 is not a whole number from 60 to 86400"}
    assert cfg["failover_after_s"] == 60 and "failback_every_s" not in cfg and cfg["broker"] == brokers
    assert ev["trial_s"] == 300   # a new broker list changes the link: on trial


def test_a_power_cut_while_config_json_is_written_leaves_the_old_or_the_new_whole(tmp_path: Path) -> None:
    """The power goes at every flash program the configuration's write makes, one run each: at the
    next start config.json is the old one or the new one, whole, and the node's rules take it."""
    body = {"node": NODE, "version": 4, "config": {"interval_s": 20, "noise_offset_db": -3.0,
                                                  "wifi": [{"ssid": "lab", "password": "wifi-s3cret"}]}}
    seen = set()
    cut = 1
    while True:
        img = tmp_path / f"cut{cut}.img"
        write_image(tmp_path / f"w{cut}", {"config.json": json.dumps(OLD).encode(), "board.json": b"{}"})
        (tmp_path / f"w{cut}" / "flash.img").rename(img)
        r = run_fw(HOST + APPLY, img, stdin=json.dumps(body), cut_at=cut)
        after = run_fw(HOST + textwrap.dedent("""
            import config
            p = []
            cfg = config.check_node(json.load(open("config.json")), p, "0")
            out(version=cfg["config_version"], interval=cfg["interval_s"], problems=p)
            """), img)
        assert after["problems"] == [], after
        assert (after["version"], after["interval"]) in ((0, 60), (4, 20)), after
        seen.add(after["version"])
        if not r.get("cut"):
            break   # the write finished before this program: every program was tried
        cut += 1
    assert seen == {0, 4} and cut > 3


def test_a_power_cut_at_any_flash_program_of_an_apply_on_trial_leaves_the_old_or_the_new_on_trial(
        tmp_path: Path) -> None:
    """A broker changed: the configuration goes on trial (config.json.old, config.trial, then the
    switch; lib/cfgtrial.py). The power goes at every flash program of that apply, one run each; the
    next start (cfgtrial.boot(), as node.py calls it) ends on the old configuration with nothing of a
    trial left, or on the new one on trial with the old one kept byte for byte."""
    body = {"node": NODE, "version": 4, "config": {"broker": {"host": "10.0.0.9", "user": NODE,
                                                              "password": "broker-s3cret"}}}
    old_text = json.dumps(OLD).encode()
    seen = set()
    cut = 1
    while True:
        img = tmp_path / f"cut{cut}.img"
        write_image(tmp_path / f"w{cut}", {"config.json": old_text, "board.json": b"{}"})
        (tmp_path / f"w{cut}" / "flash.img").rename(img)
        r = run_fw(HOST + APPLY, img, stdin=json.dumps(body), cut_at=cut)
        after = run_fw(HOST + textwrap.dedent("""
            import os, cfgtrial
            cfgtrial.boot()
            root = os.listdir()
            out(cfg=json.load(open("config.json")),
                old=open("config.json.old").read() if "config.json.old" in root else None,
                trial=json.load(open("config.trial")) if "config.trial" in root else None)
            """), img)
        if after["cfg"] == OLD:
            assert after["old"] is None and after["trial"] is None, after
            seen.add(0)
        else:
            assert after["cfg"] == dict(OLD, broker=body["config"]["broker"], config_version=4), after
            assert after["old"] == old_text.decode(), after
            assert {k: after["trial"][k] for k in ("version", "back_to", "boots", "bound")} == {
                "version": 4, "back_to": 0, "boots": 1, "bound": 300}, after
            seen.add(4)
        if not r.get("cut"):
            assert r["restart"] == "configuration 4 (broker)" and json.loads(r["events"][0])["trial_s"] == 300
            break   # the apply finished before this program: every program was tried
        cut += 1
    assert seen == {0, 4} and cut > 6


# -- release offers ---------------------------------------------------------------------------------
OFFER = """
import otaoffer, ota, mgmt
for case in json.loads(sys.stdin.read()):
    host = Host({"node_id": "ams-001", "spool_kb": 1700, "config_version": 0, "trial_s": 900},
                fw=case.get("fw", "0.2.0"), mode=case.get("mode", "normal"))
    rel = case["rel"]
    try:
        files = otaoffer._files(rel)
        why = otaoffer._why_not(host, rel, files, case.get("force", False))
    except ValueError as e:
        why = "manifest: %s" % e
    print("O " + json.dumps(why))
out(mpy=sys.implementation._mpy)
"""


def offers(tmp: Path, cases: list[dict[str, Any]], blocks: int = 512) -> list[str | None]:
    img = write_image(tmp, {"x": b""}, blocks)
    r = run_fw(HOST + OFFER, img, blocks, stdin=json.dumps(cases))
    return [json.loads(line[2:]) for line in r["console"].splitlines() if line.startswith("O ")]


def manifest(**kw: Any) -> dict[str, Any]:
    m = {"v": 1, "version": "0.3.0", "mpy": "6.3", "arch": "x64", "boards": ["esp32-devkitc"],
         "files": [{"path": "lib/node.mpy", "size": 9000, "sha256": "ab" * 32},
                   {"path": "boot.py", "size": 1000, "sha256": "cd" * 32}], "bytes": 10000}
    m.update(kw)
    return m


def test_an_offer_is_refused_for_what_does_not_fit_this_node_and_says_why(tmp_path: Path) -> None:
    big = [{"path": f"lib/m{i}.mpy", "size": 100_000, "sha256": "ab" * 32} for i in range(30)]
    got = offers(tmp_path, [
        {"rel": manifest()},
        {"rel": manifest(version="0.2.0")},
        {"rel": manifest(version="0.1.9"), "force": True},
        {"rel": manifest(version="0.10.0"), "fw": "0.9.1"},
        {"rel": manifest(version="0.9.1"), "fw": "0.10.0"},
        {"rel": manifest(boards=["esp32-s3-devkitc-1"])},
        {"rel": manifest(arch="xtensawin")},
        {"rel": manifest(mpy="6.2")},
        {"rel": manifest(arch=None, files=[{"path": "lib/node.py", "size": 9000, "sha256": "ab" * 32}])},
        {"rel": manifest(files=big)},
        {"rel": manifest(), "mode": "trial"},
        {"rel": manifest(files=[{"path": "config.json", "size": 10, "sha256": "ab" * 32}])},
        {"rel": manifest(files=[{"path": "../x.py", "size": 10, "sha256": "ab" * 32}])},
        # fits the flash once (1.9 MB of 2040 KB free), not with the install's copy of it
        {"rel": manifest(files=[{"path": "lib/huge.mpy", "size": 1_900_000, "sha256": "ab" * 32}])},
    ])
    assert got[0] is None
    assert got[1] == "0.2.0 is not newer than the 0.2.0 it runs (and not forced)"
    assert got[2] is None                                       # a downgrade the operator forced
    assert got[3] is None                                       # 0.10.0 comes after 0.9.1
    assert got[4] == "0.9.1 is not newer than the 0.10.0 it runs (and not forced)"
    assert got[5] == "made for boards esp32-s3-devkitc-1, not esp32-devkitc"
    assert got[6] == "built for .mpy 6.3 xtensawin; this MicroPython loads .mpy 6.3 x64"
    assert got[7] == "built for .mpy 6.2 x64; this MicroPython loads .mpy 6.3 x64"
    assert got[8] is None                                       # sources: any MicroPython
    assert got[9] == ("needs 3212 KB of flash free (the release, a copy of its largest file, 96 KB to spare); "
                      "2040 KB free")
    assert got[10] == "on trial with 0.2.0: one update at a time"
    assert got[11] == "manifest: file 'config.json'"
    assert got[12] == "manifest: file '../x.py'"
    assert got[13] == ("needs 3824 KB of flash free (the release, a copy of its largest file, 96 KB to spare); "
                       "2040 KB free")


SELFTEST = """
import mgmt
console.check("pm", True, "pms5003: PM2.5 12 ug/m3")
console.check("mic", False, None)   # a check with nothing to add
host = Host({"node_id": "ams-001", "config_version": 0})
for msg in json.loads(sys.stdin.read()):
    mgmt._handle(host, b"cmd", msg.encode())
out(events=host.uplink.events)
"""


def test_the_self_test_answer_is_an_event_the_gateway_takes(tmp_path: Path) -> None:
    """The answers to commands, as the node sends them, through the gateway's own parser: a check
    without a detail is an empty string, a command without a usable id is answered without one
    (the contract's detail is a string and its id an integer: null was rejected)."""
    from meetkit_gateway.payload import parse_event

    img = write_image(tmp_path, {"node.key": KEY.hex().encode()})
    cmds = [{"node": NODE, "cmd": "selftest", "id": 4}, {"node": NODE, "cmd": "selftest"},
            {"node": NODE, "cmd": "reboot", "id": 5}, {"node": NODE, "cmd": "reboot", "id": "x"}]
    r = run_fw(HOST + SELFTEST, img, stdin=json.dumps([fleetsim.envelope(KEY, c).decode() for c in cmds]))
    evs = [parse_event(raw.encode(), NODE) for raw in r["events"]]   # Rejected: the gateway refuses it
    assert [(e.kind, e.state, e.body.get("id")) for e in evs] == [
        ("selftest", None, 4), ("cmd", "refused", None), ("cmd", "refused", 5), ("cmd", "refused", None)]
    assert evs[1].body["reason"] == "selftest without an id"
    assert evs[0].body["checks"] == {"pm": ["pass", "pms5003: PM2.5 12 ug/m3"], "mic": ["fail", ""]}
    assert evs[2].body["reason"] == "unknown command 'reboot'"
