# A release offered by the gateway (docs/payload.md, "Release offer"), its envelope already checked
# (mgmt.py): loaded for the offer and dropped after. The release must be newer than the app the
# node runs unless forced, made for its board, compiled for the .mpy version and architecture its
# MicroPython loads, and fit the flash with room to spare; no offer is taken on trial or while
# another release is installing. An accepted offer is kept in new/ota.json and fetched by ota.py.
import os
import sys
import console
import ota
from micropython import const

SPARE_BLOCKS = const(16)     # flash left free beyond the release and what the spool keeps free (64 KB)
_SEG = const(16384)          # spool.SEG_BYTES: the spool keeps two segments free, dropping its oldest
# sys.implementation._mpy >> 10 (tools/appbuild.py has the same table)
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp",
         "xtensa", "xtensawin", "rv32imc", "rv64imc")


def _ver(v):
    """'0.10.0' -> [0, 10, 0]; the digits each part starts with ('9-new' -> 9)."""
    out = []
    for p in v.split("."):
        i = 0
        while i < len(p) and "0" <= p[i] <= "9":
            i += 1
        out.append(int(p[:i]) if i else 0)
    return out


def _path_ok(p):
    """Code only, under the root: a release cannot replace config.json, node.key or the spool."""
    return (isinstance(p, str) and p and p[0] != "/" and ".." not in p.split("/")
            and (p.endswith(".py") or p.endswith(".mpy")) and not p.startswith(ota.NEW + "/")
            and not p.startswith("sp/"))


def _files(rel):
    """[(path, size, sha256 hex)] of a manifest, or raise ValueError."""
    import gc
    gc.collect()   # the parse's garbage gone: the copies below fill its holes
    out = []
    for f in rel["files"]:
        p, n, h = f["path"], f["size"], f["sha256"]
        if not _path_ok(p) or type(n) is not int or n < 0 or not isinstance(h, str) or len(h) != 64:
            raise ValueError("file %r" % (p,))
        # copies, kept for the whole download: the parsed strings lie scattered among the
        # manifest's dicts, which go, and would leave the heap in pieces smaller than a piece
        out.append(("%s" % p, n, "%s" % h))
    if not out:
        raise ValueError("no files")
    return out


def _why_not(host, rel, files, force):
    """None when this node can take the release, else why not (named)."""
    v = rel["version"]
    if host.mode == "trial":
        return "on trial with %s: one update at a time" % host.uplink.meta["fw"]
    if ota._exists(ota.READY) or ota._exists("app.swap"):
        return "installing another release"
    if not force and not _ver(v) > _ver(host.uplink.meta["fw"]):
        return "%s is not newer than the %s it runs (and not forced)" % (v, host.uplink.meta["fw"])
    boards = rel.get("boards")
    if not isinstance(boards, list) or host.board not in boards:
        return "made for boards %s, not %s" % (", ".join(str(b) for b in boards or ()) or "none", host.board)
    arch = rel.get("arch")
    if arch is not None:   # None: sources, which any MicroPython compiles
        m = sys.implementation._mpy
        mine = "%d.%d" % (m & 0xFF, m >> 8 & 3)
        a = m >> 10
        mine_arch = ARCHS[a] if a < len(ARCHS) else "arch-%d" % a
        if rel.get("mpy") != mine or arch != mine_arch:
            return "built for .mpy %s %s; this MicroPython loads .mpy %s %s" % (rel.get("mpy"), arch, mine, mine_arch)
    st = os.statvfs(".")   # the flash: the node works from its root
    bs = st[0]
    # new/, its folders; the spare; the spool's two segments; the install's copy of the largest
    # file (appswap.py copies each file of new/ next to its place before removing it) and its folder
    need = 4 + SPARE_BLOCKS + 2 * _SEG // bs
    big = 0
    for f in files:
        need += (f[1] + bs - 1) // bs
        big = max(big, f[1])
    need += (big + bs - 1) // bs
    if st[3] < need:
        return "needs %d KB of flash free (the release, a copy of its largest file, %d KB to spare); %d KB free" % (
            need * bs // 1024, SPARE_BLOCKS * bs // 1024 + 2 * _SEG // 1024, st[3] * bs // 1024)
    return None


def offer(host, body, path, buf=None):
    """A release offer (body: {"node", "release": manifest, "force"}; path: the envelope as received,
    on flash: it becomes new/ota.json; buf: the download's buffer, made before the offer was read)."""
    rel = body.get("release")
    try:
        v = rel["version"]
        if not isinstance(v, str):
            raise ValueError("version")
        files = _files(rel)
    except (ValueError, KeyError, TypeError) as e:
        ota.refuse(host, rel.get("version") if isinstance(rel, dict) else None,
                   "not a release manifest (%s)" % (e,))
        return
    cur = host.ota
    if cur is not None:
        if cur.ver == v and cur.files == files:   # offered again (the gateway's retry): go on
            console.info("ota: %s offered again: downloading on" % v)
            ota.say(host, "accepted", v)
            return
    why = _why_not(host, rel, files, body.get("force") is True)
    if why is not None:
        ota.refuse(host, v, why)
        return
    d = ota.Download(host, v, files, buf)   # before the flash is touched: memory may be short
    if cur is not None:   # another release replaces the one being fetched
        console.info("ota: %s replaces %s" % (v, cur.ver))
        host.ota = None
    ota.rmtree(ota.NEW)
    try:
        os.mkdir(ota.NEW)
        os.rename(path, ota.OFFER)   # a cut here: no new/ota.json, the offer is lost, new/ goes at the start
    except OSError as e:
        ota.rmtree(ota.NEW)
        ota.refuse(host, v, "cannot write %s: %r" % (ota.OFFER, e))
        return
    host.ota = d
    console.info("ota: %s accepted: %d files, %d bytes" % (v, len(files), sum(f[1] for f in files)))
    ota.say(host, "accepted", v)


