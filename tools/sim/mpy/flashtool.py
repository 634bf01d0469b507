# Reads a node's flash image from the host: `micropython flashtool.py IMAGE CMD [ARG...]`, run by
# tools/sim/flashimage.py. The image is mounted through the simulator's own block device, so the
# host sees what the firmware would see at its next boot; read-only except for `put`.
#   ls [DIR]        every file under DIR (default the root), one path a line, recursively
#   get PATH...     each file (a directory: every file under it) as "<size> <path>\n<bytes>";
#                   missing paths are left out
#   df              statvfs of the filesystem, as JSON
#   put PATH        write stdin to PATH (as `mpremote fs cp` would on a stopped board)
#   putmany         write the files on stdin, each "<size> <path>\n<bytes>" (as `get` prints them),
#                   making their folders as needed
import sys
import os
import simflash


def _files(fs, p, out):
    try:
        kind = fs.stat(p or "/")[0]
    except OSError:
        return out
    if kind & 0x4000:
        for e in fs.ilistdir(p or "/"):
            _files(fs, p + "/" + e[0] if p else e[0], out)
    else:
        out.append(p)
    return out


def main(a):
    img, cmd = a[1], a[2]
    fs = os.VfsLfs2(simflash.Flash(img, os.stat(img)[6] // simflash.BS, readonly=cmd not in ("put", "putmany")))
    args = [p.strip("/") for p in a[3:]]
    if cmd == "ls":
        for p in _files(fs, args[0] if args else "", []):
            print(p)
    elif cmd == "get":
        out = sys.stdout.buffer
        buf = bytearray(4096)
        for arg in args:
            for p in _files(fs, arg, []):
                with fs.open(p, "rb") as f:
                    out.write(b"%d %s\n" % (fs.stat(p)[6], p))
                    while True:
                        k = f.readinto(buf)
                        if not k:
                            break
                        out.write(buf, k)
    elif cmd == "put":
        data = sys.stdin.buffer.read()
        with fs.open(args[0], "wb") as f:
            f.write(data)
    elif cmd == "putmany":
        data = sys.stdin.buffer.read()
        i = 0
        while i < len(data):
            nl = data.index(b"\n", i)
            size, _, name = data[i:nl].decode().partition(" ")
            i = nl + 1 + int(size)
            name = name.strip("/")
            d = ""
            for part in name.split("/")[:-1]:
                d = d + "/" + part if d else part
                try:
                    fs.stat(d)
                except OSError:
                    fs.mkdir(d)
            with fs.open(name, "wb") as f:
                f.write(data[nl + 1:i])
    elif cmd == "df":
        import json
        print(json.dumps(fs.statvfs("/")))
    else:
        raise SystemExit("flashtool: unknown command " + cmd)


main(sys.argv)
