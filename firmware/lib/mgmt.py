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
import io
import json
import console

KEY_FILE = "node.key"
OFFER_FILE = "ota.offer"   # an offer as received, while it is looked at (ota.py keeps it as new/ota.json)
_KIND = {b"config": "config", b"ota": "ota", b"cmd": "cmd"}
OFFER_PAUSE_MS = 150   # between writing an offer to flash and taking it (handle)
_EVENTS_MAX = 6   # events kept while the broker is away; past it the oldest goes


def hmac_sha256(key, msg):
    """RFC 2104 with SHA-256; msg: bytes, a str (its UTF-8), or a stream read to its end."""
    import hashlib
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    if hasattr(msg, "readinto"):
        buf = bytearray(64)
        n = msg.readinto(buf)
        while n:
            inner.update(buf if n == 64 else buf[:n])
            n = msg.readinto(buf)
    else:
        inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


class _Str(io.IOBase):
    """A JSON string read from the stream `f` (its opening quote taken) up to its closing quote,
    unescaped to UTF-8: the envelope's body is hashed and parsed from it, never held whole in the
    heap (an offer's body is 4 KB: a second piece that size is what a fragmented heap lacks).
    Read to its end, it leaves `f` just past the closing quote."""

    def __init__(self, f):
        self.f = f
        self.b = bytearray(64)   # read ahead from f, a native call per 64 characters
        self.i = self.n = 0
        self.out = b""     # what a \u escape gave and was not handed over yet
        self.end = False

    def _get(self):
        if self.i >= self.n:
            self.n = self.f.readinto(self.b)
            self.i = 0
            if not self.n:
                raise ValueError("cut short")
        c = self.b[self.i]
        self.i += 1
        return c

    def _hex4(self):
        v = 0
        for _ in range(4):
            v = v * 16 + int(chr(self._get()), 16)
        return v

    def readinto(self, buf):
        n = 0
        while n < len(buf):
            if self.out:
                buf[n] = self.out[0]
                self.out = self.out[1:]
                n += 1
                continue
            if self.end:
                break
            c = self._get()
            if c == 34:   # "
                self.end = True
                self.f.seek(self.i - self.n, 1)   # what was read ahead goes back
                self.i = self.n = 0
            elif c == 92:   # a backslash: an escape
                e = self._get()
                if e == 117:   # \uXXXX, a surrogate pair as one code point
                    cp = self._hex4()
                    if 0xD800 <= cp < 0xDC00 and self._get() == 92 and self._get() == 117:
                        cp = 0x10000 + (cp - 0xD800 << 10) + self._hex4() - 0xDC00
                    self.out = chr(cp).encode()
                else:   # a character: no heap object (the body's keys are all \" ... \")
                    buf[n] = _ESC[e]
                    n += 1
            else:
                buf[n] = c
                n += 1
        return n

    def ioctl(self, req, arg):
        return 0


_ESC = {34: 34, 92: 92, 47: 47, 98: 8, 102: 12, 110: 10, 114: 13, 116: 9}


def _skip(f, c):
    """The next character of `f` that is not white space (c: a bytearray(1))."""
    while f.readinto(c):
        if c[0] not in b" \t\r\n":
            return c[0]
    return -1


def _envelope(f):
    """(the mac, the offset of the body's first character) of the envelope in stream `f`."""
    c = bytearray(1)
    mac = body = None
    if _skip(f, c) != 123:   # {
        raise ValueError
    while True:
        k = _skip(f, c)
        if k == 125:   # }
            return mac, body
        if k == 44:   # ,
            continue
        if k != 34:
            raise ValueError
        ks = _Str(f)
        key = bytearray(8)
        key = key[:ks.readinto(key)]   # "v", "body", "mac": short keys; the rest of a longer one goes
        while ks.readinto(c):
            pass
        if _skip(f, c) != 58:   # :
            raise ValueError
        v = _skip(f, c)
        if v == 34:
            s = _Str(f)
            if key == b"body":
                body = f.tell()
            if key == b"mac":
                m = bytearray(80)
                mac = bytes(m[:s.readinto(m)])
            buf = bytearray(32)
            while s.readinto(buf):   # to the string's end
                pass
        else:   # a number ("v"), or a key of a later version: to the next , or } at this level
            depth = 0
            while v != -1 and (depth or v not in (44, 125)):
                if v == 34:
                    while _Str(f).readinto(c):
                        pass
                elif v in (91, 123):   # [ {
                    depth += 1
                elif v in (93, 125):
                    depth -= 1
                v = f.readinto(c) and c[0] or -1
            f.seek(-1, 1)


def node_key():
    """The node's key (32 bytes) from node.key (hex, written by `meetkit provision`), or None."""
    import binascii
    try:
        with open(KEY_FILE) as f:
            k = binascii.unhexlify(f.read().strip())
    except (OSError, ValueError):
        return None
    return k if len(k) >= 16 else None


def verify(f, node_id):
    """(body, None) for the envelope in stream `f` (a file, or io.BytesIO of a message) signed with
    this node's key and naming this node, else (None, reason). The body is hashed, then parsed,
    from the stream: never whole in the heap. (json.load of a Python stream makes a small heap
    object per character: the garbage is gone at the next collection, but what the parse keeps lies
    scattered among it; otaoffer keeps copies of the manifest's strings for that reason.)"""
    try:
        mac, at = _envelope(f)
        if mac is None or at is None:
            raise ValueError
    except (ValueError, KeyError, TypeError, IndexError, OSError):
        return None, "not a signed message"
    key = node_key()
    if key is None:
        return None, "no node key on the flash (%s): provision the node again" % KEY_FILE
    import binascii
    f.seek(at)
    try:
        want = binascii.hexlify(hmac_sha256(key, _Str(f)))
    except (ValueError, KeyError):
        return None, "not a signed message"
    diff = len(want) ^ len(mac)
    for i in range(min(len(want), len(mac))):   # the same time for every wrong MAC
        diff |= want[i] ^ mac[i]
    if diff:
        return None, "bad mac"
    f.seek(at)
    try:
        body = json.load(_Str(f))
    except (ValueError, KeyError):
        body = None
    if not isinstance(body, dict):
        return None, "not a signed message"
    if body.get("node") != node_id:
        return None, "another node's"
    return body, None


def handle(host):
    """The next message from the gateway in host.inbox, then the events that wait. An offer takes
    two passes of the loop: one writes it to flash, one OFFER_PAUSE_MS later takes it (each with
    its own flash erases): the loop reads the audio in between (the I2S DMA holds 107 ms; both at
    once stalled it longer)."""
    wait = False
    try:
        if host.dropped_msgs:
            console.warn("mgmt: %d messages from the gateway dropped: they came while two waited"
                         % host.dropped_msgs)
            host.dropped_msgs = 0
        if host.inbox:
            import time
            topic, msg = host.inbox[0]
            kind = topic[len(host.uplink.base):]
            if msg is None and time.ticks_diff(time.ticks_ms(), host.offer_due) < 0:
                wait = True   # the offer on flash, not yet taken
                return
            host.inbox.pop(0)
            try:
                if msg is not None and kind == b"ota":   # 4 KB: on flash, out of the heap before it is read
                    with open(OFFER_FILE, "wb") as f:
                        f.write(msg)
                    msg = None
                    host.inbox.insert(0, (topic, None))   # read from the file at the next pass, a character at a time
                    host.offer_due = time.ticks_add(time.ticks_ms(), OFFER_PAUSE_MS)
                    wait = True
                    return
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
        if wait:
            flush(host)
            return
        try:
            import os
            os.remove(OFFER_FILE)   # taken (new/ota.json) or refused
        except OSError:
            pass
        import sys
        if "otaoffer" in sys.modules:
            del sys.modules["otaoffer"]
        if host.ota is None and host.after is None:
            for m in ("mgmt", "cfgapply", "cfgtrial", "otaoffer", "ota"):
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
    buf = None
    if msg is None:
        import gc
        gc.collect()
        buf = bytearray(1024)   # the download's, before the parse leaves the heap in pieces
        with open(OFFER_FILE, "rb") as f:
            body, why = verify(f, host.cfg["node_id"])
    else:
        body, why = verify(io.BytesIO(msg), host.cfg["node_id"])
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
        otaoffer.offer(host, body, OFFER_FILE, buf)
    elif body.get("cmd") == "selftest" and _id(body) is not None:
        _answer(host, body, {"kind": "selftest", "checks": console.checks()})
    elif body.get("cmd") == "selftest":   # the answer names the command it answers
        _answer(host, body, {"kind": "cmd", "state": "refused", "reason": "selftest without an id"})
    else:
        console.warn("cmd: %r is not a command of this firmware" % (body.get("cmd"),))
        _answer(host, body, {"kind": "cmd", "state": "refused", "reason": "unknown command %r" % (body.get("cmd"),)})


def _id(body):
    """The command's id, when it is one the gateway takes (an integer from 0 to 2**30 - 1), else None."""
    i = body.get("id")
    return i if type(i) is int and 0 <= i < 1 << 30 else None


def _answer(host, body, ev):
    """An answer to a command, with its id when it has one (never null: the gateway rejects it)."""
    i = _id(body)
    if i is not None:
        ev["id"] = i
    event(host, ev)
