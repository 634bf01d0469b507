"""The SensorThings target (gateway/forward/sensorthings.py): what sending and replaying cost.

The target is the contract server of the tests (tools/dev/sensorthings_server.py, in this
process, on loopback): no real SensorThings server can be installed here, so the times are those
of our client plus a small Python server, not of FROST-Server. The figures that matter are counts
and a ratio measured side by side in one run:

sensorthings_lookups_per_new_batch    GETs per CreateObservations once the entities exist, for
                                      readings newer than anything sent (the normal case; goal 0)
sensorthings_replay_vs_send_ratio     wall time of a replay of everything (cursor reset to 0, all
                                      already upstream: looked up, nothing sent) / wall time of
                                      delivering the same readings the first time (entities
                                      created included); median of 3 runs each
sensorthings_readings_per_s           readings delivered per second to the contract server,
                                      steady state (entities known), median of 3 runs

`python -c "from bench import sensorthings; sensorthings.run()"` runs this benchmark alone.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.results import median, record
from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder
from meetkit_gateway.forward.sensorthings import SensorThingsSender
from meetkit_gateway.store import Store
from meetkit_tools.dev.sensorthings_server import SensorThingsServer

NODES, RECORDS, T0 = 10, 60, 1795510800
UNITS = {k: q.unit for k, q in payload.QUANTITIES.items()}


def _batch(node: str, seqs: range) -> bytes:
    recs = [{"seq": s, "ts": T0 + 60 * s, "up": 60 * s, "dur": 60,
             "pm1": [3.1, 2, 5, 58], "pm25": [5.2, 4, 7, 58], "pm10": [8.9, 6, 12, 58],
             "temp": [12.3, 12.3, 12.4, 12], "rh": [81.2, 80.9, 81.5, 12], "press": [1013.2, 1013.1, 1013.3, 12],
             "LAeq": [55.2, 48.3, 67.1, 60], "LA10": 58.4, "LA50": 53.9, "LA90": 49.6, "LZeq": 63.8, "cov": 1}
            for s in seqs]
    return json.dumps({"v": 1, "node": node, "boot": 1, "fw": "0.2.0", "board": "esp32-devkitc",
                       "sensors": {"pm": "pms5003", "climate": "bme280", "mic": "ics43434"},
                       "units": UNITS, "recs": recs}).encode()


def _fill(db: Path, seqs: range) -> int:
    with Store(db) as s:
        for i in range(NODES):
            node = f"ams-{i:03d}"
            for k in range(seqs.start, seqs.stop, 5):  # batches of five records, as nodes send them
                s.add_batch(payload.parse_batch(_batch(node, range(k, min(k + 5, seqs.stop))), node))
        return s.readings_count()


def _drain(f: Forwarder) -> float:
    t = time.perf_counter()
    while f.step() == 0:
        pass
    return time.perf_counter() - t


def _one_run(tmp: Path) -> dict[str, float]:
    fleet = tmp / "fleet.toml"
    fleet.write_text("".join(f'[nodes."ams-{i:03d}"]\nlat = 52.{i:02d}\nlon = 4.9\n' for i in range(NODES)))
    server = SensorThingsServer(max_top=1000)
    try:
        db = tmp / "g.db"
        n = _fill(db, range(RECORDS))
        cfg = ForwardConfig(name="sta", type="sensorthings", url=server.url, fleet=fleet, batch=1000)
        f = Forwarder("sta", db, SensorThingsSender(cfg, db), batch=1000)
        first = _drain(f)
        _fill(db, range(RECORDS, 2 * RECORDS))
        gets_before = len(server.requests("GET"))
        posts_before = len(server.requests("POST", "/CreateObservations"))
        steady = _drain(f)
        gets = len(server.requests("GET")) - gets_before
        posts = len(server.requests("POST", "/CreateObservations")) - posts_before
        f.reset(0)
        creates = len(server.requests("POST", "/CreateObservations"))
        replay = _drain(f)
        resent = len(server.requests("POST", "/CreateObservations")) - creates
        assert len(server.all("Observations")) == 2 * n, "a replay duplicated Observations"
        f.close()
        return {"readings": n, "first_s": first, "steady_s": steady, "steady_gets": gets, "steady_posts": posts,
                "replay_s": replay, "replay_posts": resent}
    finally:
        server.stop()


def run() -> None:
    runs = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(_one_run(Path(tmp)))
    n = runs[0]["readings"]
    detail = {"nodes": NODES, "readings_per_delivery": n, "batch": 1000, "runs": runs,
              "target": "tools/dev/sensorthings_server.py in-process (not FROST-Server)"}
    record("sensorthings_lookups_per_new_batch", max(r["steady_gets"] / r["steady_posts"] for r in runs), "requests",
           "lower", detail)
    record("sensorthings_replay_vs_send_ratio", median([r["replay_s"] for r in runs]) / median(
        [r["first_s"] + r["steady_s"] for r in runs]), "ratio", "lower",
        dict(detail, replay_creates=[r["replay_posts"] for r in runs]))
    record("sensorthings_readings_per_s", n / median([r["steady_s"] for r in runs]), "readings/s", "higher", detail)


if __name__ == "__main__":
    run()
