# The node's start, run once by node.main() and dropped after: its code is heap the loop needs.
# start(): the configuration and the board (config.py and boardfile.py, dropped after), the modules
# this board needs, compiled in the order that leaves the smallest heap the node starts in
# (bench/start_heap.py: measure a change); make(): the boot counter and the Node (node.py) filled.
import gc
import sys
import time
import machine
import json
import console
import node as N

BOOT_FILE = "boot.count"
Clock = Spool = Uplink = Outbox = PM = Climate = Noise = None


def next_boot():
    # Persisted boot counter: read, add one, write atomically (rename), return.
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


def start():
    chip = "".join("%02x" % b for b in machine.unique_id())
    # config.py is needed only now: loaded here and dropped after, its code is heap the node needs
    import config
    fw = config.FW_VERSION
    console.info("meetkit %s, chip %s, reset cause %d" % (fw, chip, machine.reset_cause()))
    cfg, board = config.start(chip)   # the board and config self-test lines too
    del config
    del sys.modules["config"]
    gc.collect()
    if not board["usable"]:   # no measuring, no reset: the REPL stays for the technician
        return None
    global Clock, Spool, Uplink, Outbox, PM, Climate, Noise
    if "mic" in board:
        from sample_noise import Noise
    else:   # compiled first in case it is needed; a board without a microphone gives its heap back
        del sys.modules["soundlevel"]
        gc.collect()
    # a collection between the large compiles: each parse's garbage is gone before the next
    # module's code is placed (measured: 2 KB less heap to start in, bench/start_heap.py)
    from uplink import Uplink
    gc.collect()
    from spool import Spool
    gc.collect()
    import recline
    N.recline = recline
    import recread   # compiled now, while the heap is emptiest: later (a first send, a backlog) it may not fit
    from clock import Clock
    gc.collect()
    from outbox import Outbox   # here: the order of compiling decides the smallest heap that starts
    if "climate" in board:
        from sample_climate import Climate
        import bme280   # compiled now, before the samplers' buffers: Climate takes it from sys.modules
    if "pm" in board:
        from sample_pm import PM
        __import__("sds011" if board["pm"]["type"] == "sds011" else "plantower")   # as bme280
    # compiled now, not where they are used at the end of make(), with every object of the node in
    # the heap: the spool's state reader (spool.py drops it), the Ethernet driver, the status LED
    __import__("spstate")
    if (board.get("net") or {}).get("type") == "lan":
        __import__("lan")
    if board.get("led"):
        try:
            __import__("led")
        except ImportError:   # make() says so
            pass
    return cfg, board, fw


def make(cfg, board, fw):
    try:
        boot = next_boot()
    except OSError as e:
        console.error("boot counter: %r" % e)
        boot = 0
    console.info("node %s, boot %d, board %s, interval %d s" % (cfg["node_id"], boot, board["board"], cfg["interval_s"]))
    gc.collect()
    self = N.Node()
    init(self, cfg, board, boot, fw)
    gc.collect()
    return self


def _sampler(self, role, factory):
    try:
        s = factory()
    except (OSError, ValueError) as e:
        console.error("%s: cannot start: %r" % (role, e))
        return None
    self.samplers.append(s)
    return s


def init(self, cfg, board, boot, fw):
    now = time.ticks_ms()
    self.cfg = cfg
    self.boot = boot
    self.iv_s = cfg["interval_s"]
    self.samplers = []
    self.pm = self.climate = self.noise = None
    sensors = {}
    if "pm" in board:
        self.pm = _sampler(self, "pm", lambda: PM(board["pm"], now))
    if "climate" in board:
        self.climate = _sampler(self, "climate", lambda: Climate(board["i2c"], board["climate"],
                                                         cfg["climate_every_s"], now))
    if "mic" in board:
        self.noise = _sampler(self, "mic", lambda: Noise(board["mic"], cfg["noise_offset_db"], N._HIST, N._AUDIO))
    units = {}
    for s in self.samplers:
        units.update(s.units)
    if self.pm:
        sensors["pm"] = self.pm.kind
    if self.climate:
        sensors["climate"] = "bme280"
    if self.noise:
        sensors["mic"] = board["mic"]["type"]
    import os
    root = os.listdir()
    self.mode = "trial" if "app.trial" in root else "normal"
    self.board = board["board"]
    meta = {"fw": fw, "boot": boot, "mode": self.mode, "cfg": cfg["config_version"]}
    # The envelope is the same for every batch of this boot: built once, kept on flash with the
    # boot's records so that a backlog from before a firmware update goes out with its own.
    self.envelope = ('{"v":1,"node":%s,"boot":%d,"fw":%s,"board":%s,"sensors":%s,"units":%s,' % (
        json.dumps(cfg["node_id"]), boot, json.dumps(fw), json.dumps(board["board"]),
        json.dumps(sensors), json.dumps(units))).replace('", "', '","').replace('": "', '":"')
    self.keys = None       # quantity order of this boot's record lines, from its first record
    self.anchor = None     # Unix ms at uptime 0, once the clock is known
    self.clock = Clock(cfg["ntp_host"], cfg["ntp_every_s"])
    self.led = None
    if board.get("led"):
        try:
            from led import Led   # only on a board with a status LED
            self.led = Led(board["led"])
        except (OSError, ValueError, ImportError) as e:
            console.error("led: cannot start: %r" % e)
    self.spool = Spool(cfg["spool_kb"] * 1024)
    self.spool_errors = 0
    self._extra = 300   # what a record's payload text adds to its bytes on flash (set once keys are known):
    # it bounds how many records a backlog read holds at once (each a list while it is sent)
    self.outbox = Outbox(self.spool, boot, len(N._BUF) - 512 - len(self.envelope) - 30, self._publish, now,
                         cfg["batch_records"])
    self.uplink = Uplink(cfg, meta, board.get("net"), self._msg)
    self.inbox = []   # (kind, msg) from the gateway, for the loop (mgmt.py)
    # restart_why: restart once the interval being measured is spooled; ota: the release being
    # fetched (ota.py); after: what this start owes the gateway (aftercare.py)
    self.restart_why = self.ota = self.after = None
    self.dropped_msgs = 0   # the gateway's messages that came while two waited (mgmt.py says so)
    for p in ("new", "app.trial", "app.rollback", "app.refused", "app.proved", "crash.txt", "crash.count",
              "config.json.old"):
        if p in root:   # a download, an update, a rollback, a failed install, a proof to report, a crash
            # or a configuration on trial
            import aftercare
            aftercare.start(self)
            break
    self.seq = 0
    self.up_s = 0
    self._sec_mark = now
    if self.clock.unix_ms() is not None:  # the RTC kept the time over a reset
        self._set_anchor(now)
    self._start_interval(now)
