"""The backup pipeline: scan → read+chunk+hash → dedup → compress → upload → commit.

One module per stage, in the order data flows: ``scan.py`` (the points of a
job, directory listings; the ordering contract), ``compare.py`` (the walk in
manifest order against the cache, in worker-thread steps), ``read.py``
(opening and chunking files in bounded steps), ``stages.py`` (dedup, compress,
upload; the memory contract), ``messages.py`` (the upload messages, encoded
by hand), ``commit.py`` (the spool in scan order, the
commit with base-point fallback), ``point.py`` (wires the stages of one point
in one TaskGroup) and ``job.py`` (``run_backup``: the points of one job).
This package's face is re-exported here.
"""

from strongroom_agent.backup.job import cores_for, run_backup
from strongroom_agent.backup.messages import Upload, upload_requests
from strongroom_agent.backup.read import open_for_backup
from strongroom_agent.backup.scan import ScanItem, plan_points
from strongroom_agent.backup.stages import PipelineLimits
from strongroom_agent.jobs import FileError, JobCanceled, RetryPolicy

__all__ = [
    "FileError",
    "JobCanceled",
    "PipelineLimits",
    "RetryPolicy",
    "ScanItem",
    "Upload",
    "cores_for",
    "open_for_backup",
    "plan_points",
    "run_backup",
    "upload_requests",
]
