# One-shot setup of the simulated board, imported by simboot and dropped after use (its code is
# then freed: heap matters). Reads sim.json, sets up simcore, builds the devices, imports every
# module the firmware may ask for, and mounts the node's flash folder at '/'.
import sys
import gc
import os
import json
import simcore as c

_TYPES = {"bme280": "dev_bme280", "pms5003": "dev_plantower", "pms7003": "dev_plantower",
          "pms1003": "dev_plantower", "sds011": "dev_sds011", "ics43434": "dev_mic",
          "inmp441": "dev_mic"}


def _hex(s):
    import ubinascii
    return ubinascii.unhexlify(s)


def _load(path):
    gc.collect()
    with open(path) as f:
        return json.load(f)


def setup(path):
    """Set up the board from sim.json; returns sim.json's heap_budget (or None)."""
    sim = _load(path)
    # Opened before the flash is mounted at '/': written once, at exit.
    c._state = open(sim["state_file"], "w")
    c.now = c.boot = int(sim.get("t_ms") or 0) * 1000
    u = sim.get("until_ms")
    c.until = None if u is None else int(u) * 1000
    c.speed = sim.get("speed") or 0
    c.seed = sim.get("seed") or 1
    c._rnd = (c.seed * 2654435761 + 1) & 0xFFFFFFFF or 1
    c.start_epoch = sim.get("start_epoch") or 0
    c.reset_cause = sim.get("reset_cause") or "power_on"
    c.mcu = sim.get("mcu") or "esp32"
    if sim.get("chip_id"):
        c.chip_id = _hex(sim["chip_id"])
    r = sim.get("rtc")
    c.rtc_off = (0 if r is None else int(r * 1000 + 0.5) * 1000) - c.now
    c.nvs = sim.get("nvs") or {}
    if sim.get("rtc_memory"):
        c.rtc_mem = _hex(sim["rtc_memory"])
    sim = None
    # Everything the firmware may import, before the host's folders go out of reach; the biggest
    # first, while the heap is emptiest (compiling takes several times a module's size).
    for name in ("machine", "network", "simsocket", "esp32", "time", "ntptime"):
        gc.collect()
        __import__(name)
    m = sys.modules
    m["usocket"] = m["socket"] = m["simsocket"]
    m["utime"] = m["time"]
    m["umachine"] = m["machine"]
    gc.collect()
    __import__("umqtt.simple")  # frozen on the board; it imports usocket: the simulated one
    sim = _load(path)
    from scenario import Scenario
    c.scen = Scenario(sim.get("scenario") or {})
    del sim["scenario"]
    c._p0 = c.now
    c._r0 = c.utime.time_ns() // 1000   # the real clock (the name utime is the simulated one now)
    import random
    random.seed(c.seed)   # the firmware's `random`: reproducible from the seed
    devs = sim.get("devices") or {}
    for bus in ("i2c", "uart", "i2s"):
        for bid, cfg in (devs.get(bus) or {}).items():
            if bus == "i2c":
                d = c.devices["i2c"].setdefault(int(bid), {})
                for addr, dc in cfg.items():
                    d[int(addr)] = _make(dc)
            else:
                c.devices[bus][int(bid)] = _make(cfg)
    c._sched()
    os.umount("/")
    os.mount(os.VfsPosix(sim["flash_dir"]), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    del sys.argv[:]
    return sim.get("heap_budget")


def _make(cfg):
    kind = cfg["type"]
    mod = _TYPES.get(kind)
    if mod is None:
        raise ValueError("sim.json: unknown device type %r" % kind)
    gc.collect()
    return __import__(mod).Device(cfg, kind)
