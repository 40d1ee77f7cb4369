"""Discovery of the host's block-storage filesystems from /proc/self/mountinfo.

Only data on block storage is backed up (seed: "Externally mounted network
storage, such as NAS, ossfs, and GlusterFS, is not supported"), so a mount
counts only when its filesystem type is a known on-disk type and its source is
a block device under /dev. Network filesystems (nfs, cifs, glusterfs, ceph,
fuse.ossfs, ...) and pseudo filesystems (proc, tmpfs, overlay, ...) never do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from strongroom.common.v1 import common_pb2

MOUNTINFO_PATH = "/proc/self/mountinfo"

# On-disk filesystem types that live on a block device.
BLOCK_FS_TYPES = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "f2fs",
        "vfat",
        "msdos",
        "exfat",
        "ntfs",
        "ntfs3",
        "fuseblk",  # ntfs-3g and other FUSE drivers of a local block device
        "jfs",
        "reiserfs",
        "hfsplus",
        "nilfs2",
        "bcachefs",
        "zfs",
    }
)

# Network filesystems: never backed up, not even as explicit roots.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "glusterfs",
        "ceph",
        "cephfs",
        "9p",
        "afs",
        "lustre",
        "beegfs",
        "gpfs",
        "ocfs2",
        "gfs2",
        "davfs",
    }
)

# zfs datasets are named "pool/dataset", not /dev paths.
_SOURCE_NOT_A_DEVICE_OK = frozenset({"zfs"})


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo."""

    mount_id: int
    parent_id: int
    device: str  # "major:minor"
    root: str  # path of the mount's root inside its filesystem
    mount_point: str
    fs_type: str
    source: str


def _unescape(field: str) -> str:
    """Undo the kernel's octal escaping of space, tab, newline and backslash."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text (proc(5) format); malformed lines are ignored."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < separator + 3:
            continue
        try:
            mount_id, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        mounts.append(
            Mount(
                mount_id=mount_id,
                parent_id=parent_id,
                device=fields[2],
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fs_type=fields[separator + 1],
                source=_unescape(fields[separator + 2]),
            )
        )
    return mounts


def is_network_fs(fs_type: str) -> bool:
    """Network or remote storage (including every FUSE filesystem except fuseblk, e.g. ossfs, sshfs)."""
    return fs_type in NETWORK_FS_TYPES or (fs_type.startswith("fuse") and fs_type != "fuseblk")


def is_block_storage(mount: Mount) -> bool:
    """A mount of an on-disk filesystem on a local block device."""
    if mount.fs_type not in BLOCK_FS_TYPES or is_network_fs(mount.fs_type):
        return False
    return mount.source.startswith("/dev/") or mount.fs_type in _SOURCE_NOT_A_DEVICE_OK


def block_storage_mounts(mounts: Iterable[Mount]) -> list[Mount]:
    """Block-storage mounts, one per filesystem, in mountinfo order.

    A filesystem mounted several times (bind mounts, containers) is reported
    once: the first mount of its root wins and mounts of a subdirectory of a
    filesystem whose root is already mounted are dropped. btrfs subvolumes
    (distinct ``root``) are distinct filesystems here, as each is its own tree.
    """
    chosen: list[Mount] = []
    seen: set[tuple[str, str]] = set()
    devices_with_root: set[str] = set()
    candidates = [m for m in mounts if is_block_storage(m)]
    for mount in candidates:
        if mount.root == "/":
            devices_with_root.add(mount.device)
    for mount in candidates:
        key = (mount.device, mount.root if mount.fs_type == "btrfs" else "/")
        if mount.root != "/" and mount.fs_type != "btrfs" and mount.device in devices_with_root:
            continue  # a bind mount of part of a filesystem that is mounted whole elsewhere
        if key in seen:
            continue
        seen.add(key)
        chosen.append(mount)
    return chosen


def capacity_bytes(path: str) -> int:
    """Total size of the filesystem holding ``path`` (0 when it cannot be queried)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize


def read_mountinfo() -> str:
    return Path(MOUNTINFO_PATH).read_text(encoding="utf-8", errors="surrogateescape")


def discover_filesystems(
    mountinfo_text: str | None = None,
    *,
    excluded: Callable[[str], bool] = lambda _path: False,
    capacity: Callable[[str], int] = capacity_bytes,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> list[common_pb2.Filesystem]:
    """The block-storage filesystems to back up, one per filesystem.

    Filesystems mounted inside an excluded directory (``/boot``, ``/boot/efi``)
    are left out: every file of them would be excluded anyway.
    """
    text = read_mountinfo() if mountinfo_text is None else mountinfo_text
    result: list[common_pb2.Filesystem] = []
    for mount in block_storage_mounts(parse_mountinfo(text)):
        if excluded(mount.mount_point) or not is_dir(mount.mount_point):
            continue
        result.append(
            common_pb2.Filesystem(
                mount_point=mount.mount_point,
                device=mount.source,
                fs_type=mount.fs_type,
                capacity_bytes=capacity(mount.mount_point),
            )
        )
    return result


def mount_containing(path: str, mounts: Iterable[Mount]) -> Mount | None:
    """The mount whose mount point is the longest prefix of ``path`` (an absolute, normalized path)."""
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mount_point
        inside = path == mp or mp == "/" or path.startswith(mp.rstrip("/") + "/")
        # Later mounts on the same point hide earlier ones, hence ">=".
        if inside and (best is None or len(mp) >= len(best.mount_point)):
            best = mount
    return best


class NetworkFilesystemError(ValueError):
    """An explicit backup root lies on network storage, which is never backed up."""


def filesystem_for_root(
    root: str,
    mountinfo_text: str | None = None,
    *,
    capacity: Callable[[str], int] = capacity_bytes,
) -> common_pb2.Filesystem:
    """Describe an explicit backup root as a point: its path, plus the device,
    type and capacity of the filesystem holding it.

    Raises NetworkFilesystemError when that filesystem is network storage.
    """
    text = read_mountinfo() if mountinfo_text is None else mountinfo_text
    mount = mount_containing(root, parse_mountinfo(text))
    if mount is not None and is_network_fs(mount.fs_type):
        raise NetworkFilesystemError(f"{root} is on a network filesystem ({mount.fs_type}), which is not backed up")
    return common_pb2.Filesystem(
        mount_point=root,
        device=mount.source if mount else "",
        fs_type=mount.fs_type if mount else "",
        capacity_bytes=capacity(root),
    )
