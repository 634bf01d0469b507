"""A TCP proxy on a loopback port that a test can cut and mend: the regional rig puts one between
each gateway and the region (its VictoriaMetrics, the central Mosquitto), so that one gateway alone
loses the region while the others keep it (tools/dev/regionrig.py).

`cut()` stops listening (a new connection is refused, as from a host that is down) and resets
every connection it carries; `mend()` listens again on the same port. Threads, one pair per
connection: the rig's traffic is a few connections per gateway.
"""

from __future__ import annotations

import socket
import threading

from meetkit_tools.services import free_port


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def mend(self) -> "TcpProxy":
        """Listen (again) on the proxy's port."""
        if self._listener is not None:
            return self
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        self._listener = s
        self._thread = threading.Thread(target=self._accept, args=(s,), name=f"proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    start = mend

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:  # a reset, not a clean end: what was in flight is lost, as on a broken link
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            c.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            src.close()
