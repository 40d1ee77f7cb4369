"""The restore service: restore jobs from a backup point to the source or another instance."""
