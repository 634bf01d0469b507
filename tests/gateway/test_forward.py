"""Forwarding upstream to a REAL VictoriaMetrics (Debian's victoria-metrics, InfluxDB line protocol),
read back through its export API; refusals and Retry-After against a small contract server."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from meetkit_gateway import payload
from meetkit_gateway.config import ForwardConfig
from meetkit_gateway.forward import Forwarder, Forwarders, InfluxSender, Row, backoff, encode_lines, retry_after
from meetkit_gateway.store import Store
from meetkit_tools.services import VictoriaMetrics, free_port

from .conftest import batch, encode, example, wait_for

T0 = (int(time.time()) - 3 * 3600) // 60 * 60  # VictoriaMetrics refuses points far in the future


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    v = VictoriaMetrics(tmp_path_factory.mktemp("vm")).start()
    try:
        yield v
    finally:
        v.stop()


def fill(path: Path, node: str = "ams-001", seqs: range = range(5), ts0: int | None = T0) -> None:
    with Store(path) as s:
        s.add_batch(payload.parse_batch(encode(batch(node=node, seqs=seqs, ts0=ts0)), node))


def influx(name: str, url: str, **kw) -> ForwardConfig:
    return ForwardConfig(name=name, type="influx", url=url, db=kw.pop("db", "lab"), **kw)


def drain(f: Forwarder, limit: int = 100) -> int:
    """Step until the forwarder idles; the number of steps that sent."""
    for k in range(limit):
        if f.step() > 0:
            return k
    raise AssertionError("the forwarder did not idle")


def series(vm: VictoriaMetrics, node: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    out = {}
    for s in vm.export(f'{{node="{node}"}}'):
        out[(s["metric"]["__name__"], s["metric"]["quantity"])] = sorted(
            zip([t // 1000 for t in s["timestamps"]], s["values"]))
    return out


def test_readings_arrive_in_victoria_metrics_with_their_values_and_times(tmp_path, vm):
    db = tmp_path / "g.db"
    fill(db, node="vm-v1", seqs=range(5))
    f = Forwarder("vm", db, InfluxSender(influx("vm", vm.url)), batch=4)  # 2 records per request
    assert drain(f) == 3
    got = series(vm, "vm-v1")
    times = [T0 + 60 * s for s in range(5)]
    assert got[("meetkit_avg", "pm25")] == [(t, 5.0 + s) for s, t in enumerate(times)]
    assert got[("meetkit_max", "pm25")] == [(t, 7.0 + s) for s, t in enumerate(times)]
    assert got[("meetkit_min", "temp")] == [(t, 12.0) for t in times]
    assert got[("meetkit_n", "temp")] == [(t, 12) for t in times]
    assert vm.export('{node="vm-v1"}')[0]["metric"]["db"] == "lab"  # v1's db, as VictoriaMetrics labels it
    st = f.status()
    assert (st["name"], st["kind"], st["queue_rows"], st["oldest_age_s"], st["sent"], st["up"]) == (
        "vm", "influxdb", 0, None, 10, True)
    assert abs(st["last_success"] - time.time()) < 5
    fill(db, node="vm-v1", seqs=range(5, 7))
    st = f.status()
    assert st["queue_rows"] == 4 and 0 <= st["oldest_age_s"] < 5
    f.close()


def test_v2_write_with_a_token_and_scalars_and_flags(tmp_path, vm):
    db = tmp_path / "g.db"
    with Store(db) as s:
        s.add_batch(payload.parse_batch(encode(example(node="vm-v2")), "vm-v2"))
    (tmp_path / "token").write_text("s3cret\n")
    cfg = ForwardConfig(name="v2", type="influx", url=vm.url, api="v2", org="city", bucket="meetkit",
                        token_file=tmp_path / "token")
    f = Forwarder("v2", db, InfluxSender(cfg), hold_untimed_s=0)
    drain(f)
    got = series(vm, "vm-v2")
    ts = 1795510800
    if ts > time.time() + 86400:  # the example's fixed time is in the future: VictoriaMetrics drops it
        pytest.skip("the example batch's time is too far ahead of this machine's clock")
    assert got[("meetkit_avg", "LA90")] == [(ts, 49.6)]
    assert ("meetkit_min", "LA90") not in got  # a plain number: avg only
    assert got[("meetkit_avg", "pm1")] == [(ts - 60, 3.0), (ts, 3.1)]  # seq 16's start derived from seq 17


def test_a_target_that_is_down_does_not_hold_back_another(tmp_path, vm):
    db = tmp_path / "g.db"
    fill(db, node="vm-two", seqs=range(20))
    Store(db).close()
    fw = Forwarders.start(db, [influx("good", vm.url, batch=10), influx("down", f"http://127.0.0.1:{free_port()}"),
                               influx("off", vm.url, enabled=False)], poll_s=0.05)
    try:
        wait_for(lambda: fw.status()[0]["queue_rows"] == 0, 5, "the good target to drain")
        assert len(series(vm, "vm-two")[("meetkit_avg", "pm25")]) == 20
        wait_for(lambda: fw.status()[1]["retries"] >= 2, 5, "the closed port to be retried")
        good, down = fw.status()
        assert (good["up"], good["sent"], good["retries"]) == (True, 40, 0)
        assert (down["up"], down["queue_rows"], down["sent"]) == (False, 40, 0)
        assert "ConnectionRefusedError" in down["last_error"]
        assert [f.name for f in fw] == ["good", "down"]
    finally:
        fw.stop()
    assert all(not t.is_alive() for t in fw._threads)


def test_replay_after_a_cursor_reset_adds_no_duplicates(tmp_path, vm):
    db = tmp_path / "g.db"
    fill(db, node="vm-replay", seqs=range(6))
    f = Forwarder("r", db, InfluxSender(influx("r", vm.url)))
    drain(f)
    before = series(vm, "vm-replay")
    f.reset(0)
    assert f.status()["queue_rows"] == 12
    drain(f)
    assert series(vm, "vm-replay") == before
    assert len(before[("meetkit_avg", "pm25")]) == 6
    assert f.status()["sent"] == 24
    f.close()


# -- a contract server: what an upstream answers when it does not take a batch ---------------------------


class Contract(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str], str]] = []  # next answers; then 204
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Contract

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, dict(self.headers), body))
        status, headers, text = self.server.answers.pop(0) if self.server.answers else (204, {}, "")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *a) -> None:
        pass


@pytest.fixture
def contract() -> Iterator[Contract]:
    c = Contract()
    try:
        yield c
    finally:
        c.shutdown()
        c.server_close()


class IdleClosing(http.server.ThreadingHTTPServer):
    """HTTP/1.1 with keep-alive announced, but each connection closed after one answer, as a
    server closes a connection that sat idle: the client learns of it only at its next request."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        super().__init__(("127.0.0.1", 0), IdleClosingHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class IdleClosingHandler(http.server.BaseHTTPRequestHandler):
    server: IdleClosing
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()
        self.close_connection = True  # without "Connection: close": the client thinks it is open

    def log_message(self, *args: object) -> None:
        pass


def test_the_secrets_go_as_the_apis_want_them(tmp_path, contract):
    """v2: `Authorization: Token <token>` and org/bucket in the path; v1: basic auth and db (the
    real VictoriaMetrics ignores both, so they are checked here)."""
    db = tmp_path / "g.db"
    fill(db, seqs=range(1))
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "pw").write_text("hunter2\n")
    v2 = ForwardConfig(name="v2", type="influx", url=contract.url + "/base", api="v2", org="city",
                       bucket="meetkit", token_file=tmp_path / "token")
    v1 = influx("v1", contract.url, username="lab", password_file=tmp_path / "pw")
    for cfg in (v2, v1):
        f = Forwarder(cfg.name, db, InfluxSender(cfg))
        drain(f)
        f.close()
    (p2, h2, _), (p1, h1, _) = contract.requests
    assert (p2, h2["Authorization"]) == ("/base/api/v2/write?org=city&bucket=meetkit&precision=s", "Token s3cret")
    assert (p1, h1["Authorization"]) == ("/write?db=lab&precision=s", "Basic bGFiOmh1bnRlcjI=")  # lab:hunter2


def test_a_connection_the_server_closed_is_replaced_without_a_failure(tmp_path):
    server = IdleClosing()
    db = tmp_path / "g.db"
    try:
        fill(db, seqs=range(4))
        f = Forwarder("c", db, InfluxSender(influx("c", f"http://127.0.0.1:{server.server_address[1]}")), batch=4)
        assert drain(f) == 2 and f.cursor() == 4
        st = f.status()
        assert (st["retries"], st["up"], len(server.bodies)) == (0, True, 2)
        f.close()
    finally:
        server.shutdown()
        server.server_close()


def rows(db: Path, sql: str) -> list[tuple]:
    with Store(db, readonly=True) as s:
        return s.db.execute(sql).fetchall()


def test_a_4xx_goes_to_the_dead_letters_with_the_reason_and_the_queue_moves_on(tmp_path, contract):
    db = tmp_path / "g.db"
    fill(db, seqs=range(4))
    contract.answers = [(400, {}, '{"error":"partial write: field type conflict"}')]
    f = Forwarder("c", db, InfluxSender(influx("c", contract.url)), batch=4)
    assert f.step() == 0  # dead-lettered: the next batch at once
    assert rows(db, "SELECT target, first_id, last_id, readings, status, reason FROM forward_dead_letters") == [
        ("c", 1, 2, 4, 400, 'HTTP 400: {"error":"partial write: field type conflict"}')]
    assert f.step() == 0 and f.cursor() == 4
    st = f.status()
    assert (st["dead_letters"], st["sent"], st["retries"], st["queue_rows"]) == (4, 4, 0, 0)
    path, headers, body = contract.requests[1]
    assert path == "/write?db=lab&precision=s"
    assert body.decode().splitlines()[0] == f"meetkit,node=ams-001,quantity=pm25 avg=7.0,min=4.0,max=9.0,n=58i {T0 + 120}"
    f.close()


def test_429_and_503_are_retried_respecting_retry_after_then_backoff(tmp_path, contract):
    db = tmp_path / "g.db"
    fill(db, seqs=range(2))
    contract.answers = [(429, {"Retry-After": "7"}, "slow down"), (503, {}, ""), (503, {}, ""), (401, {}, "no")]
    f = Forwarder("c", db, InfluxSender(influx("c", contract.url)), rng=lambda: 1.0)
    assert f.step() == 7.0
    assert f.step() == 1.0  # second failure in a row: 0.5 * 2
    assert f.step() == 2.0
    assert f.step() == 4.0  # 401 is the target's configuration, not the batch's fault: retried
    assert f.cursor() == 0 and f.status()["last_error"] == "HTTP 401: no"
    assert f.step() == 0.0 and f.cursor() == 2 and f.failures == 0
    st = f.status()
    assert (st["retries"], st["sent"], st["dead_letters"], st["up"], st["last_error"]) == (4, 4, 0, True, None)
    assert len({body for _, _, body in contract.requests}) == 1  # the same batch each time
    f.close()


def test_untimed_records_hold_the_cursor_then_are_passed_over(tmp_path, contract):
    db = tmp_path / "g.db"
    fill(db, node="a", seqs=range(2))  # ids 1, 2
    fill(db, node="b", seqs=range(1), ts0=None)  # id 3: no clock yet
    fill(db, node="a", seqs=range(2, 3))  # id 4
    now = [time.time()]
    f = Forwarder("c", db, InfluxSender(influx("c", contract.url)), hold_untimed_s=60, clock=lambda: now[0])
    drain(f)
    assert f.cursor() == 2  # waits for b's clock
    now[0] += 61
    drain(f)
    assert f.cursor() == 4 and f.status()["untimed"] == 1
    f.close()


def test_a_node_that_never_gets_a_clock_holds_back_no_other(tmp_path, contract):
    """Once a boot has gone without a clock for longer than the hold, its new untimed records no
    longer hold the batch: the other nodes are forwarded as they arrive, not hold_untimed_s late."""
    db = tmp_path / "g.db"
    t0 = time.time()
    with Store(db) as s:
        for minute in range(30):
            for node, ts0 in (("clockless", None), ("fine", T0)):
                b = batch(node=node, seqs=range(minute, minute + 1), ts0=ts0)
                s.add_batch(payload.parse_batch(encode(b), node), received_at=t0 + 60 * minute)
    now = [t0 + 60 * 29 + 1]
    f = Forwarder("c", db, InfluxSender(influx("c", contract.url)), hold_untimed_s=600, clock=lambda: now[0])
    drain(f)
    assert f.cursor() == 60  # the newest record, fine's minute 29, is forwarded
    assert f.status()["untimed"] == 30
    f.close()


def test_a_targets_status_counts_its_own_counters_only(tmp_path, contract):
    """Target names may hold "_" and "."; "city" does not take the counters of "city.v2" or "cityXa"."""
    db = tmp_path / "g.db"
    fill(db, seqs=range(2))
    fs = [Forwarder(n, db, InfluxSender(influx(n, contract.url))) for n in ("city_a", "cityXa", "city", "city.v2")]
    drain(fs[1])
    drain(fs[3])
    assert [f.status()["sent"] for f in fs] == [0, 4, 0, 4]
    assert not any("." in k for k in fs[2].status())
    for f in fs:
        f.close()


def test_backoff_and_retry_after_and_escaping():
    assert [backoff(k, lambda: 1.0) for k in (1, 2, 3, 6, 7, 50)] == [0.5, 1.0, 2.0, 16.0, 30.0, 30.0]
    assert backoff(3, lambda: 0.0) == 1.0  # jitter: half to all of it
    assert retry_after("120") == 120.0 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    row = Row(1, "odd node,x=1", 100, 60, "b", "f", "LA10", 58.4, None, None, None, "dB", 'rh_high,"q"')
    assert encode_lines([row], "meet kit") == (
        b'meet\\ kit,node=odd\\ node\\,x\\=1,quantity=LA10 avg=58.4,flags="rh_high,\\"q\\"" 100\n')
    empty = Row(1, "a", 100, 60, "b", "f", "pm25", None, None, None, None, "ug/m3", "")
    assert encode_lines([empty]) == b""
