"""Backup points: chunk lookup, committing a point, and the restore reads; one module per concern.

- ``missing``: FindMissingChunks (which chunks a backup still has to upload).
- ``commit``: CommitPoint, receiving the entries and writing the manifest; built on
  ``building``'s threads, its packs located and locked by ``packs``, recorded by ``record``
  (the vault record, the point row and PointCreated).
- ``restore``: the restore job's point and ReadManifest.
- ``chunk_reads``: ReadChunks, planned by ``planning`` and opened by ``opening``.

The RPC adapters (``grpc_api``) call the names re-exported here.
"""

from strongroom_gateway.points.chunk_reads import MAX_READ_IDS_PER_REQUEST, read_chunks
from strongroom_gateway.points.commit import commit_point, manifest_key
from strongroom_gateway.points.missing import MAX_IDS_PER_REQUEST, find_missing_chunks
from strongroom_gateway.points.opening import OpenedChunk, damaged, open_range
from strongroom_gateway.points.planning import ReadRange, ReadWindow, coalesce, plan_reads
from strongroom_gateway.points.restore import read_manifest

__all__ = [
    "MAX_IDS_PER_REQUEST",
    "MAX_READ_IDS_PER_REQUEST",
    "OpenedChunk",
    "ReadRange",
    "ReadWindow",
    "coalesce",
    "commit_point",
    "damaged",
    "find_missing_chunks",
    "manifest_key",
    "open_range",
    "plan_reads",
    "read_chunks",
    "read_manifest",
]
