"""Parsers of option values shared by the subcommands."""

from __future__ import annotations

import argparse

from strongroom.common.v1 import common_pb2

PRIORITIES = {"low": common_pb2.BACKUP_PRIORITY_LOW, "high": common_pb2.BACKUP_PRIORITY_HIGH}


def time_of_day(text: str) -> int:
    """``HH:MM`` (in the schedule zone) -> minute of the day."""
    try:
        hours, minutes = text.split(":")
        hour, minute = int(hours), int(minutes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HH:MM, got {text!r}") from None
    if not (0 <= hour < 24 and 0 <= minute < 60):
        raise argparse.ArgumentTypeError(f"time must be between 00:00 and 23:59, got {text!r}")
    return hour * 60 + minute


def on_off(text: str) -> bool:
    if text in ("on", "off"):
        return text == "on"
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
