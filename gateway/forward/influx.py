"""InfluxDB line protocol over HTTP: v1 `POST /write?db=...&precision=s`, v2
`POST /api/v2/write?org=...&bucket=...&precision=s` (`Authorization: Token ...`). Standard library
only; one kept-alive connection per target.

The mapping, one line per reading (a quantity of a record):

    meetkit,node=<node>,quantity=<quantity> avg=<f>,min=<f>,max=<f>,n=<i>i,flags="<flags>" <start>

- measurement: `measurement` of the target (default `meetkit`); tags: `node` and `quantity` only,
  so a series stays one series across firmware updates (board and firmware are in the store); in a
  region (`[region]`) also `town` first: `meetkit,town=utrecht,node=...`, the node's HOME town (a
  visiting node's from gateway/visitors.py, whatever gateway forwards it). Never the gateway: a
  record forwarded by two gateways (before and after a failover, of one town or two) must be the
  same point of the same series, which VictoriaMetrics then keeps once and InfluxDB overwrites;
- fields: `avg`, `min`, `max` as floats, `n` as an integer; a quantity the node sends as a plain
  number (LA10, LA50, LA90, LZeq, cov) has `avg` only; `flags` (a string field, comma-separated
  quality flags) only when there are any; a reading with no value and no flags is not sent;
- timestamp: the record's interval start, Unix seconds (`precision=s`). The unit is not sent: it is
  fixed per quantity (docs/payload.md).

A point sent again (a retry, a replay) has the same series and timestamp and overwrites itself in
InfluxDB. VictoriaMetrics stores fields as metrics `<measurement>_<field>` (meetkit_avg{node,
quantity}, adds a `db` label from v1's db), reads a string field as 0, and keeps one sample per
timestamp only when started with `-dedup.minScrapeInterval=1ms`.
"""

from __future__ import annotations

import http.client
import logging
from math import isfinite
from typing import Mapping, Sequence
from urllib.parse import urlencode

from ..config import ForwardConfig
from ..visitors import Visitors
from .core import Result, Row, auth_header
from .http_target import RETRYABLE_4XX, Connection

log = logging.getLogger(__name__)


def _tag(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ").replace("\n", "\\n")


def _measurement(v: str) -> str:
    return v.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("\n", "\\n")


def _string(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def encode_lines(rows: Sequence[Row], measurement: str = "meetkit",
                 town: str | Mapping[str, str] | None = None) -> bytes:
    """The line-protocol body for `rows` (see the module's docstring for the mapping). `town`: the
    one town of every series, or each node's (node -> town, every node of `rows` in it)."""
    m = _measurement(measurement)
    if isinstance(town, str):
        m += f",town={_tag(town)}"
    towns = town if isinstance(town, Mapping) else None
    series: dict[tuple[str, str], str] = {}  # escaped once per node and quantity, not once per row
    out: list[str] = []
    for r in rows:
        fields: list[str] = []
        for key, value in (("avg", r.avg), ("min", r.min), ("max", r.max)):
            if value is not None and isfinite(value):
                fields.append(f"{key}={float(value)!r}")
        if r.n is not None:
            fields.append(f"n={int(r.n)}i")
        if r.flags:
            fields.append(f"flags={_string(r.flags)}")
        if fields:
            head = series.get((r.node, r.quantity))
            if head is None:
                at = "" if towns is None else f",town={_tag(towns[r.node])}"
                head = series[r.node, r.quantity] = f"{m}{at},node={_tag(r.node)},quantity={_tag(r.quantity)}"
            out.append(f"{head} {','.join(fields)} {int(r.start)}")
    return ("\n".join(out) + "\n").encode() if out else b""


class InfluxSender:
    """Sends batches to one InfluxDB-compatible endpoint."""

    kind = "influxdb"

    def __init__(self, cfg: ForwardConfig, town: str | None = None, visitors: Visitors | None = None) -> None:
        self.cfg = cfg
        self.town = town  # [region]: every series carries a town: this one ...
        self.visitors = visitors  # ... or, with the visitors' table, each node's home town
        self.conn = Connection(cfg.url, cfg.timeout)
        base = self.conn.path.rstrip("/")
        if cfg.api == "v2":
            self.path = f"{base}/api/v2/write?" + urlencode({"org": cfg.org, "bucket": cfg.bucket, "precision": "s"})
        else:
            self.path = f"{base}/write?" + urlencode({"db": cfg.db, "precision": "s"})

    def _auth(self) -> dict[str, str]:
        return auth_header(self.cfg, "Token")

    def send(self, rows: Sequence[Row]) -> Result:
        town: str | Mapping[str, str] | None = self.town
        if self.visitors is not None:
            town = self.visitors.towns({r.node for r in rows})
        body = encode_lines(rows, self.cfg.measurement, town)
        if not body:
            return Result(True)
        try:
            headers = {"Content-Type": "text/plain; charset=utf-8", **self._auth()}
        except OSError as e:
            return Result(False, f"cannot read the secret file: {e}")
        try:  # a write sent twice overwrites itself: safe to resend on a connection the server closed
            answer = self.conn.request("POST", self.path, body, headers, resend=True)
        except (OSError, http.client.HTTPException) as e:
            return Result(False, f"{self.conn.host}:{self.conn.port}: {type(e).__name__}: {e}")
        status, text = answer.status, answer.text.strip()
        if 200 <= status < 300:
            return Result(True, status=status)
        reason = f"HTTP {status}" + (f": {text[:500]}" if text else "")
        permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
        return Result(False, reason, status=status, permanent=permanent, retry_after=answer.retry_after)

    def close(self) -> None:
        self.conn.close()
