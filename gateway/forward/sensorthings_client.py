"""HTTP and OData for one SensorThings API service root: GET with $filter/$select/$top/$orderby
(following @iot.nextLink), POST of an entity (its id from the Location header), POST of
CreateObservations, PATCH of an entity's properties. Standard library only; one kept-alive connection.

Every failure is a `Failure` the sender turns into the forwarder's `Result`: no answer, a 5xx,
408, 429 and 401/403/404 (the target's settings or load, not the data) are to be retried; any
other 4xx to a POST or PATCH refuses what was sent for good. A GET is only a lookup of ours, so any
non-2xx answer to one is retried: a service that rejects our query is the target's problem, not
the data's.
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from .http_target import RETRYABLE_4XX, Connection

SAFE = "/:,'()$@"  # left as they are in a query value; everything else (spaces, quotes, &) is %-encoded
PAGES_MAX = 1000  # @iot.nextLink pages followed at most in one lookup


class Failure(Exception):
    """What went wrong with a request, as the forwarder needs it."""

    def __init__(self, reason: str, status: int | None = None, permanent: bool = False,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True)
class Answer:
    status: int
    location: str | None
    retry_after: float | None
    text: str

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            raise Failure(f"{what}: the answer is not JSON: {self.text[:200]!r}", self.status) from None


def literal(value: str) -> str:
    """An OData string literal: quoted, quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def key(iot_id: Any) -> str:
    """An entity id as it goes into a path: Things(5), Things('a''b')."""
    return str(iot_id) if isinstance(iot_id, int) else literal(str(iot_id))


_ID_IN_LINK = re.compile(r"\((?:(\d+)|'((?:[^']|'')*)')\)/?$")


def id_from_link(link: str) -> int | str | None:
    """The id at the end of a self link (`.../Things(5)`, `.../Things('x')`), None if none."""
    m = _ID_IN_LINK.search(link.strip())
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) is not None else m.group(2).replace("''", "'")


class Client:
    """Requests to the service root `url` (`https://host/FROST-Server/v1.1`)."""

    def __init__(self, url: str, timeout: float, headers: Callable[[], dict[str, str]]) -> None:
        self.conn = Connection(url, timeout)
        self.host = self.conn.host
        self.root = self.conn.path.rstrip("/")
        self.headers = headers  # called per request: the auth header, read from its file

    # -- the connection -----------------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        """One request to `root + path`; Failure (to retry) when there is no answer. A GET that
        finds its kept-alive connection closed by the server is sent once more on a new one."""
        data = None if body is None else json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        try:
            headers = {"Accept": "application/json", **self.headers()}
        except OSError as e:
            raise Failure(f"cannot read the secret file: {e}") from None
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            # a GET or PATCH may be sent twice (a PATCH sets, it does not add)
            r = self.conn.request(method, self.root + path, data, headers, resend=method in ("GET", "PATCH"))
        except (OSError, http.client.HTTPException) as e:
            raise Failure(f"{method} {self.root}{path[:120]}: {self.conn.host}:{self.conn.port}: "
                          f"{type(e).__name__}: {e}") from None
        return Answer(r.status, r.location, r.retry_after, r.text)

    @staticmethod
    def check(answer: Answer, method: str, what: str) -> Answer:
        """`answer` if 2xx, else the Failure it means."""
        if 200 <= answer.status < 300:
            return answer
        text = answer.text.strip()
        reason = f"{method} {what}: HTTP {answer.status}" + (f": {text[:400]}" if text else "")
        permanent = method in ("POST", "PATCH") and 400 <= answer.status < 500 and answer.status not in RETRYABLE_4XX
        raise Failure(reason, answer.status, permanent, answer.retry_after)

    # -- OData ----------------------------------------------------------------------------------------

    def values(self, path: str, pages: int = PAGES_MAX, **options: str) -> list[dict[str, Any]]:
        """The entities of a collection `path` with query `options` ($filter=... as filter=...),
        from its first `pages` pages (@iot.nextLink)."""
        query = "&".join(f"${k}={quote(v, safe=SAFE)}" for k, v in options.items())
        target = f"{path}?{query}" if query else path
        out: list[dict[str, Any]] = []
        for page in range(1, pages + 1):
            doc = self.check(self.request("GET", target), "GET", path).json(f"GET {path}")
            if not isinstance(doc, dict) or not isinstance(doc.get("value"), list):
                raise Failure(f"GET {path}: the answer has no \"value\" array")
            out.extend(v for v in doc["value"] if isinstance(v, dict))
            link = doc.get("@iot.nextLink")
            if not link or page == pages:
                return out
            target = self._relative(link, path)
        raise Failure(f"GET {path}: more than {pages} pages")

    def entity(self, path: str, **options: str) -> dict[str, Any]:
        """One entity (`/Things(5)`), with query `options` like `values`."""
        query = "&".join(f"${k}={quote(v, safe=SAFE)}" for k, v in options.items())
        doc = self.check(self.request("GET", f"{path}?{query}" if query else path), "GET", path).json(f"GET {path}")
        if not isinstance(doc, dict):
            raise Failure(f"GET {path}: the answer is not an entity: {str(doc)[:200]!r}")
        return doc

    def update(self, path: str, body: dict[str, Any]) -> None:
        """PATCH the properties in `body` of the entity at `path` (18-088 clause 10.3: 200 or 204)."""
        self.check(self.request("PATCH", path, body), "PATCH", path)

    def _relative(self, link: str, path: str) -> str:
        parts = urlsplit(link)
        if parts.hostname not in (None, self.host) or not parts.path.startswith(self.root + "/"):
            raise Failure(f"GET {path}: @iot.nextLink {link!r} is not under {self.root}")
        return parts.path[len(self.root):] + (f"?{parts.query}" if parts.query else "")

    def create(self, collection: str, body: dict[str, Any]) -> int | str:
        """POST a new entity; its id (from the Location header the spec requires, else the body)."""
        answer = self.check(self.request("POST", f"/{collection}", body), "POST", f"/{collection}")
        iot_id = id_from_link(answer.location) if answer.location else None
        if iot_id is None:
            doc = answer.json(f"POST /{collection}")
            iot_id = doc.get("@iot.id") if isinstance(doc, dict) else None
        if not isinstance(iot_id, (int, str)) or isinstance(iot_id, bool):
            raise Failure(f"POST /{collection}: HTTP {answer.status} without the new entity's id", answer.status)
        return iot_id

    def create_observations(self, body: list[dict[str, Any]]) -> tuple[int, list[Any]]:
        """POST /CreateObservations: (status, one entry per dataArray row in order: a self link or
        "error ...")."""
        answer = self.check(self.request("POST", "/CreateObservations", body), "POST", "/CreateObservations")
        doc = answer.json("POST /CreateObservations")
        if not isinstance(doc, list):
            raise Failure(f"POST /CreateObservations: the answer is not an array: {answer.text[:200]!r}",
                          answer.status)
        return answer.status, doc
