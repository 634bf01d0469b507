"""What the gateway answers to an ota/get (gateway/ota.py `Pieces`), request by request, on a clock
of the test's own: the piece asked (capped), nothing for a node not offered the release, for another
release, for a request that is not one, beyond a file, or faster than [ota] pieces_per_s; each
refusal counted by reason. (tests/gateway/test_rollouts.py does the same over MQTT.)"""

from __future__ import annotations

import hashlib
import json

from meetkit_gateway.ota import Pieces
from meetkit_gateway.releases import Release


def release(version: str, *files: bytes) -> Release:
    entries = [{"path": f"lib/f{i}.mpy", "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
               for i, b in enumerate(files)]
    manifest = {"v": 1, "version": version, "mpy": "6.3", "arch": "xtensawin", "micropython": "1.29.0",
                "boards": ["esp32-devkitc"], "files": entries, "bytes": sum(len(b) for b in files)}
    return Release(manifest, json.dumps(manifest).encode(), "test", tuple(files))


def req(release: str = "0.3.0", file: int = 0, off: int = 0, length: int = 2048) -> bytes:
    return json.dumps({"v": 1, "release": release, "file": file, "off": off, "len": length}).encode()


DATA = bytes(range(256)) * 40  # 10240 bytes
R = release("0.3.0", DATA, b"")


def test_the_piece_asked_capped_and_whole_files_rebuilt() -> None:
    p = Pieces(piece_max=4096, pieces_per_s=1000)
    p.serve({"n01": R})
    got, t = bytearray(), 0.0
    while len(got) < len(DATA):
        t += 1
        head, _, piece = (p.answer("n01", req(off=len(got), length=100_000), now=t) or b"").partition(b"\n")
        assert json.loads(head) == {"release": "0.3.0", "file": 0, "off": len(got)}
        assert 0 < len(piece) <= 4096
        got += piece
    assert bytes(got) == DATA
    assert p.answer("n01", req(file=1), now=t + 1) == b'{"release":"0.3.0","file":1,"off":0}\n'  # an empty file
    assert p.answer("n01", req(off=len(DATA)), now=t + 2).endswith(b"\n")  # at the end: nothing more
    assert p.status()["served"] == 5 and p.status()["bytes"] == len(DATA)


def test_nothing_for_what_was_not_offered_or_is_not_a_request() -> None:
    p = Pieces(piece_max=4096, pieces_per_s=1000)
    p.serve({"n01": R})
    for node, payload in (("n02", req()), ("n01", req(release="0.2.0")), ("n01", b"{not json"), ("n01", b"[]"),
                          ("n01", req(length=0)), ("n01", req(off=-1)), ("n01", b'{"v":1,"release":"0.3.0"}'),
                          ("n01", b" " * 300 + req()), ("n01", req(file=2)), ("n01", req(off=len(DATA) + 1))):
        assert p.answer(node, payload, now=1.0) is None, (node, payload)
    assert p.status()["refused"] == {"not_offered": 2, "bad_request": 6, "beyond_end": 2, "rate": 0}
    p.serve({})  # the rollout halted: nothing for anyone
    assert p.answer("n01", req(), now=2.0) is None
    assert p.status()["refused"]["not_offered"] == 3 and p.status()["served"] == 0


def test_a_node_asking_too_fast_gets_its_share_only() -> None:
    p = Pieces(piece_max=2048, pieces_per_s=10)
    p.serve({"n01": R, "n02": R})
    answered = sum(p.answer("n01", req(), now=100.0 + i / 1000) is not None for i in range(100))  # 100 in 0.1 s
    assert answered == 10  # a second's worth at once (0.99 more earned by the last: not a whole piece)
    assert p.status()["refused"]["rate"] == 100 - answered
    assert p.answer("n02", req(), now=100.1) is not None  # another node is not held back
    assert p.answer("n01", req(), now=101.2) is not None  # and a second later, n01 gets pieces again
