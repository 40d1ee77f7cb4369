"""Launchers for real servers used by tests and the standalone mode."""
