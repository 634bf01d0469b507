"""A small HTTP/1.1 server (GET and HEAD) that a careless or hostile client cannot turn against ingest.

One asyncio loop in one thread serves every connection: an idle connection costs a descriptor and a
few hundred bytes, not a thread. What the application computes from the store runs on at most
`store_workers` threads (`HttpServer.compute`). Every limit is in `Limits`:

- At most `max_connections` connections are open at once. At the cap, a new connection evicts the
  one that has waited longest for a request (an idle keep-alive connection or a slow request head);
  when none is waiting, the server stops accepting until one closes, and the rest wait in the
  kernel's listen backlog. The server neither spins nor grows.
- A request's line and headers must arrive whole within `head_timeout_s` of the connection's start
  or of the end of the previous response: an idle keep-alive connection is closed then (silently),
  a slowloris too (408). A head over `max_head_bytes` or `max_headers` lines gets 431, a body 400,
  another method 405; each then closes the connection.
- A client must take its response within `write_timeout_s`, else the connection is aborted.
- At most `requests_per_s` requests a second are served (bursts of `request_burst`), and the
  server's threads (the loop and the store workers) use at most `cpu_share` of one core on average
  (bursts of `cpu_burst_s` CPU seconds): beyond either, requests wait their turn (first come,
  first served), and beyond the CPU share accepting pauses too. Whatever the clients do, the
  writer thread of the gateway keeps the rest of the interpreter (the GIL) and of the CPU, and
  clients on the same machine get no more answers than that to spend their own CPU on.
- accept() failing for want of descriptors pauses accepting for `accept_pause_s` (no busy loop)
  and is counted and logged once a minute at most.
- A client that goes away mid-response is a debug line and a counter, never a traceback; an
  error in the application is logged with its traceback once a minute at most, and answered 500.

Counters (`HttpServer.counters`) are read on the loop thread (`HttpServer.compute` callers and the
application run there); gateway/http.py shows them on /metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Awaitable, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_connections: int = 64
    head_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    max_head_bytes: int = 8192
    max_headers: int = 64
    cpu_share: float = 0.05
    cpu_burst_s: float = 0.25
    requests_per_s: float = 100.0
    request_burst: int = 50
    store_workers: int = 2
    backlog: int = 64
    accept_pause_s: float = 1.0


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # as sent: "/api/series?node=x"
    path: str  # the target's path, not decoded
    query: str  # the target's query, not decoded
    version: str  # "HTTP/1.1"
    headers: dict[str, str]  # lower-case names; a repeated header's values joined by ", "
    keep_alive: bool


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    ctype: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())


App = Callable[[Request], Awaitable[Response]]

#: accept() errors that mean "out of a resource", not "that one connection failed"
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n")


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_head(head: bytes, limits: Limits) -> Request:
    """The request line and headers (without the blank line), or BadRequest."""
    lines = head.decode("latin-1").split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, "a request line is METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505 if version.startswith("HTTP/") else 400, f"HTTP version {version[:16]!r} not supported")
    if len(lines) - 1 > limits.max_headers:
        raise BadRequest(431, f"more than {limits.max_headers} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or not name.isascii() or " " in name or "\t" in name:
            raise BadRequest(400, "a header line is NAME: VALUE")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if headers.get("content-length", "0").strip() not in ("0", "") or "transfer-encoding" in headers:
        raise BadRequest(400, "this server takes no request body")
    if target.startswith(("http://", "https://")):  # absolute form, as to a proxy
        rest = target.split("//", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if not target.startswith("/"):
        raise BadRequest(400, "the target must be a path starting with /")
    path, _, query = target.partition("?")
    path = path.split("#", 1)[0]
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    return Request(method, target, path, query, version, headers, keep_alive)


class Bucket:
    """A token bucket: it fills at `rate` a second up to `burst`, and what is used is charged
    (CPU seconds once the work has run, or one per request). `wait_s` says how long to wait
    before more may start."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()
        self.charged = 0.0  # ever

    def _fill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def charge(self, cpu_s: float) -> None:
        self._fill()
        self.tokens -= cpu_s
        self.charged += cpu_s

    def wait_s(self) -> float:
        self._fill()
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _RateLimitedLog:
    """One log line per `every_s` for a kind of trouble, saying how many were not logged."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def __call__(self, kind: str, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.every_s:
            self._quiet[kind] += 1
            return
        self._last[kind] = now
        more = self._quiet.pop(kind, 0)
        if more:
            msg += f" ({more} more like it since the last report)"
        log.log(level, msg, *args, exc_info=exc_info)


_WAITING, _BUSY, _CLOSED = "waiting", "busy", "closed"


class _Connection(asyncio.Protocol):
    def __init__(self, server: "HttpServer", sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self.state = _WAITING
        self.since = server.loop_time()  # when it began waiting for a request head
        self.buf = bytearray()
        self.drained = asyncio.Event()
        self.drained.set()
        self.peer = "?"

    # -- asyncio's callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=0)  # pause_writing while anything is unsent
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if self.state == _CLOSED:  # evicted before asyncio got to it
            transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.state == _WAITING:
            self._next_request()
        elif len(self.buf) > self.server.limits.max_head_bytes and self.transport is not None:
            self.transport.pause_reading()  # pipelined requests: read on after this response

    def pause_writing(self) -> None:
        self.drained.clear()

    def resume_writing(self) -> None:
        self.drained.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state == _BUSY:
            self.server.count("closed.client_gone")
            log.debug("%s went away before its response was sent (%s)", self.peer, exc or "closed")
        self.state = _CLOSED
        self.drained.set()
        self.server.forget(self)

    # -- requests ------------------------------------------------------------------------------

    def _next_request(self) -> None:
        limits = self.server.limits
        end = self.buf.find(b"\r\n\r\n")
        cut = 4
        if end < 0:
            end, cut = self.buf.find(b"\n\n"), 2
        if end < 0:
            if len(self.buf) > limits.max_head_bytes:
                self._refuse(BadRequest(431, f"the request head is longer than {limits.max_head_bytes} bytes"))
            return
        if end > limits.max_head_bytes:
            self._refuse(BadRequest(431, f"the request head is longer than {limits.max_head_bytes} bytes"))
            return
        head = bytes(self.buf[:end]).lstrip(b"\r\n")  # RFC 9112 2.2: ignore empty lines before a request
        del self.buf[:end + cut]
        try:
            request = parse_head(head, limits)
        except BadRequest as e:
            self._refuse(e)
            return
        self.state = _BUSY
        self.server.spawn(self._serve(request))

    def _refuse(self, e: BadRequest) -> None:
        """A request that cannot be served: say why, then close (what follows cannot be framed)."""
        self.server.count(f"bad_request.{e.status}")
        log.debug("%s: %d %s", self.peer, e.status, e.reason)
        self.state = _BUSY
        self._write(Response(e.status, (e.reason + "\n").encode()), keep_alive=False, head=False)
        self._close()

    async def _serve(self, request: Request) -> None:
        server = self.server
        try:
            await server.admit()
            if self.state == _CLOSED:
                return
            if request.method not in ("GET", "HEAD"):
                response = Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
            else:
                response = await server.app(request)
        except Exception:
            server.trouble("app", logging.ERROR, "the status server failed on %s", request.target[:200], exc_info=True)
            response = Response(500, b"internal error (see the gateway's log)\n")
        server.count(f"requests.{response.status}")
        if self.state == _CLOSED:
            return
        keep_alive = request.keep_alive and not server.stopping
        self._write(response, keep_alive, head=request.method == "HEAD", http10=request.version == "HTTP/1.0")
        if not self.drained.is_set():
            try:
                await asyncio.wait_for(self.drained.wait(), server.limits.write_timeout_s)
            except asyncio.TimeoutError:
                server.count("closed.write_timeout")
                log.debug("%s did not take its response in %.0f s", self.peer, server.limits.write_timeout_s)
                if self.transport is not None:
                    self.transport.abort()
                return
        if self.state == _CLOSED:
            return
        if not keep_alive:
            self._close()
            return
        self.state = _WAITING
        self.since = server.loop_time()
        server.slot_free()
        if self.transport is not None:
            self.transport.resume_reading()
        if self.buf:
            self._next_request()

    def _write(self, r: Response, keep_alive: bool, head: bool, http10: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        lines = [f"HTTP/1.1 {r.status} {_phrase(r.status)}", f"Date: {self.server.http_date()}",
                 "Server: meetkit-gateway", f"Content-Type: {r.ctype}", f"Content-Length: {len(r.body)}",
                 "X-Content-Type-Options: nosniff"]
        lines += [f"{k}: {v}" for k, v in r.headers]
        if not any(k.lower() == "cache-control" for k, _ in r.headers):
            lines.append("Cache-Control: no-cache")
        if not keep_alive:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.transport.write(data if head or not r.body else data + r.body)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        else:
            self.sock.close()
        self.state = _CLOSED
        self.server.forget(self)

    def expire(self, now: float) -> bool:
        """Close the connection if its request head is overdue; True if it did."""
        if self.state != _WAITING or now - self.since < self.server.limits.head_timeout_s:
            return False
        if self.buf.strip():
            self.server.count("closed.slow_head")
            self._refuse(BadRequest(408, f"the request head did not arrive within {self.server.limits.head_timeout_s:g} s"))
        else:
            self.server.count("closed.idle")
            self._close()
        return True

    def evict(self) -> None:
        self.server.count("closed.evicted")
        self._close()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


class HttpServer:
    """`app` answers each request on the loop thread; what it computes from the store it runs
    through `compute`. `start()` binds (raising OSError for a busy port), then serves from a
    thread of its own; `stop()` closes every connection."""

    def __init__(self, app: App, host: str, port: int, limits: Limits = Limits()) -> None:
        self.app = app
        self.host, self.requested_port = host, port
        self.limits = limits
        self.budget = Bucket(limits.cpu_share, limits.cpu_burst_s)  # CPU seconds
        self.requests = Bucket(limits.requests_per_s, limits.request_burst)
        self.counters: Counter[str] = Counter()
        self.trouble = _RateLimitedLog()
        self.stopping = False
        self._conns: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._gate: asyncio.Lock | None = None
        self._workers: asyncio.Semaphore | None = None
        self._accepting = False
        self._accept_timer: asyncio.TimerHandle | None = None
        self._loop_cpu = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._date = (0, "")

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._sock is not None, "not started"
        return self._sock.getsockname()[1]

    def start(self) -> "HttpServer":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._sock = socket.create_server((self.host, self.requested_port), family=family,
                                          backlog=self.limits.backlog)
        self._sock.setblocking(False)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.limits.store_workers, thread_name_prefix="http-store")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_trouble)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="http", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        self._gate = asyncio.Lock()
        self._workers = asyncio.Semaphore(self.limits.store_workers)
        self._loop_cpu = time.thread_time()
        self._resume_accepting()
        loop.call_later(0.5, self._sweep)
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._finish())
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.stopping = True

        def shutdown() -> None:
            self._pause_accepting()
            for c in list(self._conns):
                if c.transport is not None:
                    c.transport.abort()
                else:
                    c.sock.close()
            loop.stop()  # _run cancels what is left and waits for it

        if loop.is_running():
            loop.call_soon_threadsafe(shutdown)
            thread.join(5)
        if self._sock is not None:
            self._sock.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop = self._thread = None

    async def _finish(self) -> None:
        """After the loop stopped: end what was being served and let the aborted transports close."""
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        for _ in range(3):
            await asyncio.sleep(0)  # the transports' connection_lost callbacks close their sockets

    # -- for connections and the application (the loop thread) ------------------------------------

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def count(self, key: str, by: int = 1) -> None:
        self.counters[key] += by

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    def spawn(self, coro: Awaitable[None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, conn: _Connection) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self.slot_free()

    def slot_free(self) -> None:
        """A connection closed or waits for its next request: accept again if the cap stopped it."""
        if not self._accepting and self._accept_timer is None and not self.stopping:
            self._resume_accepting()

    def _charge_loop(self) -> None:
        now = time.thread_time()
        self.budget.charge(now - self._loop_cpu)
        self._loop_cpu = now

    async def admit(self) -> None:
        """Wait until the request rate and the CPU budget allow one more request; waiters go
        first come, first served."""
        assert self._gate is not None
        async with self._gate:
            self.requests.charge(1)
            self._charge_loop()
            wait = max(self.requests.wait_s(), self.budget.wait_s())
            if wait > 0:
                self.count("throttled")
            while wait > 0 and not self.stopping:
                await asyncio.sleep(min(wait, 1.0))  # waits on: the buckets to fill
                self._charge_loop()
                wait = max(self.requests.wait_s(), self.budget.wait_s())

    async def compute(self, fn: Callable[[], T]) -> T:
        """`fn()` on a store worker thread (at most `store_workers` at once), its CPU charged."""
        assert self._loop is not None and self._workers is not None
        async with self._workers:
            self.count("store_reads")
            ok, result, cpu = await self._loop.run_in_executor(self._pool, _timed, fn)
        self.budget.charge(cpu)
        if not ok:
            raise result
        return result

    # -- accepting ----------------------------------------------------------------------------------

    def _pause_accepting(self) -> None:
        if self._accepting and self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock)
            self._accepting = False

    def _resume_accepting(self) -> None:
        self._accept_timer = None
        if not self._accepting and not self.stopping and self._loop is not None and self._sock is not None:
            self._loop.add_reader(self._sock, self._accept)
            self._accepting = True

    def _pause_for(self, seconds: float) -> None:
        assert self._loop is not None
        self._pause_accepting()
        if self._accept_timer is None:
            self._accept_timer = self._loop.call_later(seconds, self._resume_accepting)

    def _accept(self) -> None:
        assert self._sock is not None and self._loop is not None
        self._charge_loop()
        wait = self.budget.wait_s()
        if wait > 0:  # over budget: connections wait in the backlog meanwhile
            self._pause_for(min(wait, 1.0))
            return
        for _ in range(16):
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _RESOURCE_ERRORS:
                    self.count("accept_errors")
                    self.trouble("accept", logging.WARNING,
                                 "status page: cannot accept a connection (%s); pausing for %g s",
                                 e.strerror or e, self.limits.accept_pause_s)
                    self._pause_for(self.limits.accept_pause_s)
                    return
                continue  # that connection failed (aborted before accept): the next
            sock.setblocking(False)
            if len(self._conns) >= self.limits.max_connections:
                waiting = [c for c in self._conns if c.state == _WAITING]
                if not waiting:  # every connection is being served: this one is told to come back
                    self.count("closed.busy")
                    try:
                        sock.send(_BUSY_RESPONSE)
                    except OSError:
                        pass
                    sock.close()
                    self._pause_accepting()  # resumed when a connection closes; the rest wait in the backlog
                    return
                min(waiting, key=lambda c: c.since).evict()
            conn = _Connection(self, sock)
            self._conns.add(conn)
            self.count("connections")
            self.spawn(self._attach(conn, sock))

    async def _attach(self, conn: _Connection, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: conn, sock)
        except (OSError, ValueError) as e:  # ValueError: evicted (closed) before asyncio got to it
            log.debug("status page: a connection failed at its start: %s", e)
            sock.close()
            self.forget(conn)

    def _sweep(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for c in list(self._conns):
            c.expire(now)
        if not self.stopping:
            self._loop.call_later(0.5, self._sweep)

    def _loop_trouble(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ConnectionError, TimeoutError)):
            self.count("closed.client_gone")
            log.debug("status page: %s", context.get("message"))
            return
        self.trouble("loop", logging.ERROR, "status page: %s: %r", context.get("message"), exc)


def _timed(fn: Callable[[], T]) -> tuple[bool, Any, float]:
    """(True, fn(), CPU seconds) or (False, the exception, CPU seconds): a failure costs CPU too."""
    t = time.thread_time()
    try:
        return True, fn(), time.thread_time() - t
    except Exception as e:
        return False, e, time.thread_time() - t


def listen_error(host: str, port: int, e: OSError) -> str:
    """Why the server cannot listen on host:port, and what the operator can do about it."""
    where = f"{f'[{host}]' if ':' in host else host}:{port}"
    why = os.strerror(e.errno) if e.errno else str(e)   # create_server's strerror repeats the address
    if e.errno == errno.EADDRINUSE:
        hint = (f"another program listens there (a gateway already running? `sudo ss -ltnp 'sport = :{port}'` names "
                "it): stop it, or set another [http] port in gateway.toml")
    elif e.errno == errno.EACCES:
        hint = "a port below 1024 needs privileges the gateway does not have: set [http] port to 1024 or above"
    elif e.errno == errno.EADDRNOTAVAIL:
        hint = f"{host} is not an address of this machine: set [http] host"
    else:
        hint = "check [http] host and port in gateway.toml"
    return f"cannot listen on {where} for the status page, /healthz and /metrics: {why}; {hint}"


def probe_listen(host: str, port: int) -> OSError | None:
    """Whether a server could listen on host:port now (bound and closed at once; port 0: always)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as e:
        return e
    return None
