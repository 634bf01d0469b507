"""ESP32 flash contents, read and written: the app image format (bootloader and app), the partition
table, and the app descriptor (esp_app_desc_t) that names a build's project and version.

Formats as ESP-IDF defines them ("App Image Format", "Partition Tables"); esptool's image-info
reads what build_image() writes. Used by `meetkit flash-micropython` to check a firmware file
before touching a board, and by the simulated ROM bootloader to tell whether its flash boots.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass, field

IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
BOOTLOADER_DESC_MAGIC = 0x50
PARTITION_MAGIC = b"\xaa\x50"
PARTITION_MD5_MAGIC = b"\xeb\xeb"
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
CHECKSUM_SEED = 0xEF
MAX_SEGMENTS = 16


@dataclass(frozen=True)
class Chip:
    name: str  # esptool's --chip and the board files' "mcu"
    label: str  # as Espressif writes it
    image_chip_id: int  # the extended header's chip id
    bootloader_offset: int  # where the second-stage bootloader (and a merged image) starts in flash


CHIPS = {
    "esp32": Chip("esp32", "ESP32", 0, 0x1000),
    "esp32s3": Chip("esp32s3", "ESP32-S3", 9, 0x0),
}

# Chip ids of the image header (esptool's IMAGE_CHIP_ID) of chips meetkit does not run on, to name
# them in an error instead of printing a number.
OTHER_CHIP_IDS = {2: "ESP32-S2", 5: "ESP32-C3", 12: "ESP32-C2", 13: "ESP32-C6", 16: "ESP32-H2",
                  18: "ESP32-P4", 20: "ESP32-C61", 23: "ESP32-C5"}


def xor_bytes(data: bytes | bytearray | memoryview, state: int = 0) -> int:
    """XOR of every byte (the image checksum), folded in C-speed big-integer steps."""
    n = len(data)
    x = int.from_bytes(data, "little")
    while n > 1:
        half = (n + 1) // 2
        x = (x >> (8 * half)) ^ (x & ((1 << (8 * half)) - 1))
        n = half
    return state ^ (x & 0xFF)


def chip_for_id(chip_id: int) -> Chip | None:
    return next((c for c in CHIPS.values() if c.image_chip_id == chip_id), None)


def chip_id_label(chip_id: int) -> str:
    chip = chip_for_id(chip_id)
    return chip.label if chip else OTHER_CHIP_IDS.get(chip_id, f"an unknown chip (id {chip_id})")


class ImageError(ValueError):
    """The bytes are not a valid image, partition table or descriptor; the message says why."""


# -- app image ---------------------------------------------------------------------------------------


@dataclass
class Segment:
    addr: int
    data: bytes
    file_offs: int = 0  # where the segment's data starts, from the image's start


@dataclass
class Image:
    chip_id: int
    flash_mode: int
    flash_size_freq: int
    entry: int
    segments: list[Segment]
    min_rev_full: int
    max_rev_full: int
    length: int  # bytes from the magic to the end of the checksum (and digest, if appended)
    hash_appended: bool

    def segment_in(self, lo: int, hi: int) -> Segment | None:
        return next((s for s in self.segments if lo <= s.addr < hi), None)


# Flash-mapped data (DROM) windows: the app descriptor is the first thing in the first such segment.
DROM = {0: (0x3F400000, 0x3F800000), 9: (0x3C000000, 0x3D000000)}
# Internal data RAM: the bootloader descriptor starts the bootloader's first DRAM segment.
DRAM = {0: (0x3FFAE000, 0x40000000), 9: (0x3FC88000, 0x3FD00000)}

_HEADER = struct.Struct("<BBBBI")
_EXT_HEADER = struct.Struct("<BBBBHBHH4sB")


def parse_image(buf: bytes | bytearray | memoryview, offset: int = 0) -> Image:
    """Read one image at `offset`, checking its checksum and its SHA-256 (when appended).

    Raises ImageError naming the first problem: a wrong magic byte, a truncated segment, a
    checksum or digest that does not match (a corrupt or cut-off download)."""
    mv = memoryview(buf)
    if len(mv) < offset + 24:
        raise ImageError(f"only {max(0, len(mv) - offset)} bytes at {offset:#x}, an image header needs 24")
    magic, nseg, mode, size_freq, entry = _HEADER.unpack_from(mv, offset)
    if magic != IMAGE_MAGIC:
        raise ImageError(f"byte {magic:#04x} at {offset:#x}, an image starts with {IMAGE_MAGIC:#04x}")
    (_wp, _d1, _d2, _d3, chip_id, _min_rev, min_full, max_full, _res,
     hash_appended) = _EXT_HEADER.unpack_from(mv, offset + 8)
    if hash_appended not in (0, 1):
        raise ImageError(f"the image at {offset:#x} has a bad extended header (hash flag {hash_appended})")
    if not 0 < nseg <= MAX_SEGMENTS:
        raise ImageError(f"the image at {offset:#x} claims {nseg} segments (1 to {MAX_SEGMENTS} are valid)")
    pos = offset + 24
    segments = []
    checksum = CHECKSUM_SEED
    for i in range(nseg):
        if len(mv) < pos + 8:
            raise ImageError(f"the image at {offset:#x} is cut off in segment {i} of {nseg}")
        addr, size = struct.unpack_from("<II", mv, pos)
        if len(mv) < pos + 8 + size:
            raise ImageError(f"the image at {offset:#x} is cut off in segment {i} of {nseg} "
                             f"({size} bytes at {pos - offset + 8:#x}, the data ends first)")
        data = bytes(mv[pos + 8:pos + 8 + size])
        checksum = xor_bytes(data, checksum)
        segments.append(Segment(addr, data, pos + 8 - offset))
        pos += 8 + size
    pos += 15 - (pos - offset) % 16  # the checksum is the last byte of a 16-byte aligned block
    if len(mv) <= pos:
        raise ImageError(f"the image at {offset:#x} is cut off before its checksum")
    if mv[pos] != checksum:
        raise ImageError(f"the image at {offset:#x} has checksum {mv[pos]:#04x}, its data gives {checksum:#04x} "
                         "(a corrupt file)")
    end = pos + 1
    if hash_appended:
        if len(mv) < end + 32:
            raise ImageError(f"the image at {offset:#x} is cut off before its SHA-256")
        if hashlib.sha256(mv[offset:end]).digest() != bytes(mv[end:end + 32]):
            raise ImageError(f"the image at {offset:#x} does not match its SHA-256 (a corrupt file)")
        end += 32
    return Image(chip_id, mode, size_freq, entry, segments, min_full, max_full, end - offset,
                 bool(hash_appended))


def build_image(chip: Chip, segments: list[tuple[int, bytes]], entry: int, *, flash_mode: int = 2,
                flash_size_freq: int = 0x20, min_rev_full: int = 0, max_rev_full: int = 0xFFFF,
                hash_appended: bool = True) -> bytes:
    """An image as esptool's elf2image writes it (segments as given, word-padded)."""
    out = bytearray(_HEADER.pack(IMAGE_MAGIC, len(segments), flash_mode, flash_size_freq, entry))
    out += _EXT_HEADER.pack(0xEE, 0, 0, 0, chip.image_chip_id, min_rev_full // 100, min_rev_full,
                            max_rev_full, b"\0" * 4, int(hash_appended))
    checksum = CHECKSUM_SEED
    for addr, data in segments:
        data = data + b"\0" * (-len(data) % 4)
        out += struct.pack("<II", addr, len(data)) + data
        checksum = xor_bytes(data, checksum)
    out += b"\0" * (15 - len(out) % 16)
    out.append(checksum)
    if hash_appended:
        out += hashlib.sha256(out).digest()
    return bytes(out)


# -- app and bootloader descriptors -------------------------------------------------------------------

_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")  # 256 bytes


@dataclass
class AppDesc:
    project: str
    version: str
    date: str  # __DATE__ of the build, "Nov 29 2024"
    time: str
    idf_ver: str
    secure_version: int = 0

    @property
    def build_date(self) -> str:
        """The build date as ISO 8601 (2024-11-29), or the raw text when it is not a C __DATE__."""
        try:
            return dt.datetime.strptime(" ".join(self.date.split()), "%b %d %Y").date().isoformat()
        except ValueError:
            return self.date


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_app_desc(data: bytes) -> AppDesc | None:
    if len(data) < _APP_DESC.size:
        return None
    f = _APP_DESC.unpack_from(data)
    if f[0] != APP_DESC_MAGIC:
        return None
    return AppDesc(project=_cstr(f[4]), version=_cstr(f[3]), time=_cstr(f[5]), date=_cstr(f[6]),
                   idf_ver=_cstr(f[7]), secure_version=f[1])


def build_app_desc(desc: AppDesc, elf_sha256: bytes = b"\0" * 32) -> bytes:
    return _APP_DESC.pack(APP_DESC_MAGIC, desc.secure_version, b"\0" * 8, desc.version.encode()[:31],
                          desc.project.encode()[:31], desc.time.encode()[:15], desc.date.encode()[:15],
                          desc.idf_ver.encode()[:31], elf_sha256, 0, 0, 0, b"\0" * 3, b"\0" * 72)


def build_bootloader_desc(idf_ver: str, date_time: str, version: int = 1) -> bytes:
    """esp_bootloader_desc_t (80 bytes), the start of an ESP-IDF 5 bootloader's DRAM segment."""
    return struct.pack("<B3sI32s24s16s", BOOTLOADER_DESC_MAGIC, b"\0" * 3, version, idf_ver.encode()[:31],
                       date_time.encode()[:23], b"\0" * 16)


def app_desc_of(image: Image) -> AppDesc | None:
    lo_hi = DROM.get(image.chip_id)
    seg = image.segment_in(*lo_hi) if lo_hi else None
    return parse_app_desc(seg.data) if seg else None


def peek_app_desc(head: bytes) -> AppDesc | None:
    """The descriptor of an app image from its first bytes only (header, first segment's header
    and 256 bytes): enough to name what a board runs without reading the whole app."""
    if len(head) < 32 or head[0] != IMAGE_MAGIC:
        return None
    chip_id = struct.unpack_from("<H", head, 12)[0]
    addr = struct.unpack_from("<I", head, 24)[0]
    lo, hi = DROM.get(chip_id, (0, 0))
    return parse_app_desc(head[32:]) if lo <= addr < hi else None


# -- partition table ----------------------------------------------------------------------------------

_PART = struct.Struct("<2sBBII16sI")
APP_TYPE = 0x00
DATA_TYPE = 0x01
FACTORY = 0x00
OTA_0 = 0x10


@dataclass
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0

    @property
    def is_app(self) -> bool:
        return self.type == APP_TYPE


def parse_partition_table(data: bytes | bytearray | memoryview) -> list[Partition]:
    """The entries of a partition table (the 0xC00 bytes at 0x8000), checking its MD5 entry."""
    mv = memoryview(data)[:PARTITION_TABLE_SIZE]
    parts: list[Partition] = []
    for pos in range(0, len(mv) - _PART.size + 1, _PART.size):
        entry = bytes(mv[pos:pos + _PART.size])
        if entry[:2] == PARTITION_MAGIC:
            _m, ptype, sub, off, size, label, flags = _PART.unpack(entry)
            parts.append(Partition(_cstr(label), ptype, sub, off, size, flags))
        elif entry[:2] == PARTITION_MD5_MAGIC:
            if hashlib.md5(mv[:pos]).digest() != entry[16:]:
                raise ImageError("the partition table does not match its MD5 (a corrupt table)")
            break
        elif entry == b"\xff" * _PART.size:
            break
        else:
            raise ImageError(f"the partition table has a bad entry at {PARTITION_TABLE_OFFSET + pos:#x}")
    if not parts:
        raise ImageError(f"no partition table at {PARTITION_TABLE_OFFSET:#x}")
    return parts


def build_partition_table(parts: list[Partition]) -> bytes:
    out = bytearray()
    for p in parts:
        out += _PART.pack(PARTITION_MAGIC, p.type, p.subtype, p.offset, p.size, p.label.encode()[:15], p.flags)
    out += PARTITION_MD5_MAGIC + b"\xff" * 14 + hashlib.md5(out).digest()
    return bytes(out + b"\xff" * (PARTITION_TABLE_SIZE - len(out)))


# -- a whole flash: what the chip's ROM would boot -----------------------------------------------------


@dataclass
class FlashApp:
    """What a flash (or a merged firmware file, placed at its offset) holds and boots."""

    chip: Chip
    bootloader: Image
    partitions: list[Partition]
    app_partition: Partition
    app: Image
    desc: AppDesc | None
    problems: list[str] = field(default_factory=list)

    @property
    def end(self) -> int:
        """The flash address after the app image: a merged file must reach at least this far."""
        return self.app_partition.offset + self.app.length


def read_flash_app(flash: bytes | bytearray | memoryview, chip: Chip | None = None) -> FlashApp:
    """Follow the boot chain as the ROM and the second-stage bootloader do: the bootloader image
    at the chip's offset, the partition table at 0x8000, the first app partition (factory, else
    ota_0) and the app image in it. Raises ImageError naming the first link that is missing."""
    mv = memoryview(flash)
    chips = [chip] if chip else list(CHIPS.values())
    boot = None
    errors = []
    for c in chips:
        try:
            boot = parse_image(mv, c.bootloader_offset)
        except ImageError as e:
            errors.append(f"{c.label}: {e}")
            continue
        if boot.chip_id != c.image_chip_id:
            errors.append(f"{c.label}: the bootloader at {c.bootloader_offset:#x} is for "
                          f"{chip_id_label(boot.chip_id)}")
            boot = None
            continue
        chip = c
        break
    if boot is None or chip is None:
        raise ImageError("no bootloader: " + "; ".join(errors))
    parts = parse_partition_table(mv[PARTITION_TABLE_OFFSET:PARTITION_TABLE_OFFSET + PARTITION_TABLE_SIZE])
    apps = [p for p in parts if p.is_app]
    app_part = next((p for p in apps if p.subtype == FACTORY), None) or \
        next((p for p in apps if p.subtype == OTA_0), None)
    if app_part is None:
        raise ImageError("the partition table has no factory or ota_0 app partition")
    app = parse_image(mv, app_part.offset)
    if app.chip_id != chip.image_chip_id:
        raise ImageError(f"the app at {app_part.offset:#x} is for {chip_id_label(app.chip_id)}, "
                         f"the bootloader for {chip.label}")
    if app.length > app_part.size:
        raise ImageError(f"the app ({app.length} bytes) is larger than its partition ({app_part.size} bytes)")
    return FlashApp(chip, boot, parts, app_part, app, app_desc_of(app))
