"""A status-page client as busy as it can be: what gateway/static/app.js does on each refresh,
with no pause between refreshes: GET /api/nodes, then /api/series?node=<id>&hours=24 for every node
heard, one request at a time over one keep-alive connection; it loads the page and its files (/,
app.js, style.css, uPlot) at its start and every RELOAD_EVERY refreshes. Each answer is counted by
its status code (or the exception's name) in a Counter shared by the clients.

bench/http_clients.py (ingest_ratio_with_16_page_clients) and the hostile scenario of 16 busy
status pages (meetkit_tools.dev.hostile) run them as threads.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections import Counter

RELOAD_EVERY = 10
PAGE = ("/", "/app.js", "/style.css", "/vendor/uPlot.iife.min.js", "/vendor/uPlot.min.css")


class PageClient(threading.Thread):
    def __init__(self, url: str, stop: threading.Event, counts: Counter[str], lock: threading.Lock) -> None:
        super().__init__(daemon=True)
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.stop_event, self.counts, self.lock = stop, counts, lock
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> bytes | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            self.conn.request("GET", path)
            r = self.conn.getresponse()
            body = r.read()
            if r.will_close:
                self.conn.close()
                self.conn = None
            key = str(r.status)
        except (OSError, http.client.HTTPException) as e:
            if self.conn is not None:
                self.conn.close()
            self.conn, body, key = None, None, type(e).__name__
            self.stop_event.wait(0.05)  # waits on: a refused client does not spin
        with self.lock:
            self.counts[key] += 1
        return body if key == "200" else None

    def run(self) -> None:
        refreshes = 0
        while not self.stop_event.is_set():
            if refreshes % RELOAD_EVERY == 0:
                for path in PAGE:
                    self.get(path)
            refreshes += 1
            body = self.get("/api/nodes")
            if body is None:
                continue
            for n in json.loads(body)["nodes"]:
                if self.stop_event.is_set():
                    break
                if "never seen" not in n["flags"]:
                    self.get("/api/series?node=" + urllib.parse.quote(n["node"]) + "&hours=24")
        if self.conn is not None:
            self.conn.close()
