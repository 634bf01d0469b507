"""The status server against careless and hostile clients, and over a store older gateways wrote.

Real sockets, a real SQLite store, the real server (gateway/http.py, gateway/http_server.py); a
server whose descriptors run out runs in a process of its own with a low RLIMIT_NOFILE."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from meetkit_gateway import payload
from meetkit_gateway.http import StatusServer, series_doc
from meetkit_gateway.http_server import Bucket, Limits
from meetkit_gateway.payload import TS_MIN
from meetkit_gateway.store import Store
from tests.metrics import parse_exposition, sample

from .conftest import wait_for
from .test_http import add, db, get  # noqa: F401 (db: the fixture)

NOW = int(time.time()) // 60 * 60


class Client:
    """A raw HTTP/1.1 client socket: send bytes, read whole responses (pipelined ones too)."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return chunk

    def response(self, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One response (status, headers, body), by its Content-Length (`head`: to a HEAD, no body)."""
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"closed before a whole response: {self.buf!r}"
        top, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._more(), "closed inside a body"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split(" ")[1]), headers, body

    def closed_by_server(self) -> bool:
        """True once the server closed the connection (EOF or reset), after any response it sent."""
        try:
            while self._more():
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def connect(server: StatusServer, rcvbuf: int | None = None) -> Client:
    return Client(server.port, rcvbuf)


@pytest.fixture
def server(db: Path) -> Iterator[StatusServer]:  # noqa: F811
    with StatusServer(db, "127.0.0.1", 0, limits=Limits(head_timeout_s=1.0)) as s:
        yield s


# -- query values ----------------------------------------------------------------------------------

BAD_QUERIES = [
    ("/api/series?node=ams-001&until=1e400", "until"),
    ("/api/series?node=ams-001&until=nan", "until"),
    ("/api/series?node=ams-001&until=inf", "until"),
    ("/api/series?node=ams-001&until=-1", "until"),
    ("/api/series?node=ams-001&until=1", "until"),  # 1970: before the project
    ("/api/series?node=ams-001&until=99999999999", "until"),  # far past now
    ("/api/series?node=ams-001&until=0x10", "until"),
    ("/api/series?node=ams-001&until=", "until"),
    ("/api/series?node=ams-001&hours=nan", "hours"),
    ("/api/series?node=ams-001&hours=inf", "hours"),
    ("/api/series?node=ams-001&hours=1e400", "hours"),
    ("/api/series?node=ams-001&hours=-1", "hours"),
    ("/api/series?node=ams-001&hours=0", "hours"),
    ("/api/series?node=ams-001&hours=721", "hours"),
    ("/api/series?node=ams-001&hours=1_0", "hours"),
    ("/api/series?node=ams-001&hours=%201", "hours"),
    ("/api/series?node=ams-001&hours=ten", "hours"),
    ("/api/series?node=ams-001&hours=1&hours=2", "hours"),
    ("/api/series?node=ams-001&node=ams-002", "node"),
    ("/api/series?node=", "node"),
    ("/api/series?hours=24", "node"),
    ("/api/series?node=" + "a" * 65, "node"),
    ("/api/series?node=%0a", "node"),
    ("/api/series?node=%ff", "UTF-8"),
    ("/api/series?node=ams-001&x=1", "'x'"),
    ("/api/series?node=ams-001&q=pm25,bogus", "q:"),
    ("/api/series?node=ams-001&q=pm25,pm25", "q:"),
    ("/api/series?node=ams-001&q=", "q:"),
    ("/api/node?node=", "node"),
    ("/api/node?node=ams-001&hours=1", "takes node"),
    ("/api/series?node=ams-001&&hours=1", "key=value"),
    ("/api/series?node=ams-001&hours=1&until=1800000000&q=pm25&x=1", "key=value"),
    ("/metrics?x=1", "no query"),
    ("/healthz?verbose", "no query"),
    ("/api/nodes?node=ams-001", "no query"),
    ("/api/targets?a=1", "no query"),
    ("/app.js?v=2", "no query"),
]


@pytest.mark.parametrize("path,names", BAD_QUERIES)
def test_a_bad_query_value_is_a_400_that_names_it(server: StatusServer, path: str, names: str) -> None:
    status, ctype, body = get(server, path)
    assert (status, ctype) == (400, "application/json"), body
    assert names in json.loads(body)["error"]
    assert get(server, "/healthz")[0] == 200  # and the server goes on


def test_good_query_values_still_work(server: StatusServer) -> None:
    for q in (f"node=ams-001&hours=0.5&until={NOW}", f"until={NOW}.25&node=ams-001", "node=ams-001&hours=168",
              "node=" + urllib.parse.quote('we"ird\\node'), "node=nobody"):
        status, _, body = get(server, "/api/series?" + q)
        assert status == 200, (q, body)
        json.loads(body)


# -- protocol ----------------------------------------------------------------------------------------


def test_keep_alive_pipelining_head_and_http10(server: StatusServer) -> None:
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /api/nodes HTTP/1.1\r\nHost: x\r\n\r\n")
    st1, _, b1 = s.response()
    st2, h2, b2 = s.response(head=True)  # HEAD: the length of the body, and no body
    st3, _, b3 = s.response()
    assert (st1, json.loads(b1)["status"]) == (200, "ok")
    assert st2 == 200 and int(h2["content-length"]) > 1000 and b2 == b""
    assert st3 == 200 and json.loads(b3)["nodes"]
    s.sendall(b"GET /app.js HTTP/1.1\r\nIf-None-Match: " + h2["etag"].encode() + b"\r\n\r\n")
    assert s.response()[0] == 304  # the browser's copy is current
    s.close()
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert s.response()[0] == 200
    assert s.closed_by_server()  # HTTP/1.0 without keep-alive: one request


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 70 + b"\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: " + b"a" * 20000, 431),  # no end in sight
    (b"GET /healthz\r\n\r\n", 400),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"GET healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n folded: header\r\n\r\n", 400),
    (b"\xff\xfe\x00garbage\r\n\r\n", 400),
])
def test_a_request_it_cannot_serve_gets_its_status_then_the_connection_closes(
        server: StatusServer, request_bytes: bytes, status: int) -> None:
    s = connect(server)
    s.sendall(request_bytes)
    assert s.response()[0] == status
    if status != 405:
        assert s.closed_by_server()
    assert get(server, "/healthz")[0] == 200
    assert get(server, "/api/nodes?x=1")[0] == 400  # a 400 of the application beside the server's
    fams = parse_exposition(get(server, "/metrics")[2].decode())  # one series per code, counted
    assert sample(fams, "meetkit_http_requests_total", code=str(status)) >= 1


# -- timeouts and the connection cap -----------------------------------------------------------------


def test_an_idle_keep_alive_connection_is_closed_after_the_head_timeout(server: StatusServer) -> None:
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
    assert s.response()[0] == 200
    assert s.closed_by_server()  # within the socket's 20 s timeout: the server's is 1 s
    s2 = connect(server)  # never sends a byte
    assert s2.closed_by_server()
    assert server.server is not None and server.server.counters["closed.idle"] == 2


def test_a_slowloris_is_cut_off_although_it_keeps_sending(server: StatusServer) -> None:
    s = connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\n")
    s.sock.settimeout(0.2)
    got = b""
    for _ in range(100):  # 20 s of a header byte every 0.2 s, unless the server ends it
        try:
            s.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = s.sock.recv(4096)
            got += chunk
            if not chunk:
                break
        except socket.timeout:
            pass  # waits on: the next byte to dribble
        except ConnectionResetError:
            break
    else:
        pytest.fail("the server took a request head dribbled for 20 s (its head timeout is 1 s)")
    assert got.startswith(b"HTTP/1.1 408 "), got[:100]
    assert server.server is not None and server.server.counters["closed.slow_head"] == 1


def test_at_the_cap_idle_connections_give_way_and_busy_ones_get_a_quick_503(db: Path) -> None:  # noqa: F811
    gate = threading.Event()

    def targets() -> list[dict[str, Any]]:
        gate.wait(30)  # a forwarding side that takes its time: the requests stay busy
        return []

    with StatusServer(db, "127.0.0.1", 0, targets=targets, limits=Limits(max_connections=4)) as srv:
        assert srv.server is not None
        idle = [connect(srv) for _ in range(20)]  # never send anything
        status, _, body = get(srv, "/healthz")  # gets in: the oldest idle connection gives way
        assert status == 200
        wait_for(lambda: srv.server.open_connections <= 4 and srv.server.counters["closed.evicted"] >= 16, 10,
                 "idle connections evicted down to the cap")
        busy = [connect(srv) for _ in range(4)]
        for s in busy:
            s.sendall(b"GET /api/targets HTTP/1.1\r\n\r\n")
        wait_for(lambda: sum(c.state == "busy" for c in list(srv.server._conns)) == 4, 10, "four requests in work")
        late = connect(srv)
        late.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        status, headers, _ = late.response()
        assert status == 503 and headers["retry-after"] == "1"
        assert srv.server.open_connections <= 4
        gate.set()
        for s in busy:
            assert s.response()[0] == 200
        assert get(srv, "/healthz")[0] == 200  # accepting again
        for s in idle + busy + [late]:
            s.close()


def test_a_client_gone_mid_response_is_a_counter_not_a_traceback(db: Path, tmp_path: Path,  # noqa: F811
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "big.bin").write_bytes(os.urandom(4 << 20))  # more than the socket buffers hold
    caplog.set_level(logging.DEBUG)
    with StatusServer(db, "127.0.0.1", 0, static=static) as srv:
        assert srv.server is not None
        for _ in range(20):
            s = connect(srv, rcvbuf=4096)
            s.sendall(b"GET /big.bin HTTP/1.1\r\n\r\n")
            assert s.sock.recv(100).startswith(b"HTTP/1.1 200")
            s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, mid-body
        wait_for(lambda: srv.server.counters["closed.client_gone"] >= 20, 20, "20 clients gone counted")
        assert get(srv, "/healthz")[0] == 200
        fams = parse_exposition(get(srv, "/metrics")[2].decode())
        assert sample(fams, "meetkit_http_connections_closed_total", reason="client_gone") >= 20
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


_FD_SERVER = textwrap.dedent("""
    import logging, resource, sys, time
    from meetkit_gateway.http import StatusServer
    from meetkit_gateway.http_server import Limits
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
    # a cap above the descriptors: what the cap keeps from happening, made to happen
    s = StatusServer(sys.argv[1], "127.0.0.1", 0, limits=Limits(max_connections=10000, head_timeout_s=3)).start()
    print(s.port, flush=True)
    sys.stdin.read()
    s.stop()
""")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_server_pauses_instead_of_spinning(db: Path) -> None:  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-c", _FD_SERVER, str(db), "48"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for _ in range(80):  # more than its 48 descriptors: accept() fails with EMFILE
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            clients.append(s)
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        time.sleep(2.0)  # waits on: two seconds of the server out of descriptors, to take its CPU
        cpu = _cpu_s(proc.pid) - cpu0
        wall = time.monotonic() - t0
        assert cpu < 0.25 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s: the accept loop spins"
        for s in clients:
            s.close()
        clients = []

        def healthy() -> bool:
            try:
                c = Client(port)
                try:
                    c.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
                    return c.response()[0] == 200
                finally:
                    c.close()
            except (OSError, AssertionError):  # refused, reset, or closed unanswered: not yet
                return False

        wait_for(healthy, 30, "/healthz once the descriptors are back")
    finally:
        for s in clients:
            s.close()
        out, err = proc.communicate("", timeout=20)
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) <= 10, err[-3000:]
    assert any("cannot accept a connection (Too many open files)" in line for line in lines), err


# -- the request rate, the CPU budget and the cache ---------------------------------------------------------------------


def test_a_bucket_fills_at_its_rate_up_to_its_burst() -> None:
    t = [0.0]
    b = Bucket(rate=0.05, burst=0.25, clock=lambda: t[0])  # the CPU share: 5 % of a core
    assert b.wait_s() == 0
    b.charge(0.25)
    assert b.wait_s() == 0  # the burst, spent
    b.charge(0.1)
    assert math.isclose(b.wait_s(), 0.1 / 0.05)  # 2 s to earn 0.1 s of CPU back
    t[0] += 1.0
    assert math.isclose(b.wait_s(), 0.05 / 0.05)
    t[0] += 100.0
    assert b.wait_s() == 0 and b.tokens == 0.25  # never more than the burst
    assert math.isclose(b.charged, 0.35)


def test_requests_beyond_the_rate_wait_their_turn(db: Path) -> None:  # noqa: F811
    with StatusServer(db, "127.0.0.1", 0, limits=Limits(requests_per_s=20, request_burst=5)) as srv:
        assert srv.server is not None
        c = connect(srv)
        t0 = time.monotonic()
        for _ in range(25):
            c.sendall(b"GET /app.js HTTP/1.1\r\n\r\n")
            assert c.response()[0] == 200
        # 5 at once, 20 more at 20 a second: at least a second (the clock only bounds from below)
        assert time.monotonic() - t0 >= 0.95
        assert srv.server.counters["throttled"] >= 15


def test_busy_clients_get_cached_answers_one_computation_each(db: Path) -> None:  # noqa: F811
    paths = ["/api/nodes", "/metrics", "/api/series?node=ams-001&hours=24"]
    with StatusServer(db, "127.0.0.1", 0, cache_s=60) as srv:
        assert srv.server is not None
        bad: list[Any] = []

        def client() -> None:
            for i in range(30):
                status, _, _ = get(srv, paths[i % 3])
                if status != 200:
                    bad.append(status)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not bad
        assert srv.server.counters["store_reads"] == 3  # 240 requests, 3 answers computed
        assert srv.server.counters["requests.200"] == 240


# -- a store older gateways wrote ---------------------------------------------------------------------

HUGE = 2**63 - 1


def raw_record(store: Store, node: str, boot: int, seq: int, start: int | None, dur: int = 60,
               avg: float = 5.0) -> None:
    """A record as an older gateway could store it (no checks), through the store (a Batch made
    directly), the node's last_seen left as it was."""
    seen = {n.node: n.last_seen for n in store.nodes()}
    store.add_batch(payload.Batch(node, boot, "0.1.0", "esp32-devkitc", {}, {"pm25": "ug/m3"}, (
        payload.Record(seq, start, 60, dur, {"pm25": payload.Value(avg, avg, avg, 1)}),)), time.time())
    store.db.execute("UPDATE nodes SET last_seen = ? WHERE node = ?", (seen.get(node), node))


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    """What gateways before the plausibility checks could store: the current schema, absurd values."""
    path = tmp_path / "old.db"
    with Store(path) as store:
        add(store, "odd-01", 3, [0, 1, 2, 5], NOW - 7200)  # 3 and 4 missing: 2 gaps
        store.set_status(payload.Status("odd-01", True, boot=4, fw="0.1.0", up=60, rssi=-70))
        raw_record(store, "odd-01", 4, 0, 0)
        raw_record(store, "odd-01", 4, 1, 10**13)
        raw_record(store, "odd-01", 4, 2, 2**62)
        raw_record(store, "odd-01", 4, 3, NOW - 600, dur=10**9, avg=float("inf"))
        raw_record(store, "odd-01", HUGE, 0, NOW - 300)
        raw_record(store, "odd-01", 5, HUGE, NOW - 200)
        store.db.execute("UPDATE nodes SET boot = ?, up = ?, dropped = ? WHERE node = 'odd-01'", (HUGE, 2**62, HUGE))
        for seq, start in enumerate((0, 10**13, 2**62)):  # a node whose clock was never right
            raw_record(store, "future-01", 1, seq, start)
        store.db.execute("UPDATE nodes SET last_seen = ? WHERE node = 'future-01'", (time.time(),))
    return path


def _ints(doc: Any) -> Iterator[int]:
    if isinstance(doc, bool):
        return
    if isinstance(doc, int):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _ints(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _ints(v)


def strict_json(body: bytes) -> Any:
    def no(c: str) -> None:
        raise AssertionError(f"{c} in JSON")

    return json.loads(body, parse_constant=no)


def test_the_page_and_metrics_of_an_older_store_show_no_nonsense(old_store: Path) -> None:
    with StatusServer(old_store, "127.0.0.1", 0) as srv:
        status, _, body = get(srv, "/api/nodes")
        assert status == 200
        doc = strict_json(body)
        assert max(_ints(doc)) <= 2**53  # what a browser reads exactly
        nodes = {n["node"]: n for n in doc["nodes"]}
        odd = nodes["odd-01"]
        assert odd["boot"] == 4 and odd["up"] is None and odd["dropped"] is None
        assert odd["gaps"] == 2  # boot 3's; boots with absurd numbers count none
        assert odd["records"] == 10 and "implausible values" in odd["flags"]
        assert odd["last_start"] == NOW - 300
        assert nodes["future-01"]["last_start"] is None and "implausible values" in nodes["future-01"]["flags"]

        status, _, body = get(srv, "/api/series?node=odd-01&hours=24")
        assert status == 200
        series = strict_json(body)
        t0 = NOW - 7200
        assert series["start"] == [t0, t0 + 60, t0 + 120, t0 + 300, NOW - 600, NOW - 300, NOW - 200]
        assert series["pm25"][4] is None  # an infinite average
        assert series["until"] <= time.time() + 1

        series = strict_json(get(srv, "/api/series?node=future-01&hours=24")[2])
        assert series["start"] == [] and TS_MIN < series["until"] <= time.time() + 1  # not the year 318857

        status, _, body = get(srv, "/metrics")
        assert status == 200
        fams = parse_exposition(body.decode())
        assert sample(fams, "meetkit_node_sequence_gaps", node="odd-01") == 2
        assert sample(fams, "meetkit_node_boot", node="odd-01") == 4
        assert sample(fams, "meetkit_node_records", node="odd-01") == 10
        assert sample(fams, "meetkit_node_sequence_gaps", node="future-01") == 0
        assert frozenset({("node", "odd-01")}) not in fams["meetkit_node_spool_dropped_total"]["samples"]
        for fam in fams.values():
            for value in fam["samples"].values():
                assert math.isfinite(value) and abs(value) <= 2**53


def test_series_doc_of_an_older_store_directly(old_store: Path) -> None:
    with Store(old_store, readonly=True) as store:
        doc = series_doc(store, "odd-01", 1, until=NOW)
        assert doc["start"] == [NOW - 600, NOW - 300, NOW - 200] and doc["until"] == NOW
        doc = series_doc(store, "odd-01", 0.05, until=NOW - 250)
        assert doc["start"] == [NOW - 300]
        doc = series_doc(store, "future-01", 168)
        assert doc["start"] == []
