"""What the stages of one backup job share: its gateway, parameters, pool, limits, stats and errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from strongroom.common.v1 import common_pb2

from strongroom_agent import memory
from strongroom_agent.backup.stages import PipelineLimits, SeenIds
from strongroom_agent.chunking import ChunkParams
from strongroom_agent.exclusions import Exclusions
from strongroom_agent.gateway_client import GatewayClient
from strongroom_agent.jobs import FileError, RetryPolicy
from strongroom_agent.throttle import ReadThrottle

if TYPE_CHECKING:
    # Not at run time: the native module reads through ``read``, which imports this one.
    from strongroom_agent.backup.native import NativeExtension

OpenFile = Callable[[str], int]  # a path to a read-only descriptor (``read.open_for_backup``)


@dataclass
class JobContext:
    job_id: str
    client: GatewayClient
    params: ChunkParams
    exclusions: Exclusions
    executor: ThreadPoolExecutor  # created by the job: the worker threads every point's stages share
    workers: int
    throttle: ReadThrottle
    open_file: OpenFile
    limits: PipelineLimits
    spool_dir: str | None
    cancel: asyncio.Event
    stop_threads: threading.Event
    stats: common_pb2.JobStats
    errors: list[FileError]
    seen: SeenIds
    retry: RetryPolicy
    state_dir: str | None  # where the forever-incremental cache lives (None: no cache)
    accepts_base_point: bool
    freed: memory.FreedPages | None = None  # the process's (composition root); None: no trimming
    trace: str | None = None  # a file for the pipeline's timeline (``probe.py``); None: not sampled
    native: NativeExtension | None = None  # the native small-file reader (ADR 0080); None: the Python path
