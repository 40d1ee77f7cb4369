"""Restore: write the entries of a backup point below a destination directory.

One module per part: ``job.py`` (``run_restore``: the manifest walk and the
batches), ``fetch.py`` (reading chunks from the gateway), ``writer.py`` (the
writer threads), ``destination.py`` (descriptor-relative safe filesystem
operations; the security model) and ``metadata.py`` (directory metadata once
a subtree is written). Nothing here imports ``backup``; both stand on
``jobs.py``. This package's face is re-exported here.
"""

from strongroom_agent.restore.destination import UnsafePath, safe_parts
from strongroom_agent.restore.job import destination_root, run_restore

__all__ = ["UnsafePath", "destination_root", "run_restore", "safe_parts"]
