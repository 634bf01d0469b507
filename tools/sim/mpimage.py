"""A stand-in for MicroPython's firmware .bin, laid out as micropython.org's merged images are.

Real MicroPython images cannot be downloaded offline, so tests (and the simulated blank board)
flash this one. It has what `meetkit flash-micropython` and a ROM bootloader look at: the
second-stage bootloader image at the start of the file (written at the chip's bootloader offset:
0x1000 on the ESP32, 0x0 on the ESP32-S3), the partition table at flash 0x8000 (MicroPython's
partitions-4MiB.csv), and the app image at 0x10000 whose esp_app_desc_t names the project
"micropython" and its version. Every image carries a valid checksum and SHA-256, so
`esptool image-info` reads it. Its code is filler: no chip can run it.

    python -m meetkit_tools.sim.mpimage --chip esp32 --version v1.24.1 -o ESP32_GENERIC-v1.24.1.bin
"""

from __future__ import annotations

import argparse
import hashlib
import random
from pathlib import Path

from meetkit_tools.espimage import (
    APP_TYPE, CHIPS, DATA_TYPE, FACTORY, PARTITION_TABLE_OFFSET, AppDesc, Partition, build_app_desc,
    build_bootloader_desc, build_image, build_partition_table,
)

APP_OFFSET = 0x10000
IDF_VERSION = "v5.2.2"

# Per chip: the memory windows of each segment and the header fields ESP-IDF 5.2 writes.
_LAYOUT = {
    "esp32": dict(boot_dram=0x3FFF0030, boot_iram=(0x40078000, 0x40080400), boot_entry=0x40080650,
                  drom=0x3F400020, dram=0x3FFBDB60, iram=0x40080000, irom=0x400D0020, entry=0x40081F9C,
                  size_freq=0x20, max_rev_full=399),  # 4MB, 40 MHz; chip revisions up to v3.99
    "esp32s3": dict(boot_dram=0x3FCE2810, boot_iram=(0x403C8700, 0x403CB700), boot_entry=0x403C8924,
                    drom=0x3C0A0020, dram=0x3FC93A00, iram=0x40374000, irom=0x42000020, entry=0x40375908,
                    size_freq=0x30, max_rev_full=99),  # 8MB, 80 MHz; revisions up to v0.99
}

# MicroPython's ports/esp32/partitions-4MiB.csv (the S3 build's filesystem fills 8 MB).
_DATA_NVS, _DATA_PHY, _DATA_FAT = 0x02, 0x01, 0x81


def partitions(chip: str) -> list[Partition]:
    vfs_size = 0x200000 if chip == "esp32" else 0x600000
    return [Partition("nvs", DATA_TYPE, _DATA_NVS, 0x9000, 0x6000),
            Partition("phy_init", DATA_TYPE, _DATA_PHY, 0xF000, 0x1000),
            Partition("factory", APP_TYPE, FACTORY, APP_OFFSET, 0x1F0000),
            Partition("vfs", DATA_TYPE, _DATA_FAT, 0x200000, vfs_size)]


_WORDS = (b"mp_obj_ machine network socket select time uasyncio gc micropython Pin I2C UART SPI "
          b"esp32 RMT NeoPixel wifi bluetooth TypeError ValueError OSError __init__ __name__ "
          b"append extend format encode decode read write ioctl flash littlefs vfs ").split()


def _filler(rng: random.Random, size: int) -> bytes:
    """Code-like bytes: names and numbers as a firmware holds them, compressing about as well."""
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.6:
            out += rng.choice(_WORDS) + b"\0"
        else:
            out += rng.randbytes(rng.randint(2, 12))
    return bytes(out[:size])


def micropython_firmware(chip: str = "esp32", version: str = "v1.24.1", *, date: str = "Nov 29 2024",
                         time: str = "10:17:20", project: str = "micropython", app_size: int = 200_000,
                         image_chip: str | None = None) -> bytes:
    """The merged .bin, to be written at the chip's bootloader offset.

    `project` other than "micropython" makes another ESP-IDF app (a wrong file for the technician);
    `image_chip` builds the images for a chip other than the layout's (a mismatched header)."""
    layout = _LAYOUT[chip]
    c = CHIPS[image_chip or chip]
    rng = random.Random(f"{chip}/{version}/{project}/{app_size}")
    base = CHIPS[chip].bootloader_offset

    boot = build_image(c, [
        (layout["boot_dram"], build_bootloader_desc(IDF_VERSION, f"{date} {time}") + _filler(rng, 0x2A0)),
        (layout["boot_iram"][0], _filler(rng, 0x3C00)),
        (layout["boot_iram"][1], _filler(rng, 0x2600)),
    ], layout["boot_entry"], flash_size_freq=layout["size_freq"], max_rev_full=layout["max_rev_full"])

    desc = build_app_desc(AppDesc(project=project, version=version, date=date, time=time, idf_ver=IDF_VERSION),
                          elf_sha256=hashlib.sha256(f"{project} {version} {chip}".encode()).digest())
    rodata = max(0x400, app_size // 4)
    code = max(0x400, app_size - rodata - 0x3000 - 0x1800)
    app = build_image(c, [
        (layout["drom"], desc + _filler(rng, rodata)),
        (layout["dram"], _filler(rng, 0x3000)),
        (layout["iram"], _filler(rng, 0x1800)),
        (layout["irom"], _filler(rng, code)),
    ], layout["entry"], flash_size_freq=layout["size_freq"], max_rev_full=layout["max_rev_full"])

    out = bytearray(b"\xff" * (APP_OFFSET - base + len(app)))
    out[0:len(boot)] = boot
    table = build_partition_table(partitions(chip))
    out[PARTITION_TABLE_OFFSET - base:PARTITION_TABLE_OFFSET - base + len(table)] = table
    out[APP_OFFSET - base:] = app
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meetkit_tools.sim.mpimage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chip", choices=sorted(_LAYOUT), default="esp32")
    ap.add_argument("--version", default="v1.24.1")
    ap.add_argument("--project", default="micropython", help="another name makes a non-MicroPython app")
    ap.add_argument("--app-kb", type=int, default=200, help="size of the app image (a real one: ~1600)")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    data = micropython_firmware(args.chip, args.version, project=args.project, app_size=args.app_kb * 1024)
    args.output.write_bytes(data)
    print(f"{args.output}: {len(data)} bytes, {args.project} {args.version} for {CHIPS[args.chip].label}, "
          f"to be written at {CHIPS[args.chip].bootloader_offset:#x}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
