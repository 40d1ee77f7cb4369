"""``strongroom inventory import``: the CSV and JSON-lines formats (ADR 0040)."""

from __future__ import annotations

import pytest
from strongroom_cli.inventory import parse_size, read_records

GIB = 1 << 30


def test_csv_with_devices_and_release() -> None:
    text = (
        "host_id,name,region,os,block_devices,released\n"
        "i-abc,web-1,cn-hangzhou,linux,/dev/vda=40G;/dev/vdb=20GiB,\n"
        "i-def,,cn-shanghai,windows,C:=1048576,true\n"
    )
    first, second = read_records(text)
    assert (first.host_id, first.name, first.region, first.os, first.released) == (
        "i-abc",
        "web-1",
        "cn-hangzhou",
        "linux",
        False,
    )
    assert [(d.device, d.size_bytes) for d in first.block_devices] == [("/dev/vda", 40 * GIB), ("/dev/vdb", 20 * GIB)]
    assert (second.name, second.released, second.block_devices[0].size_bytes) == ("", True, 1 << 20)


def test_json_lines() -> None:
    text = (
        '{"host_id": "m-1", "region": "r", "block_devices": [{"device": "/dev/vda", "size_bytes": 42}]}\n'
        "\n"
        '{"host_id": "m-2", "region": "r", "released": true}\n'
    )
    first, second = read_records(text)
    assert (first.host_id, first.block_devices[0].size_bytes, second.released) == ("m-1", 42, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,region\nweb,r\n", "header line naming at least host_id"),
        ("host_id,region,colour\nm,r,blue\n", "unknown field"),
        ("host_id,block_devices\nm,/dev/vda\n", "DEVICE=SIZE"),
        ("host_id,block_devices\nm,/dev/vda=lots\n", "not a number"),
        ("host_id,released\nm,maybe\n", "released must be true or false"),
        ('{"host_id": "m"}\n{oops\n', "line 2: not JSON"),
        ('{"host_id": "m", "block_devices": [{"device": "/dev/vda", "size_bytes": "40G"}]}\n', "size_bytes"),
    ],
)
def test_bad_files_say_where(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_records(text)


def test_sizes() -> None:
    assert [parse_size(s) for s in ("512", "1K", "2m", "40G", "1TiB", "3GB")] == [
        512,
        1024,
        2 << 20,
        40 * GIB,
        1 << 40,
        3 * GIB,
    ]
