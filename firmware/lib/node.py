# The node's main loop: measure continuously, close a record per interval, spool it, send batches.
# The loop is paced by the microphone's blocking I2S reads (about 21 ms of audio each); without a
# microphone it sleeps for the same time. Everything else is polled between two reads and never
# blocks for long, so the audio keeps flowing while sensors are read and batches are sent.
#
# What survives what (docs/reliability.md): a record is on flash (spool.py) before anything tries
# to send it and leaves the spool's unacknowledged part only when the gateway says it committed
# it. What goes out when, and what an acknowledgement does: outbox.py. Here: the batch's JSON.
#
# Running the fleet (docs/payload.md): the gateway's configuration, release offers and commands
# wait in `inbox` for the loop, which hands one at a time to mgmt.py (loaded for it, dropped after);
# an accepted release is fetched by ota.py, a step per pass; after an update, a rollback or a crash
# aftercare.py does what the start owes the gateway. None of them is loaded at a plain start.
import gc
gc.collect()  # first, while the heap is still in one piece, the large buffers, in one block: once the
_BATCH_BYTES = const(1800)  # modules are compiled, the heap is fragmented and may not have 5 KB in one piece
_MEM = memoryview(bytearray(_BATCH_BYTES + 512 + 5120 + 3840))
_BUF = _MEM[:_BATCH_BYTES + 512]  # a batch (under about 2 KB)
_HIST = _MEM[_BATCH_BYTES + 512:_BATCH_BYTES + 512 + 5120]  # the noise histogram (soundlevel.NB uint32)
_AUDIO = _MEM[_BATCH_BYTES + 512 + 5120:]  # a block of audio (20 ms, 960 32-bit samples)
import sys
import time
import machine
from micropython import const
import console
import soundlevel   # the largest compile (the noise kernel) first, while the heap is emptiest;
del soundlevel      # sample_noise takes it from sys.modules
# The rest is imported by nodestart.py once config.py and boardfile.py, needed only at the start,
# have been compiled, used and dropped; the samplers only where the board has the sensor (heap).
recline = recv2 = None   # modules: recline set by nodestart.py, recv2 by _v2() (payload v2)

# well past the slowest blocking step: a TLS connect on a bad link, each of its socket calls 5 s at most (mqttwait.py)
_WDT_MS = const(90000)
# After a Ctrl-C (a technician's mpremote): the ESP32's watchdog cannot be stopped, only given
# a longer timeout. Long enough to work at the REPL, short enough that a node left interrupted
# starts measuring again by itself (docs/technician.md, "The watchdog and the REPL").
_TECH_WDT_MS = const(30 * 60 * 1000)
_ACK_LATE_MS = const(30000)  # a batch unacknowledged for longer: the status LED says "not delivering"


class Node:
    # made and filled by nodestart.py (the start's code is dropped after)
    # -- intervals ---------------------------------------------------------------------------
    def _up_ms(self, now):
        return self.up_s * 1000 + time.ticks_diff(now, self._sec_mark)

    def _set_anchor(self, now):
        t = self.clock.unix_ms()
        if t is None or self.anchor is not None:
            return
        self.anchor = t - self._up_ms(now)
        self.outbox.env_sent = []   # the envelope again, with t0: shorter times in the records
        try:
            self.spool.set_anchor(self.boot, self.anchor)
        except OSError as e:
            console.error("spool: anchor: %r" % e)

    def _start_interval(self, now):
        self.iv_t0 = now
        self.iv_up = (self._up_ms(now) + 500) // 1000
        self._align(now, 0)

    def _align(self, now, elapsed_ms):
        # Set the interval's timestamp and deadline: on the UTC grid when the clock is known.
        iv = self.iv_s
        t = self.clock.unix_ms()
        if t is None:
            self.iv_ts = None
            self.iv_deadline = time.ticks_add(self.iv_t0, iv * 1000)
            return
        start_ms = t - elapsed_ms
        r = start_ms % (iv * 1000)
        if r < 2000:
            start_ms -= r  # just past a grid line: the interval starts on it
        elif iv * 1000 - r < 2000 and not elapsed_ms:
            start_ms += iv * 1000 - r  # just before one: start there, not a sliver of an interval
        start = start_ms // 1000
        self.iv_ts = start
        left_ms = (start // iv + 1) * iv * 1000 - t
        self.iv_deadline = time.ticks_add(now, max(left_ms, 0))

    def _close_interval(self, now):
        dur = (time.ticks_diff(now, self.iv_t0) + 500) // 1000
        parts = []
        flags = {}
        errs = {}
        ctx = {"dur": dur, "dur_ms": time.ticks_diff(now, self.iv_t0), "rh_high": self.cfg["rh_high_pct"],
               "rh_max": self.climate.rh_max() if self.climate else None}
        for s in self.samplers:
            s.fill(parts, flags, errs, ctx)
        first = self.keys is None
        if first:
            self.keys = recline.keys_of(parts)
            # what a record's JSON adds to its bytes on flash (key names, numbers as text)
            self._extra = 24 + sum(len(k) + 20 for k in self.keys)
        rec = recline.record(self.boot, self.seq, self.iv_ts, self.iv_up, dur, parts, flags, errs, self.keys)
        self.seq += 1
        self._start_interval(now)
        try:
            if first:
                self.spool.begin_boot(self.boot, self.envelope, self.keys)
            pos, end = self.spool.append(rec)
        except OSError as e:  # flash failing: count it and go on measuring
            self.spool_errors += 1
            console.error("spool: record %d not stored: %r" % (self.seq - 1, e))
            return
        console.info("record %d: %s" % (self.seq - 1, recline.to_json(rec, self.keys, None)))
        self.outbox.add(pos, end, self.seq - 1, recline.pack(rec, None))   # kept compact while it waits
        if self.restart_why:   # the interval is on flash: nothing is lost by the restart
            self.spool.save(now, True)
            console.info("restarting: %s" % self.restart_why)
            machine.reset()

    # -- sending: the outbox chooses the records, this makes them a batch -----------------------------
    def _publish(self, boot, lines, now):
        # One batch of records of `boot`, as many as fit; returns how many went out (0: none).
        if boot == self.boot:
            env, keys, anchor = self.envelope, self.keys, self.anchor
        else:
            env, keys, anchor = self.spool.boot_info(boot)
            if env is None:  # its file is gone: this boot's envelope with the old boot number
                env = self.envelope.replace('"boot":%d,' % self.boot, '"boot":%d,' % boot)
            keys = keys or self.keys
        # Into one buffer allocated at start: a fragmented heap may no longer have 2 KB in one piece.
        buf = _BUF
        if recv2 is not None:   # payload v2 (config `payload` 2)
            return recv2.publish(self, buf, boot, lines, env, keys, anchor, now)
        mv = memoryview(buf)
        head = env.encode() + b'"dropped":%d,"recs":[' % self.spool.dropped
        i = len(head)
        mv[:i] = head
        n = 0
        for line in lines:
            r = recline.to_json(line, keys, anchor).encode()
            if n and i + len(r) + 3 > len(buf):
                break
            if n:
                buf[i] = 44  # ,
                i += 1
            mv[i:i + len(r)] = r
            i += len(r)
            n += 1
        mv[i:i + 2] = b"]}"
        if not self.uplink.publish(mv[:i + 2], now):
            return 0
        return n

    # -- the loop --------------------------------------------------------------------------------
    def step(self):
        if self.noise:
            self.noise.read()
        else:
            time.sleep_ms(20)
        now = time.ticks_ms()
        while time.ticks_diff(now, self._sec_mark) >= 1000:
            self._sec_mark = time.ticks_add(self._sec_mark, 1000)
            self.up_s += 1
            if console.pending:
                console.flush()
            if self.after:
                self.after.step(self, self.outbox.acked)
        if self.pm:
            self.pm.poll(now)
        if self.climate:
            self.climate.poll(now)
        closed = time.ticks_diff(now, self.iv_deadline) >= 0
        if closed:
            self._close_interval(now)
        outbox = self.outbox
        ota = self.ota
        self.uplink.meta["held"] = self.spool.held   # for the status at the next connection
        up = self.uplink.service(now, self.up_s, ota is not None and ota.waiting())
        if ota and not closed:   # one flash write per pass: a record's or a piece's
            ota.step(now, up)
        if self.inbox or up and self.uplink.events:
            import mgmt   # dropped again by itself
            mgmt.handle(self)
        if up:
            if self.clock.due(now) and self.clock.sync(now):
                self._synced(now)
            # what a record's payload text adds to its bytes on flash: v2's a third of v1's
            outbox.send(now, self.uplink.connects, self.anchor is not None,
                        self._extra if recv2 is None else self._extra // 3)
        elif not self.clock.synced and self.uplink.network_up() and self.clock.due(now):
            if self.clock.sync(now):
                self._synced(now)
        if self.spool.dirty:
            self.spool.save(now)
        if self.led:
            self.led.update(now, console.failing, outbox.acked and self.uplink.client is not None
                            and outbox.waited(now) < _ACK_LATE_MS)

    # -- the gateway's messages (docs/payload.md, "Running the fleet") ------------------------------
    def _msg(self, topic, msg):
        # umqtt's callback, maybe in the middle of a publish: only keep the message.
        if topic.endswith(b"/ack"):
            self.outbox.take_ack(topic, msg)
        elif topic.endswith(b"/chunk"):
            if self.ota:
                self.ota.take(msg)
        elif len(self.inbox) < 2:   # an offer is 4 KB: more would be a heap the node needs
            self.inbox.append((topic, msg))
        else:
            self.dropped_msgs += 1

    def _synced(self, now):
        self._set_anchor(now)
        if self.iv_ts is None:
            self._align(now, time.ticks_diff(now, self.iv_t0))

    def run(self):
        wdt = machine.WDT(timeout=_WDT_MS)
        try:
            while True:
                self.step()
                wdt.feed()  # only after a whole pass of the loop: a hang anywhere resets the node
        except KeyboardInterrupt:   # Ctrl-C: a technician at the REPL (mpremote)
            machine.WDT(timeout=_TECH_WDT_MS)   # on the ESP32 this sets the running watchdog's timeout
            console.warn("interrupted: the REPL is yours for %d min; then the watchdog resets the node "
                         "(machine.reset() sooner)" % (_TECH_WDT_MS // 60000))
            raise


def _v2(node):
    # payload v2's module, compiled once the start's code is gone, in its room: at the first
    # connection, with a backlog's records or TLS's buffers in the heap, it might not fit.
    global recv2
    if node.cfg["payload"] == 2:
        try:
            import recv2
        except MemoryError:   # from source only (a board's .mpy loads): payload v1, which gateways take
            console.warn("payload v1: no memory to load recv2")
        gc.collect()


def main():
    # The start (nodestart.py: the configuration, the modules this board needs, the Node made) is
    # compiled, run once and dropped: its code is heap the loop needs. What escapes the start, or the
    # loop before its first record (but a MemoryError), goes to main.py's crash handler (crash.py:
    # reported, counted, a trial failed, safe mode after 3 in a row): a failure at every start must
    # not reset for ever. Else the node resets and measures again, reported, not counted: a
    # MemoryError at a tight heap must not put a node that can measure in safe mode (which does not).
    import nodestart
    made = nodestart.start()   # None: the board cannot measure; the REPL stays for the technician
    if made is None:
        return
    try:
        node = nodestart.make(*made)
        made = nodestart = None
        del sys.modules["nodestart"]
        gc.collect()
        import mqttwait   # uplink.py's, compiled here: in the room the start's code left, before recv2
        _v2(node)
        made = False   # the loop: a MemoryError there is the heap's state (a backlog, a download), not counted
        node.run()
    except Exception as e:
        if made is not False or not node.seq and not isinstance(e, MemoryError):   # a crash
            raise
        node = None
        try:
            __import__("crash").died(e, 0)   # the report, a 10 s wait
        except Exception:   # no heap for the report: the reset all the same
            pass
        machine.reset()
