"""Privacy by design: no audio sample leaves the noise meter. Everything a node publishes, writes to
its flash and prints on its console in 15 simulated minutes is inspected and accounted for: each
message is a valid batch or status of the payload contract, each file is one the firmware
knows and parses as such, each console line is a log line, and all of it together is far
smaller than even one second of audio."""

from __future__ import annotations

import base64
import json
import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt

from meetkit_gateway import payload
from meetkit_tools.dev import spoolfile
from meetkit_tools.paths import ROOT
from meetkit_tools.services import GatewayProcess, Mosquitto
from meetkit_tools.sim.runner import NodeSpec, SimNode, load_scenario

AUDIO_BYTES_PER_S = 48000 * 3  # 24-bit samples
SECONDS = 900
NOISE = {"LAeq", "LA10", "LA50", "LA90", "LZeq", "cov"}
LOG_LINE = re.compile(r"^ *\d+ [IWE] [ -~]{1,200}$")
RECORD_LINE = re.compile(r"^ *\d+ I record \d+: (\{[ -~]+\})$", re.M)


def test_only_indicators_leave_the_noise_meter(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    gateway = GatewayProcess(tmp_path, broker.host, broker.port).start()
    seen: list[mqtt.MQTTMessage] = []
    lock = threading.Lock()
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="privacy-spy")
    spy.on_message = lambda c, u, m: (lock.acquire(), seen.append(m), lock.release())
    spy.connect(broker.host, broker.port)
    spy.subscribe("#", qos=1)
    spy.loop_start()
    try:
        node = SimNode(NodeSpec(node_id="priv-01", scenario=load_scenario("construction-site"),
                                workdir=tmp_path / "node", broker_port=broker.port, until_s=SECONDS)).start()
        assert node.wait(600) == 0, node.console_text()[-3000:]
    finally:
        spy.loop_stop()
        spy.disconnect()
        gateway.stop()
        broker.stop()

    # 1. every message the node published is a batch or a status of the contract
    published = 0
    batches = 0
    envelopes: dict[int, payload.Envelope] = {}
    for m in seen:
        parts = m.topic.split("/")
        if parts[1] != "priv-01" or parts[2] == "ack":  # the gateway's own messages
            continue
        published += len(m.payload)
        if parts[2] == "status":
            payload.parse_status(m.payload, "priv-01")
            continue
        assert parts[2] == "up", m.topic
        # payload v2: the envelope with the boot's first batch of the session, kept for the others
        b = payload.parse_batch(m.payload, "priv-01", envelope_of=lambda node, boot: envelopes.get(boot))
        if b.envelope is not None:
            envelopes[b.boot] = b.envelope
        batches += 1
        keys = envelopes[b.boot].keys if b.version == 2 else tuple(b.units)
        raw = json.loads(m.payload)
        recs = raw[2:] if isinstance(raw, list) else raw["recs"]
        if recs and isinstance(recs[0] if isinstance(recs, list) else recs, str):
            # packed records (docs/payload.md, "Packed records"): a few dozen bytes each, no room for audio
            text = recs[0] if isinstance(recs, list) else recs
            assert len(base64.b64decode(text)) <= 80 * len(b.records), text
            recs = []
        for rec in recs:
            # seq, ts, up, dur, at most four numbers per quantity, the flags: nothing longer
            items = list(rec.values()) if isinstance(rec, dict) else rec
            assert len(items) <= 4 + 4 * len(keys) + 2, rec
            assert all(x is None or isinstance(x, (int, float, dict)) or len(x) <= 4 for x in items), rec
        for r in b.records:
            assert NOISE <= set(r.values), r
        assert b.records and not b.refused
    assert batches >= 10

    # 2. every file on its flash is one the firmware knows, and parses as what it is
    written = 0
    files = node.flash_files()
    for path, data in files.items():
        written += len(data)
        if path.endswith(".py"):
            assert data == (ROOT / "firmware" / path).read_bytes(), path  # the firmware, unchanged
        elif path in ("board.json", "config.json", "sp/state") or re.fullmatch(r"sp/b\d+", path):
            json.loads(data.splitlines()[0] if path.startswith("sp/b") else data)
        elif path == "boot.count":
            int(data)
        elif re.fullmatch(r"sp/t\d+", path):
            int(data)
        elif re.fullmatch(r"sp/s\d+", path):
            spoolfile.segment_records(data)   # whole records and nothing else
        else:
            raise AssertionError(f"unexpected file on flash: {path}")
    assert any(p.startswith("sp/s") for p in files)
    assert [r for _, r in spoolfile.read_spool(files, anchored=False)] == [
        json.loads(m) for m in RECORD_LINE.findall(node.console_text())], "the records, as the console showed them"

    # 3. the console holds log lines and nothing else
    console = node.console_text()
    for line in console.splitlines():
        rec = RECORD_LINE.match(line)
        if rec:  # the ledger: the record as it went to the spool
            assert NOISE <= set(json.loads(rec[1])), line
            continue
        assert LOG_LINE.match(line) or line.startswith("--- "), line

    # 4. all of it together: a few kilobytes against 43 MB of audio
    out = published + (written - sum(len(d) for p, d in files.items() if p.endswith(".py"))) + len(console)
    assert out < AUDIO_BYTES_PER_S, f"{out} bytes out in {SECONDS} s"
