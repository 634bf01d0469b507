"""One kept-alive HTTP(S) connection to an upstream target, as the HTTP targets share it.

Servers close connections that stay idle (Tomcat after 20 s, nginx after 75 s, some proxies after a
few seconds), and a request on such a connection fails (BrokenPipeError, RemoteDisconnected) though
the target is up. So a connection idle longer than `IDLE_S` is not reused, and a request that may
be sent twice (`resend`: a GET, a line-protocol write, which overwrites itself) is sent once more on
a new connection when its kept-alive one turns out closed.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .core import retry_after

IDLE_S = 4.0
RETRYABLE_4XX = frozenset({401, 403, 404, 408, 429})  # the target's configuration or load, not the batch
_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Response:
    status: int
    text: str
    location: str | None
    retry_after: float | None  # seconds the target asked to wait


class Connection:
    """Requests to the host of `url`; `path` is the URL's path (the caller adds to it)."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._used = 0.0

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                resend: bool = False) -> Response:
        """The answer; OSError or http.client.HTTPException when there is none."""
        for attempt in (1, 2):
            if self._conn is not None and time.monotonic() - self._used > IDLE_S:
                self.close()
            fresh = self._conn is None
            if self._conn is None:
                cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
                self._conn = cls(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                text = resp.read().decode("utf-8", "replace")
                self._used = time.monotonic()
                answer = Response(resp.status, text, resp.getheader("Location"),
                                  retry_after(resp.getheader("Retry-After")))
                if resp.will_close:
                    self.close()
                return answer
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if not (resend and attempt == 1 and not fresh and isinstance(e, _CLOSED)):
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
