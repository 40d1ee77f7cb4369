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
    def __init__(self, key: bytes, level: int, min_size: int, avg_size: int, max_size: int, seed: int) -> None: ...
    def reset(self, read_end: int | None = None, ends_at: int | None = None) -> None: ...
    def release(self) -> None: ...
    def step(
        self, fd: int, one_read: int | None, batch_bytes: int
    ) -> tuple[list[tuple[bytes, bool, bytes, int]], int, bool, int]: ...
