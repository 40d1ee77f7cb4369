# Types of the agent's native extension (native/src/lib.rs, built by `make native`; ADR 0080).
import os

FORMAT: int

def read_small_files(
    paths: list[str | os.PathLike[str]], key: bytes, level: int, max_size: int
) -> list[tuple[object, ...]]: ...

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
