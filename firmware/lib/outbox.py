# The node's outbox: which spooled records go out next, which batches wait for the gateway's
# acknowledgement, and what an acknowledgement moves on the spool (docs/reliability.md).
#
# - New records (`add`, called once each is on flash) go out first, in batches, once the boot's
#   clock is known; at most _LIVE_MAX wait here, older ones are left to the backlog.
# - The backlog is every record on flash that is not acknowledged, not in flight and not waiting
#   here as new: read from the spool oldest-first, one batch per _BACKLOG_GAP_MS.
# - At most _INFLIGHT_MAX batches wait for their acknowledgement. One not acknowledged within
#   _ACK_WAIT_MS is forgotten and its records go out again with the backlog (the gateway stores a
#   boot and seq once). A new MQTT session forgets them all: the node's session is clean, so the
#   old one's acknowledgements are lost.
# - An acknowledgement names one boot and ranges of seqs. Records of batches in flight that it
#   covers are acknowledged on the spool; anything else in it (a late one, another boot's, a seq
#   never sent) changes nothing. A region's gateway adds `safe`, a (boot, seq) pair: the spool's
#   safe position moves over the acknowledged records it covers (a lone gateway's acknowledgement
#   is safe by itself). A database id other than the last one means the gateway lost what it had,
#   or is another one: what is not safe is sent again (spool.py).
# The outbox knows nothing of MQTT or of the batch's JSON: the node hands it `publish(boot, lines,
# now)`, which sends what fits of the record lines in one batch and returns how many (0: nothing
# went out). The tests (tests/firmware/test_outbox.py) hand it their own. The node calls send()
# on every pass of its loop while the broker is connected: it takes the acknowledgements that
# arrived, and returns at once when nothing is due. Few methods: each costs about 70 bytes of heap
# on the ESP32.
from micropython import const
import json
import time
import console
import recline

_LIVE_MAX = const(8)            # new records waiting to be sent first; older ones are the backlog's
_INFLIGHT_MAX = const(4)        # batches sent and not yet acknowledged
_ACK_WAIT_MS = const(120000)    # a batch not acknowledged by then is sent again (the gateway de-duplicates)
_BACKLOG_GAP_MS = const(2000)   # the backlog drains at most one batch per this
_ACKS_MAX = const(16)           # acknowledgements kept until send(); past it the oldest is dropped

# A new record is a tuple (pos, end, seq, line), pos and end its place on the spool; in flight it
# keeps (pos, end, seq). A batch in flight is a list [sent ticks, boot, records]: a list and
# constants cost nothing over the bare list (a class would cost its instances' dicts).
_POS = const(0)
_END = const(1)
_SEQ = const(2)
_LINE = const(3)
_SENT = const(0)
_BOOT = const(1)
_RECS = const(2)


class Outbox:
    def __init__(self, spool, boot, room, publish, now, batch=1):
        """room: bytes of record lines a batch may hold, each line counted with send()'s `extra`;
        batch: new records go out when this many wait (config batch_records, for metered links)."""
        self._batch = batch
        self._spool = spool
        self._boot = boot
        self._room = room
        self._publish = publish
        self._live = []
        self._inflight = []
        self._scan = 0          # where the backlog reader goes on (0: from the spool's cursor)
        self._tick = now        # the last backlog step
        self._session = 0
        self._acks = []
        self.env_sent = []      # boots whose envelope went out in this session (payload v2)
        self.acked = False      # the gateway acknowledged a batch since the start

    # -- what the node tells it ---------------------------------------------------------------------
    def add(self, pos, end, seq, line):
        """A new record, on flash from pos to end."""
        live = self._live
        live.append((pos, end, seq, line))
        if len(live) > max(_LIVE_MAX, self._batch):  # an outage: the older ones wait in the backlog
            p = live.pop(0)[_POS]
            if self._scan > p:
                self._scan = p

    def waited(self, now):
        """How long (ms) the oldest batch in flight has waited for its acknowledgement; -1: none."""
        return time.ticks_diff(now, self._inflight[0][_SENT]) if self._inflight else -1

    # -- sending ------------------------------------------------------------------------------------
    def send(self, now, session, timed, extra):
        """Send a batch if one is due. session: the link's connection count (a new one forgets);
        timed: this boot's clock is known, so its records may go out; extra: what a record's JSON
        adds to its line (the batch's size is counted in lines plus extra each)."""
        acks = self._acks
        while acks:   # first: those of a session that just ended still count
            self._ack(acks.pop(0))
        if session != self._session:  # a new session: the old one's acknowledgements are gone
            self._session = session
            self._inflight = []
            self.env_sent = []
            self._scan = 0
        inflight = self._inflight
        live = self._live
        tick = time.ticks_diff(now, self._tick) >= _BACKLOG_GAP_MS
        due = len(live) >= self._batch and timed
        if not (tick or due and len(inflight) < _INFLIGHT_MAX):
            return   # most passes of the loop (50 a second)
        if tick:
            self._tick = now
            for b in inflight:
                if time.ticks_diff(now, b[_SENT]) >= _ACK_WAIT_MS:
                    inflight.remove(b)
                    self._scan = 0
                    break
        if len(inflight) >= _INFLIGHT_MAX:
            return
        room = self._room
        if due:   # new records first
            recs = []
            size = 0
            for r in live:
                size += extra + r[_END] - r[_POS]
                if recs and size > room:
                    break
                recs.append(r)
            n = self._publish(self._boot, [r[_LINE] for r in recs], now)
            if n:
                inflight.append([now, self._boot, [r[:_LINE] for r in recs[:n]]])
                del live[:n]   # only those sent: the rest go in the next batch
            return
        if not tick:
            return
        skip = {}
        for b in inflight:
            for r in b[_RECS]:
                skip[r[_POS]] = 1
        for r in live:
            skip[r[_POS]] = 1
        boot, lines, nxt = self._spool.read(self._scan, room, skip, self._boot, timed, extra)
        if boot is None:
            self._scan = nxt
            return
        n = self._publish(boot, [line for _, _, line in lines], now)
        if n:
            inflight.append([now, boot, [(p, e, recline.seq_of(line)) for p, e, line in lines[:n]]])
            # go on after the last record sent: those that did not fit come next
            self._scan = nxt if n == len(lines) else lines[n - 1][_END]

    # -- acknowledgements ---------------------------------------------------------------------------
    def take_ack(self, topic, msg):
        """umqtt's callback: an acknowledgement from the gateway. It can come in the middle of a
        publish (umqtt reads what arrives while it waits for the broker's PUBACK), so it waits here
        for send(); if more than _ACKS_MAX wait, the oldest goes (its records are sent again)."""
        acks = self._acks
        if len(acks) >= _ACKS_MAX:
            acks.pop(0)
        acks.append(msg)

    def _ack(self, msg):
        """{"db": id, "boot": b, "seq": [[first, last], ...]}: what the gateway's database holds; with
        "safe": [b, s] (or []) from a region's gateway, what of it is in the region's store, also
        alone ({"db": id, "safe": [b, s]}, docs/payload.md "Safe in the region")."""
        try:
            a = json.loads(msg)
            db, safe = a["db"], a.get("safe")
            if safe is None or "seq" in a or "boot" in a:
                boot, ranges = a["boot"], a["seq"]
            else:   # a standalone safe acknowledgement: the region's store caught up
                boot, ranges = None, ()
            for r in ranges:   # checked here: a bad range must not stop the node half-way
                if type(r) is not int and (len(r) != 2 or type(r[0]) is not int or type(r[1]) is not int):
                    raise ValueError
            if type(db) is not str or safe is not None and (type(safe) is not list or safe and (
                    len(safe) != 2 or type(safe[0]) is not int or type(safe[1]) is not int)):
                raise ValueError
        except (ValueError, KeyError, TypeError, IndexError):
            console.warn("ack: not understood: %r" % msg[:60])
            return
        if not self.acked and boot is not None and ranges:
            self.acked = True
            console.check("gateway", True, "first batch stored (db %s)" % db)
        spool = self._spool
        old = spool.set_db(db, time.ticks_ms())
        if old is not None:
            console.warn("gateway database changed (%s -> %s): sending again %d records not yet safe%s" % (
                old, db, spool.held, "" if spool.region else " (all the spool holds)"))
            self._inflight = []
            self.env_sent = []
            self._scan = 0
        if a.get("env"):   # the gateway does not know this boot's envelope: resend with it, soon
            if boot in self.env_sent:
                self.env_sent.remove(boot)
            self._inflight = [b for b in self._inflight if b[_BOOT] != boot]
            self._scan = 0
        if (safe is not None) != spool.region:
            import safepos
            safepos.region(spool, safe is not None)
        n = 0
        for b in self._inflight:
            if b[_BOOT] != boot:
                continue
            keep = []
            for r in b[_RECS]:
                s = r[_SEQ]
                for lo_hi in ranges:   # [first, last], or one seq (the ack of a v2 batch)
                    if lo_hi == s if type(lo_hi) is int else lo_hi[0] <= s <= lo_hi[1]:
                        spool.ack(r[_POS], r[_END])
                        n += 1
                        break
                else:
                    keep.append(r)
            b[_RECS] = keep
        self._inflight = [b for b in self._inflight if b[_RECS]]
        if n:   # each record once: what the gateway committed (`meetkit sim run` adds these up)
            console.info("ack: %d stored by the gateway" % n)
        if safe:   # after this acknowledgement's records: the pair covers those acknowledged up to now
            import safepos
            safepos.advance(spool, safe[0], safe[1])
