# Safe mode: after 3 crashes in a row main.py (lib/crash.py's safe_mode()) runs main() here instead
# of node.py. The minimal loop that keeps the node reachable without running what crashed: config,
# the uplink with the gateway's messages (configuration, releases, commands: mgmt.py), the status
# with mode "safe", the crash report and a safe_mode event, the watchdog fed. No sensors, no
# records: the spool stays as it is (its records go out once the node measures again). A fix ends
# it: a configuration applied, or a release installed -> the crash count is cleared and the board
# resets (a release then runs on trial).
import sys
import time
import machine
import console

_WDT_MS = 90000
_TECH_WDT_MS = 30 * 60 * 1000


class Safe:
    """The host mgmt.py, cfgapply.py, ota.py and aftercare.py work with (as node.Node)."""

    def __init__(self, cfg, board, fw):
        self.cfg = cfg
        self.board = board["board"]
        self.mode = "safe"
        self.inbox = []
        self.restart_why = self.ota = self.after = None
        self.up_s = 0
        self.dropped_msgs = 0
        boot = 0
        try:
            with open("boot.count") as f:   # read, not counted: safe mode makes no records
                boot = int(f.read())
        except (OSError, ValueError):
            pass
        import crash
        self.crashes = crash.count()
        del sys.modules["crash"]
        from uplink import Uplink
        self.uplink = Uplink(cfg, {"fw": fw, "boot": boot, "mode": "safe", "cfg": cfg["config_version"]},
                             board.get("net"), self._msg)
        import aftercare
        aftercare.start(self)   # a download to go on with (a fix), the crash report

    def _msg(self, topic, msg):
        if topic.endswith(b"/chunk"):
            if self.ota:
                self.ota.take(msg)
        elif not topic.endswith(b"/ack"):
            if len(self.inbox) < 2:
                self.inbox.append((topic, msg))
            else:
                self.dropped_msgs += 1

    def run(self):
        import mgmt
        console.error("safe mode: %d crashes in a row: measuring nothing, waiting for a new release or "
                      "configuration from the gateway" % self.crashes)
        mgmt.event(self, {"kind": "safe_mode", "crashes": self.crashes})
        cfg_v = self.cfg["config_version"]
        wdt = machine.WDT(timeout=_WDT_MS)
        mark = time.ticks_ms()
        try:
            while True:
                time.sleep_ms(20)
                now = time.ticks_ms()
                while time.ticks_diff(now, mark) >= 1000:
                    mark = time.ticks_add(mark, 1000)
                    self.up_s += 1
                    if console.pending:
                        console.flush()
                    if self.after:
                        self.after.step(self, False)
                ota = self.ota
                up = self.uplink.service(now, self.up_s, ota is not None and ota.waiting())
                if ota:
                    ota.step(now, up)
                if self.inbox or up and self.uplink.events:
                    mgmt.handle(self)
                    sys.modules["mgmt"] = mgmt   # kept here: safe mode has the heap, and one copy
                if self.cfg["config_version"] != cfg_v and not self.restart_why:
                    self.restart_why = "configuration %d" % self.cfg["config_version"]
                if self.restart_why:
                    import crash
                    crash.clear()
                    console.info("safe mode: a fix arrived (%s): the crash count is cleared; restarting"
                                 % self.restart_why)
                    machine.reset()
                wdt.feed()
        except KeyboardInterrupt:   # a technician at the REPL, as in node.py
            machine.WDT(timeout=_TECH_WDT_MS)
            console.warn("interrupted: the REPL is yours for %d min" % (_TECH_WDT_MS // 60000))
            raise


def main():
    chip = "".join("%02x" % b for b in machine.unique_id())
    import config
    fw = config.FW_VERSION
    console.info("meetkit %s, chip %s, reset cause %d: SAFE MODE" % (fw, chip, machine.reset_cause()))
    cfg, board = config.start(chip)
    del config
    del sys.modules["config"]
    Safe(cfg, board, fw).run()
