# What a start owes the gateway after an update, a rollback or a crash: loaded at start only when
# one of these files is on the flash (node.py and safemode.py look), dropped when done. The files
# and their API are the boot side's (lib/trial.py, lib/crash.py).
#   app.trial     the app runs on trial (boot.py installed it): it proves itself (started, the
#                 broker reached, a batch acknowledged, every self-test item that passed before the
#                 update passes now: trial.state()["checks"], written by ota.py) -> trial.prove(),
#                 event "proved". A sensor's item failing, or no proof within trial_s ->
#                 trial.fail(why) and a restart once the interval is spooled: boot.py puts the
#                 previous app back.
#   app.proved    the trial was proved (trial.prove() writes it right after its commit, or
#                 trialboot.py when a power cut came first): event "proved" once connected, and the
#                 file goes only once the broker took it (the uplink's events empty: umqtt's QoS 1
#                 publish returned on its PUBACK), so a cut anywhere after the proof's commit still
#                 tells the gateway; a cut after the publish and before the removal sends it twice
#                 (the gateway takes a second "proved" of the same release as the first).
#   app.rollback  boot.py rolled back: event "rolled_back" once connected; the file goes once the
#                 broker took it (as app.proved's).
#   app.refused   appswap.py could not install the node's update (its reason): event "refused"
#                 once connected (the rollout halts with the reason); the file goes as above.
#   crash.txt     the last crash: event "crash" once connected (crash.report(), then reported()
#                 once the broker took it).
#   crash.count   crashes in a row: counted from zero again (crash.clear()) after 10 minutes of
#                 running with a batch acknowledged.
#   config.json.old  a configuration on trial (cfgtrial.py): proved by the broker reached and a
#                 batch acknowledged (event config "proved"), else reverted after config_trial_s.
#   config.reverted  a configuration reverted: event config "reverted" once connected (when this
#                 start loads aftercare for something else; else cfgapply.py says it when the
#                 retained configuration comes at the connection).
import os
import console
import mgmt

_HARD = ("board", "config", "climate", "pm", "mic")   # the node's own: no outage makes them fail
_CLEAN_S = 600


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def start(host):
    """At start, when one of the files above or new/ is on the flash: a download to go on with
    (ota.resume), and host.after for the rest."""
    if _exists("new/ota.json"):
        import ota
        host.ota = ota.resume(host)
    a = Aftercare(host)
    if a.trial or a.rollback or a.refused or a.proved or a.crash or a.count or a.cfg or a.reverted:
        host.after = a
    else:
        _done(host)


def _done(host):
    host.after = None
    import sys
    if "aftercare" in sys.modules:
        del sys.modules["aftercare"]


class Aftercare:
    def __init__(self, host):
        fw = host.uplink.meta["fw"]
        self.trial = host.mode == "trial"
        self.rollback = _exists("app.rollback")
        self.refused = _exists("app.refused")
        self.proved = _exists("app.proved")   # True: to send; 2: sent, waiting for the broker to take it
        self.crash = _exists("crash.txt")
        self.count = _exists("crash.count")
        self.reverted = _exists("config.reverted")
        self.cfg = None
        if _exists("config.json.old"):
            import cfgtrial
            if cfgtrial.on_trial():
                self.cfg = cfgtrial.Running(host)
                console.info("config: version %d must prove itself within %d s (%d s so far): a batch acknowledged"
                             % (host.cfg["config_version"], self.cfg.bound, self.cfg.spent))
        self.want = []
        if self.trial:
            import trial
            t = trial.state() or {}
            self.want = t.get("checks") or []
            console.info("trial: %s must prove itself within %d s: a batch acknowledged%s" % (
                fw, host.cfg["trial_s"], "; " + ", ".join(self.want) if self.want else ""))

    def step(self, host, acked):
        """Once a second; drops itself when nothing is left to do."""
        connected = host.uplink.client is not None
        # A report's file goes only once the broker took its event (the uplink's events empty:
        # umqtt's QoS 1 publish returned on its PUBACK): a cut in between sends it again.
        if connected and self.rollback:
            import trial
            if self.rollback is True:
                r = trial.rollback_report() or {}
                r = {"kind": "ota", "state": "rolled_back", "release": r.get("release"),
                     "back_to": r.get("back_to"), "reason": r.get("reason")}
                console.warn("ota: rolled back from %s to %s: %s" % (r["release"], r["back_to"], r["reason"]))
                mgmt.event(host, r)
                self.rollback = 2
            if not host.uplink.events:
                trial.clear_rollback()
                self.rollback = False
        if connected and self.refused:
            if self.refused is True:
                import json
                try:
                    with open("app.refused") as f:
                        r = json.load(f)
                except (OSError, ValueError) as e:
                    r = {"reason": "install failed (app.refused unreadable: %r)" % (e,)}
                if not isinstance(r, dict):
                    r = {}
                r = {"kind": "ota", "state": "refused", "release": r.get("release"), "reason": r.get("reason")}
                console.warn("ota: %s not installed: %s" % (r["release"], r["reason"]))
                mgmt.event(host, r)
                self.refused = 2
            if not host.uplink.events:
                os.remove("app.refused")
                self.refused = False
        if connected and self.crash:
            import crash
            if self.crash is True:
                try:
                    r = crash.report()
                    if r:
                        r["kind"] = "crash"
                        mgmt.event(host, r)
                    self.crash = 2
                except MemoryError:   # a heap in pieces (a download, a backlog): tried again in a second;
                    pass              # the report must never be an error of its own, at every start
            if self.crash == 2 and not host.uplink.events:
                crash.reported()
                self.crash = False
        if self.reverted and connected:
            import cfgtrial
            if self.reverted is True:
                cfgtrial.report(host)
                self.reverted = 2
            elif not host.uplink.events:   # out: the broker took it
                cfgtrial.reported()
                self.reverted = False
        if self.cfg and self.cfg.step(host, connected, acked):
            self.cfg = None
        if self.count and acked and host.up_s >= _CLEAN_S:
            self.count = False
            import crash
            crash.clear()
        if self.trial:
            self._trial(host, connected, acked)
        if self.proved and connected:
            import trial
            if self.proved is True:
                p = trial.proved_report() or {}
                rel = p.get("release")
                if not isinstance(rel, str):   # cannot happen (written whole): the app running is the one proved
                    rel = host.uplink.meta["fw"]
                mgmt.event(host, {"kind": "ota", "state": "proved", "release": rel})
                self.proved = 2
            if not host.uplink.events:   # out: the broker took it (QoS 1)
                trial.clear_proved()
                self.proved = False
        if not (self.trial or self.rollback or self.refused or self.proved or self.crash or self.count or self.cfg
                or self.reverted):
            _done(host)

    def _trial(self, host, connected, acked):
        up = host.uplink
        fw = up.meta["fw"]
        r = console.result
        why = None
        for k in self.want:
            if k in _HARD and r(k) is False:
                why = "self-test: %s: %s" % (k, console.checks()[k][1])
                break
        if why is None:
            if connected and acked and all(r(k) for k in self.want):
                self.trial = False
                import trial
                trial.prove()
                console.info("trial: %s proved: the previous app is deleted" % fw)
                host.mode = up.meta["mode"] = "normal"
                mgmt.status(host)
                self.proved = True   # the event, from app.proved (step, right after this)
                return
            if host.up_s < host.cfg["trial_s"]:
                return
            missing = [] if acked else ["no batch acknowledged"]
            c = console.checks()
            for k in self.want:
                if not r(k):
                    missing.append("%s: %s" % (k, c[k][1] if k in c else "no result yet"))
            why = "not proved within %d s: %s" % (host.cfg["trial_s"], "; ".join(missing))
        self.trial = False
        import trial
        trial.fail(why)
        console.error("trial: %s failed: %s; the previous app comes back at the restart" % (fw, why))
        host.restart_why = "trial failed"
