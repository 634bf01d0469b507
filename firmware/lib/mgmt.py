# A message from the gateway on config, ota or cmd (docs/payload.md, "Running the fleet"): loaded
# when one arrives and dropped after (its code is heap the node needs). Every such message is a
# signed envelope {"v":1,"body":"<JSON text>","mac":"<hex>"}, mac = HMAC-SHA256(node.key, body).
# Nothing is looked at before the MAC and the node named in the body match: a message that fails
# is refused on the event topic ("bad mac", "another node's", "no node key") and changes nothing.
# MicroPython has hashlib.sha256 (C) but no hmac module: RFC 2104 by hand, a few microseconds.
#
# What the node says goes out on <prefix>/<node>/event (event(), QoS 1), and waits in the uplink's
# `events` while the broker is away: the host's loop calls handle() again when it is back.
#
# The host is the running node (node.py) or safe mode (safemode.py); what is used of it: cfg,
# board (its name), mode, up_s, inbox, uplink, ota (the download), after (aftercare.py),
# restart_why (set: restart once the interval being measured is spooled; safe mode: at once).
import json
import console

KEY_FILE = "node.key"
OFFER_FILE = "ota.offer"   # an offer as received, while it is looked at (ota.py keeps it as new/ota.json)
_KIND = {b"config": "config", b"ota": "ota", b"cmd": "cmd"}
_EVENTS_MAX = 6   # events kept while the broker is away; past it the oldest goes


def hmac_sha256(key, msg):
    import hashlib
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def node_key():
    """The node's key (32 bytes) from node.key (hex, written by `meetkit provision`), or None."""
    import binascii
    try:
        with open(KEY_FILE) as f:
            k = binascii.unhexlify(f.read().strip())
    except (OSError, ValueError):
        return None
    return k if len(k) >= 16 else None


def verify(msg, node_id, path=None):
    """(body, None) for an envelope (msg, or the file at `path`) signed with this node's key and
    naming this node, else (None, reason)."""
    try:
        if path is None:
            env = json.loads(msg)
        else:
            with open(path) as f:
                env = json.load(f)
        text = env["body"]
        mac = env["mac"]
        if not isinstance(text, str) or not isinstance(mac, str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return None, "not a signed message"
    key = node_key()
    if key is None:
        return None, "no node key on the flash (%s): provision the node again" % KEY_FILE
    import binascii
    want = binascii.hexlify(hmac_sha256(key, text))   # a str hashes as its UTF-8 bytes
    got = mac.encode()
    diff = len(want) ^ len(got)
    for i in range(min(len(want), len(got))):   # the same time for every wrong MAC
        diff |= want[i] ^ got[i]
    if diff:
        return None, "bad mac"
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return None, "not a signed message"
    if body.get("node") != node_id:
        return None, "another node's"
    return body, None


def handle(host):
    """The next message from the gateway in host.inbox, then the events that wait."""
    try:
        if host.dropped_msgs:
            console.warn("mgmt: %d messages from the gateway dropped: they came while two waited"
                         % host.dropped_msgs)
            host.dropped_msgs = 0
        if host.inbox:
            topic, msg = host.inbox.pop(0)
            kind = topic[len(host.uplink.base):]
            try:
                if kind == b"ota":   # 4 KB: on flash, and out of the heap before its body is parsed
                    with open(OFFER_FILE, "wb") as f:
                        f.write(msg)
                    msg = None
                    import gc
                    gc.collect()   # the body's text takes the message's place: no second 4 KB piece
                _handle(host, kind, msg)
            except MemoryError as e:   # the heap as it is now: the message is refused, the node measures on
                msg = None
                import gc
                gc.collect()
                why = "not enough memory to take it (%s; %d bytes free, in pieces)" % (e, gc.mem_free())
                console.error("%s: refused: %s" % (topic.decode(), why))
                event(host, {"kind": _KIND.get(kind, "cmd"), "state": "refused", "reason": why})
            except OSError as e:   # the offer not written (a full flash)
                event(host, {"kind": "ota", "state": "refused", "reason": "%s not written: %r" % (OFFER_FILE, e)})
        flush(host)
    finally:   # their code is heap the node needs; mgmt.py is kept while ota.py or aftercare.py use it
        try:
            import os
            os.remove(OFFER_FILE)   # taken (new/ota.json) or refused
        except OSError:
            pass
        import sys
        if "otaoffer" in sys.modules:
            del sys.modules["otaoffer"]
        if host.ota is None and host.after is None:
            for m in ("mgmt", "cfgapply", "otaoffer", "ota"):
                if m in sys.modules:
                    del sys.modules[m]


def event(host, d):
    """Say what the node did ({"kind": ..., ...}; never a secret), now or once the broker is back."""
    d["v"] = 1
    d["node"] = host.cfg["node_id"]
    ev = host.uplink.events
    if len(ev) >= _EVENTS_MAX:
        ev.pop(0)
    ev.append(json.dumps(d))
    flush(host)


def flush(host):
    up = host.uplink
    ev = up.events
    import time
    while ev and up.client is not None:
        now = time.ticks_ms()
        try:
            up.client.publish(up.base + "event", ev[0], qos=1)
        except (OSError, IndexError, MemoryError) as e:   # half a message read: the link goes
            up._fail(now, "event", e)
            return
        ev.pop(0)
        up._last_tx = now


def send(host, sub, payload, now):
    """Publish at QoS 0 on <prefix>/<node>/<sub> (ota/get); True when it went out."""
    up = host.uplink
    if up.client is None:
        return False
    try:
        up.client.publish(up.base + sub, payload)
    except (OSError, IndexError, MemoryError) as e:
        up._fail(now, sub, e)
        return False
    up._last_tx = now
    return True


def status(host):
    """The status again: its mode or configuration changed."""
    up = host.uplink
    if up.client is not None:
        import time
        now = time.ticks_ms()
        try:
            up._status(host.up_s)
            up._last_tx = now
        except (OSError, IndexError, MemoryError) as e:   # half a message read: the link goes
            up._fail(now, "status", e)


def _handle(host, kind, msg):
    what = _KIND.get(kind)
    if what is None:
        return
    body, why = verify(msg, host.cfg["node_id"], OFFER_FILE if msg is None else None)
    if why is not None:
        if why.startswith("no node key"):
            if getattr(host, "said_no_key", False):   # once per boot: the configuration comes at every connect
                return
            host.said_no_key = True
        console.warn("%s: refused: %s" % (what, why))
        event(host, {"kind": what, "state": "refused", "reason": why})
        return
    if what == "config":
        import cfgapply
        cfgapply.apply(host, body)
    elif what == "ota":
        import otaoffer
        otaoffer.offer(host, body, OFFER_FILE)
    elif body.get("cmd") == "selftest":
        event(host, {"kind": "selftest", "id": body.get("id"), "checks": console.checks()})
    else:
        console.warn("cmd: %r is not a command of this firmware" % (body.get("cmd"),))
        event(host, {"kind": "cmd", "state": "refused", "id": body.get("id"),
                           "reason": "unknown command %r" % (body.get("cmd"),)})
