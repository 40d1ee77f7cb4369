"""The Strongroom on-host agent: scans block-storage filesystems, chunks, deduplicates, uploads and restores."""

__version__ = "0.1.0"
