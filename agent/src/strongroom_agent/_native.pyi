# Types of the agent's native extension (native/src/lib.rs, built by `make native`; ADR 0080).
import os

FORMAT: int

def read_small_files(
    paths: list[str | os.PathLike[str]], key: bytes, level: int, max_size: int
) -> list[tuple[object, ...]]: ...
