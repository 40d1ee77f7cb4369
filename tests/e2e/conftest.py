"""Fixtures shared by the end-to-end modules: the platform of test_backup_restore."""

from test_backup_restore import platform

__all__ = ["platform"]
