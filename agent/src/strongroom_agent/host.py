"""What the agent reports of its host at enrollment (ADR 0040): a stable host identity and the block
devices attached, for the inventory of a host that was activated without a record."""

from __future__ import annotations

import os

from strongroom.common.v1 import common_pb2

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
SYS_BLOCK = "/sys/block"
SECTOR = 512  # /sys/block/*/size counts 512-byte sectors whatever the device's own sector size
# Not block storage attached to the instance: memory disks, loop devices, device-mapper stacks of the above.
_VIRTUAL_PREFIXES = ("loop", "ram", "zram", "dm-", "sr", "fd", "nbd")


def host_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str:
    """The host's machine-id (systemd's stable identity), or "" when there is none."""
    for path in files:
        try:
            with open(path, encoding="ascii") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value and len(value) <= 128 and value.isalnum():
            return f"machine-id:{value}"
    return ""


def block_devices(root: str = SYS_BLOCK) -> list[common_pb2.BlockDevice]:
    """Whole disks of the host with their sizes (partitions are not listed in /sys/block)."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    devices: list[common_pb2.BlockDevice] = []
    for name in names:
        if name.startswith(_VIRTUAL_PREFIXES):
            continue
        try:
            with open(os.path.join(root, name, "size"), encoding="ascii") as f:
                sectors = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if sectors > 0:
            devices.append(common_pb2.BlockDevice(device=f"/dev/{name}", size_bytes=sectors * SECTOR))
    return devices[:64]
