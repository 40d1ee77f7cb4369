"""The seed's Linux and Windows exclusion rules."""

from __future__ import annotations

import pytest
from strongroom_agent.exclusions import LINUX_EXCLUDED_DIRS, LinuxExclusions, WindowsExclusions

linux = LinuxExclusions(extra_dirs=["/var/lib/strongroom-agent"])
windows = WindowsExclusions(extra_dirs=["C:\\ProgramState\\Strongroom"])


@pytest.mark.parametrize("directory", LINUX_EXCLUDED_DIRS)
def test_linux_every_seed_directory_and_contents(directory: str) -> None:
    assert linux.excluded(directory, is_dir=True)
    assert linux.excluded(directory + "/", is_dir=True)
    assert linux.excluded(directory + "/some/deep/file", is_dir=False)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/home/alice/bin/tool",
        "/usr/lib/python3",
        "/usr/local/bin/x",
        "/binaries",
        "/bin2/x",
        "/usr/bin2",
        "/libx",
        "/lib64x/y",
        "/srvdata",
        "/data/lost+found",
        "/var/run2",
        "/var/lib/strongroom-agent2",
        "/home/sys/proc",
        "/etc/passwd",
    ],
)
def test_linux_lookalikes_are_kept(path: str) -> None:
    assert not linux.excluded(path, is_dir=False)
    assert not linux.excluded(path, is_dir=True)


def test_linux_state_dir_and_unnormalized_paths() -> None:
    assert linux.excluded("/var/lib/strongroom-agent", is_dir=True)
    assert linux.excluded("/var/lib/strongroom-agent/agent.json", is_dir=False)
    assert linux.excluded("/usr/./bin/ls", is_dir=False)
    assert linux.excluded("//proc/1", is_dir=True)
    assert linux.excluded("/home/../boot/vmlinuz", is_dir=False)


@pytest.mark.parametrize(
    "path",
    [
        "C:\\Windows\\System32\\kernel32.dll",
        "c:\\WINDOWS\\notepad.exe",
        "D:\\old\\windows\\x.txt",
        "C:\\Python27\\python.exe",
        "C:\\Program Files\\App\\app.exe",
        "C:\\Program Files (x86)\\App\\app.exe",
        "C:\\programdata\\x",
        "C:\\Boot\\BCD",
        "C:\\$Recycle.Bin\\S-1-5\\f",
        "E:\\$RECYCLE.BIN\\x",
        "C:\\System Volume Information\\tracking.log",
        "C:/Windows/explorer.exe",
        "C:\\ProgramState\\Strongroom\\agent.json",
    ],
)
def test_windows_excluded_directories(path: str) -> None:
    assert windows.excluded(path, is_dir=False)


@pytest.mark.parametrize(
    "path",
    [
        "C:\\Users\\Administrator\\NTUSER.DAT",
        "C:\\users\\administrator\\ntuser.dat",
        "C:\\Users\\Administrator\\ntuser.dat.LOG1",
        "D:\\Users\\Administrator\\NTUSER.DAT.log1",
        "C:\\pagefile.sys",
        "C:\\PAGEFILE.SYS",
    ],
)
def test_windows_excluded_files(path: str) -> None:
    assert windows.excluded(path, is_dir=False)


@pytest.mark.parametrize(
    "path",
    [
        "C:\\",
        "C:\\Users\\alice\\Documents\\report.docx",
        "C:\\Users\\Administrator\\Documents\\NTUSER.DAT",
        "C:\\Users\\Administrator\\NTUSER.DAT.LOG2",
        "C:\\Users\\bob\\NTUSER.DAT",
        "C:\\data\\pagefile.sys",
        "C:\\Windows.old.txt",
        "C:\\MyWindows\\x",
        "C:\\Program Files Backup\\x",
        "C:\\data\\Windows",
        "C:\\data\\boot.ini",
        "C:\\ProgramState\\Strongroom2\\x",
    ],
)
def test_windows_kept(path: str) -> None:
    assert not windows.excluded(path, is_dir=False)


def test_windows_last_component_is_a_directory_only_when_told() -> None:
    # A file named "Windows" is not a directory named Windows; a directory is.
    assert not windows.excluded("C:\\data\\Windows", is_dir=False)
    assert windows.excluded("C:\\data\\Windows", is_dir=True)
    # A directory named like an excluded file is not excluded.
    assert not windows.excluded("C:\\pagefile.sys", is_dir=True)


@pytest.mark.parametrize(
    ("directory", "may"),
    [
        ("/", True),
        ("/usr", True),  # /usr/bin, /usr/sbin
        ("/usr/", True),
        ("//usr", True),
        ("/var", True),  # the state dir below
        ("/var/lib", True),
        ("/home", False),
        ("/usr/local", False),
        ("/var/log", False),
        ("/libexec", False),  # a lookalike of /lib: nothing below it is excluded
    ],
)
def test_linux_may_exclude_below_only_above_an_excluded_directory(directory: str, may: bool) -> None:
    assert LinuxExclusions(extra_dirs=["/var/lib/strongroom"]).may_exclude_below(directory) is may


def test_linux_no_child_is_excluded_where_may_exclude_below_says_none_is() -> None:
    exclusions = LinuxExclusions(extra_dirs=["/var/lib/strongroom"])
    directories = ["/", "/usr", "/usr/local", "/var", "/var/lib", "/home", "/libexec", "/srv2"]
    names = ["bin", "sbin", "lib", "strongroom", "x", "lost+found", "proc", "lib64", "srv"]
    for directory in directories:
        excluded = [n for n in names if exclusions.excluded(f"{directory.rstrip('/')}/{n}", is_dir=True)]
        if not exclusions.may_exclude_below(directory):
            assert excluded == [], directory
    assert LinuxExclusions().may_exclude_below("/") and LinuxExclusions().excluded("/bin", is_dir=True)


def test_windows_may_exclude_below_anywhere() -> None:
    assert WindowsExclusions().may_exclude_below("D:\\data\\deep")
