# The network (Wi-Fi, or Ethernet on a board whose board.json says net.type "lan") and MQTT.
# Nothing here blocks the measuring for long: the network is started and polled, umqtt's socket
# waits 5 s at most (mqttwait.py: a gateway gone silent), the broker is tried with jittered
# exponential backoff (capped at 60 s; it starts again only after a connection that held a minute:
# _fail), and any socket error drops the connection, to be tried again later. What was not sent
# stays with the caller.
# The gateway's acknowledgements arrive on <prefix>/<node>/ack (QoS 1, clean session: while the
# node is away they are lost, and it sends those records again); its configuration, release offers
# and their pieces, and commands on config, ota, ota/chunk and cmd (docs/payload.md, "Running the
# fleet"). Each message goes to `on_msg(topic, msg)` as it comes, which may be in the middle of a
# publish (umqtt reads what arrives while it waits for a PUBACK): the node only keeps it there.
# What the node says on <prefix>/<node>/event waits in `events` while the broker is away (mgmt.py
# publishes them: its code is loaded only for the fleet's messages).
# With broker.tls the connection is TLS, the broker's certificate checked against the lab CA
# (ca.der on the flash) and the host name: no CA, no uplink, never a fallback to plaintext.
# `broker` may be a list (the home gateway's first): failover.py, loaded only when a switch to
# another or a try of the home broker is due, moves between them; here only the index of the one in
# use (`via`, in the status) and two timers.
import sys
import time
import random
import network
import console
from umqtt.simple import MQTTException

_WIFI_RETRY_MS = 20000
_BACKOFF_MIN_MS = 1000
_BACKOFF_MAX_MS = 60000
_POLL_MS = 1000         # how often to look for messages (every pass of the loop in a hurry)
_TOPICS = ("ack", "config", "ota", "ota/chunk", "cmd")   # an older broker ACL may refuse all but ack
NET_TIMEOUT_MS = 30000  # the self-test's network item fails after this long without a link


class Uplink:
    def __init__(self, cfg, meta, net, on_msg):
        """net: board.json's net section as config.load_board passed it (None: unusable);
        on_msg(topic, msg): takes each message (bytes) from the gateway; meta: fw, boot, mode
        ("normal", "trial", "safe") and cfg (the configuration's version), for the status."""
        self.wifi = cfg["wifi"]
        self.brokers = cfg["brokers"]
        self.broker = cfg["broker"]   # the one in use: brokers[via]
        self.via = 0
        self._fo_ms = cfg["failover_after_s"] * 1000
        self._fb_ms = cfg["failback_every_s"] * 1000
        self.switches = 0   # failovers and returns home
        self.lan = net is not None and net["type"] == "lan"
        self.node_id = cfg["node_id"]
        prefix = cfg["topic_prefix"]
        self.base = "%s/%s/" % (prefix, self.node_id)
        self.topic_up = self.base + "up"
        self.topic_status = self.base + "status"
        self._on_msg = on_msg
        self.events = []   # JSON texts for <prefix>/<node>/event (mgmt.py sends them)
        self.meta = meta  # fw, boot, mode, cfg: repeated in the status message
        self.client = None
        self.enabled = net is not None and (self.lan or self.wifi is not None) and self.broker is not None
        if net is None:
            console.check("network", False, "board.json: the net section cannot be used: no uplink")
        elif not self.lan and self.wifi is None:
            console.check("network", False, "config.json has no wifi.ssid: no uplink")
        if self.broker is None:
            console.check("broker", False, "config.json has no usable broker section: no uplink")
        self.ssl = None
        if self.enabled and self.broker["tls"]:
            self.ssl = _tls_context(self.broker["ca"])
            self.enabled = self.ssl is not None
        self.iface = None
        if self.enabled:
            if self.lan:
                from lan import start   # only an Ethernet board needs it
                self.iface = start(net)
            else:
                self.iface = network.WLAN(network.STA_IF)
            self.enabled = self.iface is not None
        self._link = False
        # _lost: since when the broker in use is not connected (None: it is); _fb: the last try home
        self._down_since = self._lost = self._fb = time.ticks_ms()
        self._net_ok = None     # the self-test's network result so far
        self._wifi_try = None
        self._next_try = time.ticks_ms()
        self._backoff = _BACKOFF_MIN_MS
        self._last_tx = 0
        self._last_poll = 0
        self.connects = 0
        self.failures = 0
        self.oom = 0   # connections lost to a MemoryError (ota.py then asks smaller pieces)

    def rssi(self):
        try:
            return self.iface.status("rssi") if self.iface and not self.lan and self.iface.isconnected() else None
        except (OSError, ValueError):
            return None

    def network_up(self):
        return self.enabled and self.iface.isconnected()

    def service(self, now, up_s, hurry=False):
        """Move the connection along; call often. Returns True while the broker is connected.
        Messages are looked for once a second, on every call when `hurry` (a piece of a release
        is awaited)."""
        if not self.enabled:
            return False
        if not self.iface.isconnected():
            if self._link:
                self._link = False
                self._down_since = now
                if self.client is not None:
                    console.warn("%s: link lost" % ("ethernet" if self.lan else "wifi"))
                    self._drop()
            if self._net_ok is not False and time.ticks_diff(now, self._down_since) >= NET_TIMEOUT_MS:
                self._net_ok = False
                console.check("network", False, _explain("why_down", self, now) or "no link")
            if self.lan:   # the Ethernet driver brings the link up by itself
                return False
            if self._wifi_try is None or time.ticks_diff(now, self._wifi_try) >= _WIFI_RETRY_MS:
                retry = self._wifi_try is not None
                self._wifi_try = now
                try:
                    self.iface.active(True)
                    if retry:  # the ESP32 refuses connect() while an attempt is under way
                        self.iface.disconnect()
                    self.iface.connect(self.wifi["ssid"], self.wifi["password"])
                except OSError as e:
                    console.warn("wifi: connect: %r" % e)
            return False
        if not self._link:
            self._link = True
            self._lost = now   # the failover clock runs only while the network is up
            if self._net_ok is not True:
                self._net_ok = True
                ip = self.iface.ifconfig()[0]
                console.check("network", True, "ethernet %s" % ip if self.lan else
                              "wifi %s %s %s dBm" % (self.wifi["ssid"], ip, self.rssi()))
        if self.client is None:
            if len(self.brokers) > 1 and time.ticks_diff(now, self._lost) >= self._fo_ms:
                self._failover(now, up_s)
            if time.ticks_diff(now, self._next_try) >= 0:
                self._connect(now, up_s)
            return self.client is not None
        if self.via and time.ticks_diff(now, self._fb) >= self._fb_ms:
            self._failover(now, up_s)
            return self.client is not None
        # ping after 3/4 of the keepalive without sending: not at all while records go every minute
        keepalive_ms = self.broker["keepalive"] * 750
        if time.ticks_diff(now, self._last_tx) >= keepalive_ms:
            try:
                self.client.ping()
                self.client.check_msg()
                self._last_tx = now
            except (OSError, IndexError, MemoryError) as e:
                self._fail(now, "ping", e)
        elif hurry or time.ticks_diff(now, self._last_poll) >= _POLL_MS:
            self._last_poll = now
            try:
                self.client.check_msg()
            except (OSError, IndexError, MemoryError) as e:
                # MemoryError: a message too big for the heap as it is; it is lost (clean session)
                self._fail(now, "receive", e)
        return self.client is not None

    def _failover(self, now, up_s):
        try:
            import failover   # loaded when a step is due, dropped after (failover.py)
        except MemoryError:   # no room for it in the heap just now: again in 10 s, never a reset
            console.warn("mqtt: failover put off 10 s: no memory to load it")
            if self.client is None:
                self._lost = time.ticks_add(now, 10000 - self._fo_ms)
            else:
                self._fb = time.ticks_add(now, 10000 - self._fb_ms)
            return
        failover.step(self, now, up_s)

    def _connect(self, now, up_s):
        b = self.broker
        where = "%s:%d%s" % (b["host"], b["port"], " (tls)" if self.ssl else "")
        import mqttwait   # node.main() loaded it after the start, where its heap fits
        c = mqttwait.Client(self.node_id, b["host"], port=b["port"], user=b["user"],
                            password=b["password"], keepalive=b["keepalive"], ssl=self.ssl)
        c.set_last_will(self.topic_status, '{"v":1,"node":"%s","online":false}' % self.node_id,
                        retain=True, qos=1)
        c.set_callback(self._on_msg)
        try:
            c.connect()
            for t in _TOPICS:
                self._subscribe(c, t)
            self.client = c
            self._last_tx = now
            self._lost = None
            self._status(up_s)
        except (OSError, IndexError, ValueError, AssertionError, MQTTException, MemoryError) as e:
            # IndexError: a closed socket; ValueError: the TLS layer refused the certificate;
            # AssertionError: no CONNACK (a TLS port without broker.tls?); MQTTException: refused
            try:
                c.sock.close()
            except Exception:
                pass
            # a refusal or a certificate in words (upwhy.py); a socket's error as it is
            why = isinstance(e, (ValueError, AssertionError, MQTTException)) and _explain("why", e) or repr(e)
            console.check("broker", False, "%s:%d: %s" % (b["host"], b["port"], why))
            self._fail(now, "connect " + where, why, isinstance(e, (ValueError, MQTTException)))
            return
        self.connects += 1
        self._next_try = now   # while connected: since when (_fail)
        console.info("mqtt: connected to " + where)
        console.check("broker", True, "%s:%d (%s) as %s" % (b["host"], b["port"], "tls" if self.ssl else "plain",
                                                           b["user"] or "anonymous"))

    def _subscribe(self, c, t):
        try:
            # acks at QoS 0: on a clean session QoS 1 saves none that is lost, and costs 6 bytes each
            c.subscribe(self.base + t, qos=0 if t == "ack" else 1)
        except MQTTException:   # refused (0x80): the broker's ACL predates remote management
            if t == "ack":
                raise
            console.warn("mqtt: the broker refused %s%s: no remote management (update its ACL)" % (self.base, t))

    def _status(self, up_s):
        rssi = self.rssi()
        m = self.meta
        msg = '{"v":1,"node":"%s","boot":%d,"online":true,"fw":"%s","up":%d,"rssi":%s,"mode":"%s","cfg":%d,"via":%d,"held":%d}' % (
            self.node_id, m["boot"], m["fw"], up_s, "null" if rssi is None else rssi, m["mode"], m["cfg"], self.via,
            m.get("held", 0))
        self.client.publish(self.topic_status, msg, retain=True, qos=1)

    def publish(self, payload, now):
        """Send one batch with QoS 1. True when the broker took it."""
        if self.client is None:
            return False
        try:
            self.client.publish(self.topic_up, payload, qos=1)
        except (OSError, IndexError, MemoryError) as e:   # MemoryError: a message read half (umqtt)
            self._fail(now, "publish", e)
            return False
        self._last_tx = now
        return True

    def _drop(self):
        if self.client is not None:
            try:
                self.client.sock.close()
            except Exception:
                pass
        self.client = None

    def _fail(self, now, what, err, fatal=False):
        self.failures += 1
        if isinstance(err, MemoryError):
            self.oom += 1
        # The backoff starts again only after a connection that held a minute (or so long that the
        # ticks wrapped), not at each connect: one that fails at once, the same way each time (a
        # message too big for the heap, sent again on the new connection), is tried ever less often.
        if self.client is not None and not 0 <= time.ticks_diff(now, self._next_try) < _BACKOFF_MAX_MS:
            self._backoff = _BACKOFF_MIN_MS
        self._drop()
        if self._lost is None:
            self._lost = now
        # Full jitter on an exponential backoff: a street of nodes does not reconnect in step.
        wait = self._backoff // 2 + random.getrandbits(16) % (self._backoff // 2 + 1)
        self._next_try = time.ticks_add(now, wait)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_MS)
        # fatal: retrying alone will not help (a certificate, a password): someone must act
        (console.error if fatal else console.warn)("mqtt: %s failed (%s); next try in %d s"
                                                   % (what, err if isinstance(err, str) else repr(err), wait // 1000))



def _explain(name, *args):
    """A failure's reason from upwhy.py, loaded for it and dropped after (its texts are heap the
    node needs); None when there is no room to load it just now."""
    try:
        import upwhy
    except MemoryError:
        return None
    try:
        return getattr(upwhy, name)(*args)
    finally:
        del sys.modules["upwhy"]


def _tls_context(ca_path):
    """An SSLContext that trusts only the lab CA (ca_path, DER) and checks the broker's host name,
    or None with the reason on the console (upwhy.tls_context). Made once: the parsed CA stays."""
    import upwhy   # at the start (or a failover's switch): no room for it is the start's failure
    try:
        return upwhy.tls_context(ca_path)
    finally:
        del sys.modules["upwhy"]
