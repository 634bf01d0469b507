"""`meetkit release keygen|build|verify`: a release built from firmware/ with the builder provision
uses, signed with Ed25519, checked as the gateway checks it (meetkit_gateway.releases.verify), and
every kind of tampering refused with its file named."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from meetkit_gateway import releases
from meetkit_gateway.releases import ReleaseError, load_public_key, verify
from meetkit_tools import appbuild, release as rel
from meetkit_tools.cli import main
from meetkit_tools.paths import BOARDS, FIRMWARE

PER_NODE = {"config.json", "board.json", "ca.der", "node.key", "app.json"}


def firmware_at(tmp: Path, version: str) -> Path:
    fw = tmp / f"firmware-{version}"
    shutil.copytree(FIRMWARE, fw)
    cfg = fw / "lib" / "config.py"
    cfg.write_text(cfg.read_text().replace(f'FW_VERSION = "{rel.fw_version()}"', f'FW_VERSION = "{version}"'))
    return fw


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("release")
    assert main(["release", "keygen", "--out", str(tmp / "keys")]) == 0
    key = tmp / "keys" / "release.key"
    assert main(["release", "build", "--key", str(key), "--out", str(tmp / "rel" / "0.2.0")]) == 0
    return {"tmp": tmp, "key": tmp / "keys" / "release.key", "pub": tmp / "keys" / "release.pub",
            "release": tmp / "rel" / "0.2.0"}


def test_keygen_writes_the_key_for_its_owner_only_and_never_replaces_it(made: dict[str, Path],
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert stat.S_IMODE(made["key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(made["pub"].stat().st_mode) == 0o644
    before = made["key"].read_bytes()
    assert main(["release", "keygen", "--out", str(made["key"].parent)]) == 1
    assert "release.key: exists; a release key is kept, not replaced" in capsys.readouterr().err
    assert made["key"].read_bytes() == before
    assert b"PRIVATE" not in made["pub"].read_bytes()


def test_the_release_is_the_app_compiled_for_xtensawin_without_any_nodes_own_files(made: dict[str, Path]) -> None:
    d = made["release"]
    m = json.loads((d / "manifest.json").read_bytes())
    assert m["v"] == 1 and m["version"] == rel.fw_version() == "0.2.0"
    mpy = appbuild.mpy_cross_version()
    assert m["mpy"] == f"{mpy[0]}.{mpy[1]}" and m["arch"] == "xtensawin"
    assert m["micropython"] == rel.micropython_version()
    assert m["boards"] == sorted(p.stem for p in BOARDS.glob("*.json") if not p.stem.endswith(".schema"))
    paths = [f["path"] for f in m["files"]]
    assert {"boot.py", "main.py", "appswap.py"} <= set(paths) and not PER_NODE & set(paths)
    libs = sorted(p.stem for p in (FIRMWARE / "lib").glob("*.py"))
    assert sorted(p.removeprefix("lib/").removesuffix(".mpy") for p in paths if p.startswith("lib/")) == libs
    native = []
    for f in m["files"]:
        blob = (d / "files" / f["path"]).read_bytes()
        assert len(blob) == f["size"] and releases.hashlib.sha256(blob).hexdigest() == f["sha256"]
        if f["path"].endswith(".mpy"):  # what the board loads: .mpy v6; native code (viper) for xtensawin v6.3
            assert blob[:2] == b"M" + bytes([mpy[0]])
            if blob[2]:
                assert appbuild.ARCHS[blob[2] >> 2] == "xtensawin" and blob[2] & 3 == mpy[1]
                native.append(f["path"])
    assert native  # the noise kernel is viper code
    assert m["bytes"] == sum(f["size"] for f in m["files"])
    on_disk = [p.relative_to(d / "files").as_posix() for p in (d / "files").rglob("*") if p.is_file()]
    assert sorted(on_disk) == sorted(paths)
    r = verify(d, [load_public_key(made["pub"])])
    assert r.version == "0.2.0" and r.signed_by.startswith("release.pub (")


def tampered(made: dict[str, Path], tmp: Path) -> Path:
    out = tmp / "copy"
    shutil.copytree(made["release"], out)
    return out


@pytest.mark.parametrize("change, named", [
    ("a file's byte", "files/lib/node.mpy: sha256 does not match the manifest"),
    ("a file cut short", "files/boot.py: 1 bytes, the manifest says"),
    ("a file missing", "files/main.py: missing"),
    ("the manifest", "release.sig: bad signature: it is not a signature of manifest.json by release.pub"),
    ("the signature", "release.sig: bad signature"),
    ("another key", "release.sig: bad signature"),
])
def test_tampering_is_refused_and_named(made: dict[str, Path], tmp_path: Path, change: str, named: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    d = tampered(made, tmp_path)
    key = made["pub"]
    if change == "a file's byte":
        p = d / "files/lib/node.mpy"
        blob = bytearray(p.read_bytes())
        blob[len(blob) // 2] ^= 0x01
        p.write_bytes(bytes(blob))
    elif change == "a file cut short":
        (d / "files/boot.py").write_bytes(b"#")
    elif change == "a file missing":
        (d / "files/main.py").unlink()
    elif change == "the manifest":  # a board added after signing
        m = json.loads((d / "manifest.json").read_bytes())
        m["boards"].append("evil-board")
        (d / "manifest.json").write_text(json.dumps(m, separators=(",", ":")))
    elif change == "the signature":
        sig = bytearray((d / "release.sig").read_bytes())
        sig[0] ^= 0x80
        (d / "release.sig").write_bytes(bytes(sig))
    else:
        rel.keygen(tmp_path / "other")
        key = tmp_path / "other" / "release.pub"
    with pytest.raises(ReleaseError, match=named.replace("(", r"\(")):
        verify(d, [load_public_key(key)])
    assert main(["release", "verify", str(d), "--pub", str(key)]) == 1
    assert named in capsys.readouterr().err


def test_versions_only_go_up(made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = made["release"].parent
    with pytest.raises(rel.ReleaseToolError, match="version 0.2.0 .* is not above the newest release beside it, 0.2.0"):
        rel.build(made["key"], parent / "again")
    with pytest.raises(rel.ReleaseToolError, match="is not above the newest release beside it, 0.2.0"):
        rel.build(made["key"], parent / "older", firmware=firmware_at(tmp_path, "0.1.9"))
    # numbers, not text: 0.10.0 is above 0.9.1
    rel.build(made["key"], tmp_path / "rel" / "0.9.1", firmware=firmware_at(tmp_path, "0.9.1"))
    m = rel.build(made["key"], tmp_path / "rel" / "0.10.0", firmware=firmware_at(tmp_path, "0.10.0"))
    assert m["version"] == "0.10.0"
    assert main(["release", "build", "--key", str(made["key"]), "--out", str(tmp_path / "rel" / "0.10.0")]) == 1
    assert "exists; a release is built into a new folder" in capsys.readouterr().err


def test_boards_can_be_chosen_and_must_exist(made: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    m = rel.build(made["key"], tmp_path / "a" / "0.2.0", boards=["esp32-s3-devkitc-1", "esp32-devkitc"])
    assert m["boards"] == ["esp32-s3-devkitc-1", "esp32-devkitc"]
    assert main(["release", "build", "--key", str(made["key"]), "--out", str(tmp_path / "b" / "0.2.0"),
                 "--board", "esp8266-nodemcu"]) == 1
    assert "--board esp8266-nodemcu: unknown board" in capsys.readouterr().err
    assert not (tmp_path / "b" / "0.2.0").exists() and not list((tmp_path / "b").glob(".*"))  # nothing half built


def test_a_manifest_that_would_reach_into_the_nodes_own_files_is_refused() -> None:
    base = {"v": 1, "version": "0.3.0", "mpy": "6.3", "arch": "xtensawin", "micropython": "1.29.0",
            "boards": ["esp32-devkitc"], "bytes": 1}
    for path in ("config.json", "node.key", "sp/0001", "../boot.py", "/boot.py", "lib/x.py.swp", "new/boot.py"):
        with pytest.raises(ReleaseError, match=r"files\[0\]\.path"):
            releases.check_manifest(base | {"files": [{"path": path, "size": 1, "sha256": "0" * 64}]})
    for field, value in (("version", "0.3.0-rc1"), ("bytes", 2), ("boards", []), ("v", 2)):
        with pytest.raises(ReleaseError, match=field):
            one = [{"path": "boot.py", "size": 1, "sha256": "0" * 64}]
            releases.check_manifest(base | {"files": one, field: value})
