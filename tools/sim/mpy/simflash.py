# The ESP32's "vfs" flash partition as a block device over an image FILE (a bytearray would eat
# the emulated heap). Same protocol as esp32.Partition, which littlefs uses on the board:
# readblocks/writeblocks with a byte offset, ioctl 1..6 with 6 = erase one 4096-byte sector.
#
# It counts programs (writeblocks calls) and erases over the node's life, can charge their time to
# the virtual clock, and cuts the power at program number `cut_at`: that write is torn (only its
# first half reaches the image) and from then on nothing is programmed or erased. Failures are
# RETURNED to littlefs as EIO (-5), never raised: an exception would jump out of littlefs half-way
# through an operation and leave its in-memory state broken (it links stack objects into lists).
# The write path must not allocate: the GC closes (and so flushes) unreachable files with the
# heap locked. flashtool.py opens images with it read-only, from the host's side.
import micropython

BS = 4096
# With `timed` (sim.json flash_timing): SPI NOR flash of the ESP32 modules (W25Q32/GD25Q32
# class), typical datasheet figures: page program about 0.5 ms for 256 bytes, 4 KB sector erase
# 45 ms. The CPU is stalled meanwhile, so the firmware's loop (and its audio) waits too.
PROG_US = 20
PROG_US_PER_BYTE = 2
ERASE_US = 45000
_FF = b"\xff" * 512


@micropython.native
def create(path, blocks):
    """A new image: every sector erased (0xFF), as a blank partition."""
    with open(path, "wb") as f:
        for _ in range(blocks * (BS // len(_FF))):
            f.write(_FF)


class Flash:
    @micropython.native
    def __init__(self, path, blocks, readonly=False):
        self._f = open(path, "rb" if readonly else "r+b")
        self.blocks = blocks
        self.writes = 0       # programs over the node's life (the runner carries them)
        self.erases = 0
        self.nbytes = 0       # bytes programmed
        self.cut_at = 0       # the program the power cut tears (life count); 0: none
        self.live = not readonly   # False: the power is gone or the board reset: writes fail
        self.clock = None     # simcore, once the firmware owns the flash: the cut (and time)
        self.timed = False    # charge programs and erases to clock.now

    @micropython.native
    def readblocks(self, n, buf, off=0):
        f = self._f
        f.seek(n * BS + off)
        f.readinto(buf)

    @micropython.native
    def writeblocks(self, n, buf, off=None):
        if not self.live:
            return -5
        if off is None:       # the basic protocol: whole sectors, erased first
            for i in range(len(buf) // BS):
                self.ioctl(6, n + i)
            off = 0
        k = len(buf)
        self.writes += 1
        c = self.clock
        if self.timed:
            c.now += PROG_US + PROG_US_PER_BYTE * k
        f = self._f
        f.seek(n * BS + off)
        if self.writes == self.cut_at:
            k //= 2
            f.write(buf, k)   # the torn write: write(buf, len) does not slice (no allocation)
            self.nbytes += k
            self.live = False
            if c is not None:
                c.power_cut()
            return -5         # EIO for littlefs, and so for the firmware
        f.write(buf)
        self.nbytes += k
        return 0

    @micropython.native
    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BS
        if op == 6:
            if not self.live:
                return -5
            self.erases += 1
            if self.timed:
                self.clock.now += ERASE_US
            f = self._f
            f.seek(arg * BS)
            for _ in range(BS // len(_FF)):
                f.write(_FF)
        return 0
