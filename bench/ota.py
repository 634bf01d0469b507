"""Releases served beside ingest (issue 15): the pieces a rollout's nodes fetch must not slow ingest.

ingest_ratio_with_16_ota_downloads: the gateway's ingest rate (bench/gateway.py's machinery: NODES
nodes' backlogs published at once by `mosquitto_pub`, the clock from the first publish to the last
acknowledgement, every record checked in the store) while DOWNLOADERS nodes of a running rollout
fetch a release (`meetkit release build` of firmware/) piece by piece as fast as the gateway lets
them, over the same rate without them. A downloader is offered the release (every one a canary of
one rollout) and asks ota/get for one piece of 2048 bytes at a time, the next as soon as the last
came, file after file and again from the start: no pacing at all (a node paces itself; this is the
worst a rollout can do), so what bounds it is the gateway's [ota] pieces_per_s (20 a node by
default: more are refused, which is load too). The two kinds of run alternate (which goes first
alternating too), each on a fresh broker and gateway; medians of RUNS each. Higher is better: 1.0
is no cost at all.
"""

from __future__ import annotations

import json
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.gateway import IngestRun, gateway_run
from bench.results import median, record
from meetkit_tools import release as rel
from meetkit_tools.dev import batches
from meetkit_tools.services import GatewayProcess

NODES = 20
RECORDS_PER_NODE = 2000  # 40 000 records, 480 000 readings: a few seconds of ingest
RUNS = 5
DOWNLOADERS = 16
PIECE = 2048
CLI = str(Path(sys.executable).parent / "meetkit-gateway")


class Downloader(threading.Thread):
    """A node of the rollout fetching the release's files over and over, one piece at a time."""

    def __init__(self, host: str, port: int, node: str, manifest: dict, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.node, self.manifest, self.stop = node, manifest, stop
        self.chunks: queue.Queue[bytes] = queue.Queue()
        self.pieces = self.bytes = self.unanswered = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{node}")
        self.c.on_message = lambda c, u, m: self.chunks.put(bytes(m.payload))
        self.c.connect(host, port, keepalive=30)
        self.c.subscribe(f"meetkit/{node}/ota/chunk", qos=0)
        self.c.loop_start()

    def run(self) -> None:
        files = self.manifest["files"]
        while not self.stop.is_set():
            for i, f in enumerate(files):
                off = 0
                while off < f["size"] and not self.stop.is_set():
                    req = {"v": 1, "release": self.manifest["version"], "file": i, "off": off, "len": PIECE}
                    self.c.publish(f"meetkit/{self.node}/ota/get", json.dumps(req), qos=0)
                    try:
                        piece = self.chunks.get(timeout=0.5).partition(b"\n")[2]
                    except queue.Empty:
                        self.unanswered += 1  # refused (over the rate) or not yet offered: ask again
                        continue
                    off += len(piece)
                    self.pieces += 1
                    self.bytes += len(piece)
        self.c.disconnect()
        self.c.loop_stop()


class Downloads:
    def __init__(self, release: Path, keys: Path) -> None:
        self.release, self.keys = release, keys
        self.manifest = json.loads((release / "manifest.json").read_bytes())
        self.pieces = self.bytes = self.unanswered = 0
        self.seconds = 0.0

    def toml(self, work: Path) -> str:
        nodes = [f"d{i:02d}" for i in range(DOWNLOADERS)]
        (work / "fleet.toml").write_text("".join(f'[nodes."{n}"]\nboard = "esp32-devkitc"\n' for n in nodes))
        (work / "node-keys.json").write_text(json.dumps({"nodes": {n: secrets.token_hex(32) for n in nodes}}))
        return (f'\n[fleet]\npath = "{work / "fleet.toml"}"\nnode_keys = "{work / "node-keys.json"}"\n'
                f'\n[ota]\nrelease_keys = ["{self.keys}"]\nreleases = "{work / "kept"}"\n')

    @contextmanager
    def load(self, gw: GatewayProcess) -> Iterator[None]:
        conf = str(gw.conf)
        for args in (["release", "add", str(self.release)],
                     ["fleet", "update", "--release", self.manifest["version"], "--canary", str(DOWNLOADERS)]):
            subprocess.run([CLI, *args, "--config", conf], check=True, capture_output=True, timeout=120)
        stop = threading.Event()
        host, port = gw.broker
        threads = [Downloader(host, port, f"d{i:02d}", self.manifest, stop) for i in range(DOWNLOADERS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while not all(t.pieces for t in threads):  # waits on every node's first piece: the rollout under way
            if time.monotonic() > deadline:
                raise SystemExit("benchmark: the downloaders got no piece within 60 s:\n" + gw.log_text()[-2000:])
            time.sleep(0.05)
        before = sum(t.pieces for t in threads), sum(t.bytes for t in threads), sum(t.unanswered for t in threads)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds += time.monotonic() - t0
            self.pieces += sum(t.pieces for t in threads) - before[0]
            self.bytes += sum(t.bytes for t in threads) - before[1]
            self.unanswered += sum(t.unanswered for t in threads) - before[2]
            stop.set()
            for t in threads:
                t.join(10)


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ota-") as tmpdir:
        tmp = Path(tmpdir)
        key, pub = rel.keygen(tmp / "keys")
        m = rel.build(key, tmp / "releases" / rel.fw_version())
        downloads = Downloads(tmp / "releases" / m["version"], pub)
        t0 = int(time.time()) // 60 * 60 - 14 * 86400
        streams = batches.streams(NODES, RECORDS_PER_NODE, t0)
        files = {}
        for s in streams:
            files[s.node] = tmp / f"{s.node}.lines"
            files[s.node].write_bytes(b"\n".join(s.messages) + b"\n")
        readings = sum(s.readings for s in streams)
        alone: list[IngestRun] = []
        busy: list[IngestRun] = []
        for i in range(RUNS):  # alternately, which goes first changing too: the machine is shared
            pair = [("alone", None), ("busy", downloads.load)]
            for kind, load in pair if i % 2 == 0 else reversed(pair):
                work = tmp / f"{kind}{i}"
                work.mkdir()
                run = gateway_run(work, streams, files, load,
                                  extra_toml=downloads.toml(work))  # [ota] in both: only the load differs
                (alone if kind == "alone" else busy).append(run)
    alone_rate = [readings / r.seconds for r in alone]
    busy_rate = [readings / r.seconds for r in busy]
    s = downloads.seconds or 1.0
    record("ingest_ratio_with_16_ota_downloads", round(median(busy_rate) / median(alone_rate), 3), "ratio", "higher",
           {"runs": RUNS, "nodes": NODES, "readings": readings, "messages": sum(len(x.messages) for x in streams),
            "readings_per_s_alone_runs": [round(r) for r in alone_rate],
            "readings_per_s_with_downloads_runs": [round(r) for r in busy_rate],
            "pair_ratios": [round(b / a, 3) for a, b in zip(alone_rate, busy_rate)],
            "downloaders": DOWNLOADERS, "release_bytes": m["bytes"], "release_files": len(m["files"]),
            "pieces_per_s_served": round(downloads.pieces / s), "bytes_per_s_served": round(downloads.bytes / s),
            "requests_unanswered_per_s": round(downloads.unanswered / s, 1),
            "downloader": f"one ota/get of {PIECE} bytes at a time, the next when the last came (or 0.5 s without "
                          "an answer), files over and over, no pacing; paho threads of the bench process",
            "gateway_ota": "defaults: piece_max_bytes 4096, pieces_per_s 20 a node",
            "clock": "first publish to the last acknowledgement on meetkit/<node>/ack; every record "
                     "checked in the store and acknowledged"})


if __name__ == "__main__":
    run()
