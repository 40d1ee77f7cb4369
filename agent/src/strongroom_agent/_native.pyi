# Types of the agent's native extension (native/src/lib.rs, built by `make native`; ADR 0080).
import os

FORMAT: int

def read_small_files(
    paths: list[str | os.PathLike[str]], key: bytes, level: int, max_size: int
) -> list[tuple[object, ...]]: ...

# FastCDC with pyfastcdc's cut points and the large-file step (native/src/cdc.rs; ADR 0083).
CDC_FORMAT: int

def cdc_cuts(data: bytes, min_size: int, avg_size: int, max_size: int, seed: int) -> list[int]: ...

class FileCutter:
    def __init__(
        self, key: bytes, level: int | None, min_size: int, avg_size: int, max_size: int, seed: int
    ) -> None: ...
    def reset(self, read_end: int | None = None, ends_at: int | None = None) -> None: ...
    def release(self) -> None: ...
    def step(
        self, fd: int, one_read: int | None, batch_bytes: int
    ) -> tuple[list[tuple[bytes, bool, bytes, int]], int, bool, int]: ...

# The walk compared with the cache, one GIL-free call per step (native/src/walk.rs; ADR 0085).
WALK_FORMAT: int

class TreeWalk:
    def __init__(
        self,
        root: bytes,
        exclusions: list[bytes],
        cache: tuple[str, int, int] | None,
        racy_before_ns: int | None,
        step_entries: int,
        run_entries: int,
    ) -> None: ...
    @property
    def broken(self) -> str | None: ...
    @property
    def records_read(self) -> int: ...
    def end_walk(self) -> None: ...
    def step(
        self,
    ) -> tuple[int, list[tuple[object, ...]], list[tuple[int, bytes, int]], tuple[int, int, int, int], bool]: ...
