"""Forwarding upstream: every stored reading, to each configured target, in order, at least once.

One cursor per target in the store (`forward_cursors.last_id`, a `records.id`): each target has a
thread of its own that reads the next batch after its cursor, hands it to the target's `Sender`,
and moves its cursor only once the target took the batch (or refused it for good). A target that
is down holds back no other; what it has not taken stays in the store, counted in `status()`.

    forwarders = Forwarders.start(cfg.store.path, cfg.forward)   # threads started
    forwarders.status()   # list of dicts for /metrics and the status page (gateway/http.py)
    forwarders.stop()     # before the store is closed; a batch in flight is sent again next time

Delivery is at least once: a batch is sent again after a crash between the target's answer and
the cursor's commit, after a retry, or after an operator resets a cursor. The targets make that
harmless (idempotent replay): line protocol carries each reading's own timestamp, so a point sent
again overwrites itself (influx.py); an MQTT message carries the record's (node, boot, seq) and
start, the same bytes each time, for the consumer to drop duplicates by (mqtt_upstream.py);
sensor.community takes no timestamps, so only fresh records are sent and a replay of old ones
sends nothing (sensor_community.py); the SensorThings target looks up what may already be there
before it sends again (sensorthings.py).
"""

from __future__ import annotations

from .core import Forwarder, Forwarders, Refused, Result, Row, Sender, backoff, refused_readings, retry_after
from .influx import InfluxSender, encode_lines

__all__ = ["Forwarder", "Forwarders", "InfluxSender", "Refused", "Result", "Row", "Sender", "backoff",
           "encode_lines", "refused_readings", "retry_after"]
