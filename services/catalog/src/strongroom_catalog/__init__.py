"""The catalog service: backup versions and points, browsing their files, and retention."""
