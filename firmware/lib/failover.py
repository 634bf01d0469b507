# Failover between the brokers of the node's `broker` list, its home gateway's first
# (docs/operator.md, "A region of gateways"). uplink.py loads this only when a step is due, and it
# drops itself after: its code is heap the node needs.
# - The broker in use not connected for failover_after_s (connects failing, or the connection lost
#   and not back; the clock restarts when the network comes back): the next of the list, wrapping.
# - On another than the home broker (`via` > 0), every failback_every_s: a bare TCP connect to the
#   home broker, given up after _PROBE_S. When it answers, the node says "offline" on the other
#   broker's status topic (retained: its gateway no longer counts it as visiting), disconnects
#   cleanly (no last will) and connects home at once.
# A new session (and, at another gateway, a new database id in its acknowledgements) makes the
# outbox send again what is not yet safe (outbox.py, safepos.py): nothing else is carried over.
import sys
import time
import socket
import console

_PROBE_S = 5


def step(up, now, up_s):
    """Disconnected: to the next broker. Connected to a neighbour's: home, if it answers."""
    try:
        if up.client is None:
            b = up.broker
            n = len(up.brokers)
            i = (up.via + 1) % n
            while not _usable(up, i):   # a TLS entry without its CA: never in clear, the next
                i = (i + 1) % n
            _switch(up, now, i, "mqtt: %s:%d unreachable for %d s: failing over to %%s (%d of %d)" % (
                b["host"], b["port"], time.ticks_diff(now, up._lost) // 1000, i + 1, n))
        else:
            _home(up, now, up_s)
    finally:
        del sys.modules["failover"]


def _usable(up, i):
    """Make up.ssl what brokers[i] needs; False if it is TLS and its CA cannot be loaded (said)."""
    b = up.brokers[i]
    old = up.broker
    if not b["tls"]:
        up.ssl = None
    elif up.ssl is None or not old["tls"] or old["ca"] != b["ca"]:   # a region has one CA: rarely
        up.ssl = None   # the old context's memory first
        up.ssl = sys.modules["uplink"]._tls_context(b["ca"])
        if up.ssl is None:
            if i == up.via:   # round the list to the one in use, and its CA fails now: no uplink
                up.enabled = False
            return i == up.via
    return True


def _home(up, now, up_s):
    up._fb = now
    b = up.brokers[0]
    s = socket.socket()
    try:
        s.settimeout(_PROBE_S)
        s.connect(socket.getaddrinfo(b["host"], b["port"])[0][-1])
    except (OSError, IndexError):
        return   # not yet: again in failback_every_s
    finally:
        s.close()
    try:
        up.client.publish(up.topic_status, '{"v":1,"node":"%s","online":false}' % up.node_id, retain=True, qos=1)
        up.client.disconnect()
    except (OSError, IndexError, MemoryError):
        pass   # gone already: its last will says offline
    up._drop()
    _switch(up, now, 0, "mqtt: back to the home broker %s")
    up._connect(now, up_s)


def _switch(up, now, i, msg):
    b = up.broker = up.brokers[i]
    up.via = i
    up.switches += 1
    up._lost = up._fb = up._next_try = now
    up._backoff = 1000   # uplink's _BACKOFF_MIN_MS: the new broker is tried at once
    console.warn(msg % ("%s:%d" % (b["host"], b["port"])))
