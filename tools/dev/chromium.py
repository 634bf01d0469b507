"""Headless Chromium driven over the DevTools protocol through a pipe (--remote-debugging-pipe: the
protocol's JSON messages, each ended by a NUL byte, on the child's descriptors 3 and 4), so that a
test can load a page at a given window size, wait for something on it, run a script in it (measure
the DOM) and take a screenshot: no WebSocket library, no driver, the real browser.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any


def chromium_bin() -> str:
    for cand in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        path = shutil.which(cand) or (cand if Path(cand).exists() else None)
        if path:
            return path
    raise RuntimeError("chromium is not installed: run `make setup` (apt-get install chromium)")


def browse(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """One headless run of Chromium on `url` with `extra` flags (e.g. --dump-dom); the page's
    fetches and scripts run first (--virtual-time-budget). file:// pages may load their data."""
    return subprocess.run(
        [chromium_bin(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--hide-scrollbars", "--allow-file-access-from-files", "--virtual-time-budget=10000",
         *extra, url],
        capture_output=True, text=True, timeout=90)


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, or a script in the page threw."""


class Chromium:
    """One headless Chromium with one page. `with Chromium(1400, 900) as b: b.goto(url) ...`"""

    def __init__(self, width: int, height: int, timeout: float = 60) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        to_child, self._w = os.pipe()   # we write commands: the child reads them on fd 3
        self._r, from_child = os.pipe()  # the child writes answers on fd 4: we read them

        def fds() -> None:  # in the child, before exec (close_fds runs after this, sparing 3 and 4)
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        self.proc = subprocess.Popen(
            [chromium_bin(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--hide-scrollbars", "--remote-debugging-pipe", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=fds,
            pass_fds=(3, 4))
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        self.session = ""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        # the layout width is the window's, as a phone's would be (device scale 1)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 700)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._r], [], [], left)[0]:
                    raise TimeoutError(f"chromium: no answer to {method} within {self.timeout} s")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise BrowserError(f"chromium exited during {method}: {err[-2000:]}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def js(self, expression: str) -> Any:
        """The value of `expression` in the page (awaited when it is a promise), as JSON."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression[:80]}: {json.dumps(r['exceptionDetails'])[:2000]}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        """The first true value of `expression`, asked every 0.1 s; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = self.js(expression)
            except BrowserError:  # the page is still navigating
                v = None
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium: {what or expression} not true within {timeout} s")
            time.sleep(0.1)  # waits on: the page's scripts

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (its whole height when `full_page`)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            w, h = self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": max(w, self.width), "height": h, "scale": 1})
        data = base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.session = ""  # a command of the browser, not of the page
                    self.call("Browser.close")
                except (BrowserError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
