# One-shot setup of the simulated board, imported by simboot and dropped after use (its code is
# then freed: heap matters). Reads sim.json, sets up simcore, builds the devices, imports every
# module the firmware may ask for, and mounts the node's flash at '/': a littlefs image (formatted
# and filled from the staged folder on the first boot), or without `flash_image` the folder itself.
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
    if sim.get("power_switch"):   # read once a simulated second: "0" cuts the power (runner.py)
        c._switch = open(sim["power_switch"], "rb")
    c.now = c.boot = int(sim.get("t_ms") or 0) * 1000
    u = sim.get("until_ms")
    c.until = None if u is None else int(u) * 1000
    c.speed = -1 if sim.get("live") else sim.get("speed") or 0   # no name of its own: qstrs are heap
    c.seed = sim.get("seed") or 1
    c._rnd = (c.seed * 2654435761 + 1) & 0xFFFFFFFF or 1
    c.start_epoch = sim.get("start_epoch") or 0
    c.reset_cause = sim.get("reset_cause") or "power_on"
    c.mcu = sim.get("mcu") or "esp32"
    if sim.get("micropython"):
        c.mp_release = sim["micropython"]
    c.repl = sim.get("repl") or None   # a board on a serial port: "board" (boot.py, main.py) or "raw" (boot.py)
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
    for name in ("machine", "network", "simsocket", "esp32", "time", "ntptime", "neopixel"):
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
    c.devices["lan"] = devs.get("lan")   # the Ethernet PHY's wiring (network.LAN)
    if c.devices["lan"]:
        import simlan
        for k in dir(simlan):
            if k == "LAN" or k.startswith("PHY_") or k.startswith("ETH_"):
                setattr(m["network"], k, getattr(simlan, k))
    w = sim.get("wifi")
    if w:   # the access point: only this SSID and password connect
        m["network"]._ap = (w["ssid"], w["password"])
    c._sched()
    fs = _flash(sim) if sim.get("flash_image") else os.VfsPosix(sim["flash_dir"])
    os.umount("/")
    os.mount(fs, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    del sys.argv[:]
    return sim.get("heap_budget")


def _flash(sim):
    """The flash partition as littlefs over simflash; on the first boot (no image yet) formatted
    and filled from the staged folder, as `mpremote cp` leaves a board. Those writes are not
    counted: the firmware's life starts at its first boot."""
    import simflash
    img = sim["flash_image"]
    n = int(sim.get("flash_kb") or 2048) * 1024 // simflash.BS
    try:
        size = os.stat(img)[6]
    except OSError:
        size = None
        simflash.create(img, n)
    if size is not None and size != n * simflash.BS:
        raise ValueError("sim.json: %s is %d bytes, flash_kb says %d" % (img, size, n * simflash.BS))
    dev = simflash.Flash(img, n)
    if size is None:
        os.VfsLfs2.mkfs(dev)
        fs = os.VfsLfs2(dev)
        _copy(sim["flash_dir"], fs, "", bytearray(1024))
    else:
        fs = os.VfsLfs2(dev)
    dev.writes = sim.get("flash_writes") or 0
    dev.erases = sim.get("flash_erases") or 0
    dev.nbytes = sim.get("flash_bytes") or 0
    dev.cut_at = sim.get("power_cut_at") or 0
    dev.clock = c
    dev.timed = bool(sim.get("flash_timing"))
    c.flash = dev
    return fs


def _copy(src, fs, rel, buf):
    for e in os.ilistdir(src + rel):
        p = rel + "/" + e[0]
        if e[1] == 0x4000:
            fs.mkdir(p)
            _copy(src, fs, p, buf)
            continue
        with open(src + p, "rb") as a, fs.open(p, "wb") as b:
            while True:
                k = a.readinto(buf)
                if not k:
                    break
                b.write(buf, k)
        gc.collect()


def _make(cfg):
    kind = cfg["type"]
    mod = _TYPES.get(kind)
    if mod is None:
        raise ValueError("sim.json: unknown device type %r" % kind)
    gc.collect()
    return __import__(mod).Device(cfg, kind)
