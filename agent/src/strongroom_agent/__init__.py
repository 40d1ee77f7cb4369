"""The Strongroom on-host agent: scans block-storage filesystems, chunks, deduplicates, uploads and restores."""
