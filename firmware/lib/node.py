# The node's main loop: measure continuously, close a record per interval, send batches.
# The loop is paced by the microphone's blocking I2S reads (about 21 ms of audio each); without a
# microphone it sleeps for the same time. Everything else is polled between two reads and never
# blocks for long, so the audio keeps flowing while sensors are read and batches are sent.
import gc
import json
import sys
import time
import machine
import console
import config
from clock import Clock
from uplink import Uplink
from samplers import PM, Climate, Noise

BOOT_FILE = "boot.count"
MAX_QUEUED = 20         # records kept in RAM while the uplink is down (the flash spool replaces this)
BATCH_BYTES = 1800      # a batch stays under about 2 KB
WDT_MS = 90000          # longer than the slowest blocking step (an MQTT connect on a bad link)


def next_boot():
    """Persisted boot counter: read, add one, write atomically (rename), return."""
    n = 0
    try:
        with open(BOOT_FILE) as f:
            n = int(f.read()) + 1
    except (OSError, ValueError):
        pass
    with open(BOOT_FILE + ".new", "w") as f:
        f.write(str(n))
    import os
    os.rename(BOOT_FILE + ".new", BOOT_FILE)
    return n


class Node:
    def __init__(self, cfg, board, boot):
        now = time.ticks_ms()
        self.cfg = cfg
        self.boot = boot
        self.iv_s = cfg["interval_s"]
        self.samplers = []
        self.pm = self.climate = self.noise = None
        sensors = {}
        if "pm" in board:
            self.pm = self._make("pm", lambda: PM(board["pm"], now))
        if "climate" in board:
            self.climate = self._make("climate", lambda: Climate(board["i2c"], board["climate"],
                                                                 cfg["climate_every_s"], now))
        if "mic" in board:
            self.noise = self._make("mic", lambda: Noise(board["mic"], cfg["noise_offset_db"]))
        units = {}
        for s in self.samplers:
            units.update(s.units)
        if self.pm:
            sensors["pm"] = self.pm.kind
        if self.climate:
            sensors["climate"] = "bme280"
        if self.noise:
            sensors["mic"] = board["mic"]["type"]
        meta = {"fw": config.FW_VERSION, "boot": boot}
        # The envelope is the same for every batch of this boot: build it once.
        self.envelope = ('{"v":1,"node":%s,"boot":%d,"fw":%s,"board":%s,"sensors":%s,"units":%s,"recs":[' % (
            json.dumps(cfg["node_id"]), boot, json.dumps(config.FW_VERSION), json.dumps(board["board"]),
            json.dumps(sensors), json.dumps(units))).replace('", "', '","').replace('": "', '":"')
        self.clock = Clock(cfg["ntp_host"], cfg["ntp_every_s"])
        self.uplink = Uplink(cfg, meta)
        self.queue = []
        self.dropped = 0
        self.seq = 0
        self.up_s = 0
        self._sec_mark = now
        self._start_interval(now)

    def _make(self, role, factory):
        try:
            s = factory()
        except (OSError, ValueError) as e:
            console.error("%s: cannot start: %r" % (role, e))
            return None
        self.samplers.append(s)
        return s

    # -- intervals ---------------------------------------------------------------------------
    def _start_interval(self, now):
        self.iv_t0 = now
        self.iv_up = self.up_s
        self._align(now, 0)

    def _align(self, now, elapsed_ms):
        """Set the interval's timestamp and deadline: on the UTC grid when the clock is known."""
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
        parts = ['{"seq":%d,"ts":%s,"up":%d,"dur":%d' % (
            self.seq, "null" if self.iv_ts is None else str(self.iv_ts), self.iv_up, dur)]
        flags = {}
        errs = {}
        ctx = {"dur": dur, "rh_high": self.cfg["rh_high_pct"],
               "rh_max": self.climate.rh_max() if self.climate else None}
        for s in self.samplers:
            s.fill(parts, flags, errs, ctx)
        if flags:  # by hand: MicroPython's json.dumps puts a space after every ':' and ','
            parts.append('"f":{' + ",".join('"%s":["%s"]' % (k, '","'.join(v)) for k, v in flags.items()) + "}")
        if errs:
            parts.append('"err":{' + ",".join('"%s":%d' % kv for kv in errs.items()) + "}")
        rec = ",".join(parts) + "}"
        self.seq += 1
        if len(self.queue) >= MAX_QUEUED:
            self.queue.pop(0)
            self.dropped += 1
        self.queue.append(rec)
        console.info("record %d: %s" % (self.seq - 1, rec))
        self._start_interval(now)

    # -- sending -------------------------------------------------------------------------------
    def _send(self, now):
        q = self.queue
        if not q:
            return
        size = len(self.envelope) + 2
        n = 0
        while n < len(q) and (n == 0 or size + len(q[n]) + 1 <= BATCH_BYTES):
            size += len(q[n]) + 1
            n += 1
        payload = self.envelope + ",".join(q[:n]) + "]}"
        if self.uplink.publish(payload, now):
            del q[:n]

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
        if self.pm:
            self.pm.poll(now)
        if self.climate:
            self.climate.poll(now)
        if time.ticks_diff(now, self.iv_deadline) >= 0:
            self._close_interval(now)
        if self.uplink.service(now, self.up_s):
            if self.clock.due(now) and self.clock.sync(now) and self.iv_ts is None:
                self._align(now, time.ticks_diff(now, self.iv_t0))
            self._send(now)
        elif not self.clock.synced and self.uplink.network_up() and self.clock.due(now):
            if self.clock.sync(now) and self.iv_ts is None:
                self._align(now, time.ticks_diff(now, self.iv_t0))

    def run(self):
        wdt = machine.WDT(timeout=WDT_MS)
        while True:
            self.step()
            wdt.feed()  # only after a whole pass of the loop: a hang anywhere resets the node


def main():
    chip = "".join("%02x" % b for b in machine.unique_id())
    console.info("meetkit %s, chip %s, reset cause %d" % (config.FW_VERSION, chip, machine.reset_cause()))
    cfg, board, _ = config.load(chip_id=chip)
    try:
        boot = next_boot()
    except OSError as e:
        console.error("boot counter: %r" % e)
        boot = 0
    console.info("node %s, boot %d, board %s, interval %d s" % (cfg["node_id"], boot, board["board"], cfg["interval_s"]))
    try:
        node = Node(cfg, board, boot)
        gc.collect()
        node.run()
    except Exception as e:  # a bug, not a sensor: log it, wait, start afresh
        sys.print_exception(e)
        console.error("unexpected error; resetting in 10 s")
        time.sleep_ms(10000)
        machine.reset()
