"""Mountinfo parsing and the block-storage filter."""

from __future__ import annotations

import pytest
from strongroom_agent.exclusions import LinuxExclusions
from strongroom_agent.filesystems import (
    NetworkFilesystemError,
    block_storage_mounts,
    discover_filesystems,
    filesystem_for_root,
    is_network_fs,
    mount_containing,
    parse_mountinfo,
)

SAMPLE = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
23 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
24 1 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=4010000k,nr_inodes=1002500,mode=755
25 1 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:7 - tmpfs tmpfs rw,size=803000k,mode=755
27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
28 27 253:16 / /data rw,relatime shared:30 - xfs /dev/vdb rw,attr2,inode64,noquota
29 27 253:2 / /boot rw,relatime shared:31 - ext4 /dev/vda2 rw
30 27 0:45 / /mnt/nas rw,relatime shared:40 - nfs4 10.0.0.5:/export rw,vers=4.1,addr=10.0.0.5
31 27 0:46 / /mnt/share rw,relatime shared:41 - cifs //fileserver/share rw,vers=3.0
32 27 0:47 / /mnt/oss rw,nosuid,nodev,relatime shared:42 - fuse.ossfs ossfs rw,user_id=0,group_id=0
33 27 0:48 / /mnt/gluster rw,relatime shared:43 - fuse.glusterfs gfs1:/vol0 rw,user_id=0
34 27 0:49 / /mnt/gv rw,relatime shared:44 - glusterfs gfs1:/vol1 rw
35 27 0:50 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/x,upperdir=/y,workdir=/z
36 27 0:51 / /tmp rw,nosuid,nodev shared:45 - tmpfs tmpfs rw
37 27 0:52 / /mnt/cephfs rw,relatime - ceph 10.0.0.7:6789:/ rw,name=admin
38 27 253:16 /exports /srv/exports rw,relatime shared:30 - xfs /dev/vdb rw
39 27 7:0 / /snap/core/123 ro,nodev,relatime shared:46 - squashfs /dev/loop0 ro
40 23 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
41 28 253:17 / /data/with\\040space rw,relatime - ext4 /dev/vdc rw
42 27 0:53 / /mnt/sshfs rw,nosuid,nodev,relatime - fuse.sshfs me@host:/home rw
"""


def test_parse_fields_and_escapes() -> None:
    mounts = parse_mountinfo(SAMPLE + "garbage line\n\n")
    assert len(mounts) == 20
    root = next(m for m in mounts if m.mount_point == "/")
    assert (root.device, root.root, root.fs_type, root.source) == ("253:1", "/", "ext4", "/dev/vda1")
    assert any(m.mount_point == "/data/with space" for m in mounts)
    # optional fields of variable count before the "-" separator
    assert next(m for m in mounts if m.mount_point == "/mnt/nas").fs_type == "nfs4"


def test_block_storage_keeps_only_local_disks() -> None:
    chosen = [m.mount_point for m in block_storage_mounts(parse_mountinfo(SAMPLE))]
    assert chosen == ["/", "/data", "/boot", "/data/with space"]


@pytest.mark.parametrize(
    "fs_type", ["nfs", "nfs4", "cifs", "smb3", "glusterfs", "fuse.glusterfs", "fuse.ossfs", "fuse.sshfs", "ceph"]
)
def test_network_types(fs_type: str) -> None:
    assert is_network_fs(fs_type)


@pytest.mark.parametrize("fs_type", ["ext4", "xfs", "btrfs", "fuseblk", "tmpfs", "proc"])
def test_not_network_types(fs_type: str) -> None:
    assert not is_network_fs(fs_type)


def test_discover_reports_capacity_and_drops_excluded_mount_points() -> None:
    capacities = {"/": 40 << 30, "/data": 100 << 30, "/boot": 1 << 30, "/data/with space": 5 << 30}
    found = discover_filesystems(
        SAMPLE,
        excluded=lambda p: LinuxExclusions().excluded(p, is_dir=True),
        capacity=capacities.__getitem__,
        is_dir=lambda _p: True,
    )
    assert [(f.mount_point, f.device, f.fs_type, f.capacity_bytes) for f in found] == [
        ("/", "/dev/vda1", "ext4", 40 << 30),
        ("/data", "/dev/vdb", "xfs", 100 << 30),
        ("/data/with space", "/dev/vdc", "ext4", 5 << 30),
    ]


def test_bind_mount_of_same_filesystem_reported_once() -> None:
    text = (
        "27 1 253:1 / / rw - ext4 /dev/vda1 rw\n"
        "50 27 253:1 / /mnt/again rw - ext4 /dev/vda1 rw\n"
        "51 27 253:1 /home /home2 rw - ext4 /dev/vda1 rw\n"
    )
    assert [m.mount_point for m in block_storage_mounts(parse_mountinfo(text))] == ["/"]


def test_btrfs_subvolumes_are_separate() -> None:
    text = (
        "27 1 0:40 /@ / rw - btrfs /dev/sda2 rw,subvol=/@\n"
        "28 27 0:40 /@home /home rw - btrfs /dev/sda2 rw,subvol=/@home\n"
    )
    assert [m.mount_point for m in block_storage_mounts(parse_mountinfo(text))] == ["/", "/home"]


def test_mount_containing_prefers_longest() -> None:
    mounts = parse_mountinfo(SAMPLE)
    found = mount_containing("/data/projects/x", mounts)
    assert found is not None and found.mount_point == "/data"
    found = mount_containing("/database", mounts)
    assert found is not None and found.mount_point == "/"


def test_root_on_network_storage_is_refused() -> None:
    with pytest.raises(NetworkFilesystemError, match="nfs4"):
        filesystem_for_root("/mnt/nas/projects", SAMPLE, capacity=lambda _p: 0)
    fs = filesystem_for_root("/data/projects", SAMPLE, capacity=lambda _p: 7)
    assert (fs.mount_point, fs.device, fs.fs_type, fs.capacity_bytes) == ("/data/projects", "/dev/vdb", "xfs", 7)


def test_real_host_discovery_only_reports_block_devices() -> None:
    for fs in discover_filesystems():
        assert fs.device.startswith("/dev/") or fs.fs_type == "zfs"
        assert fs.capacity_bytes > 0
