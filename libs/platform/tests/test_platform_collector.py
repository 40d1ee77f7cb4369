"""A service's start-up heap frozen (ADR 0076), in a fresh interpreter: the setting is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json, weakref
from strongroom_platform.collector import freeze_start_up_heap

class Cycle:
    def __init__(self):
        self.me = self

before = gc.get_threshold()
gc.disable()
garbage = weakref.ref(Cycle())
live = [Cycle() for _ in range(3)]
gc.enable()
freeze_start_up_heap()
print(json.dumps({
    "same_thresholds": gc.get_threshold() == before,
    "frozen": gc.get_freeze_count(),
    "garbage_freed": garbage() is None,
    "live_seen": sum(isinstance(o, Cycle) for o in gc.get_objects()),
}))
"""


def test_the_start_up_heap_is_frozen_after_its_garbage_is_freed() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout)
    assert result["same_thresholds"] is True
    assert result["frozen"] > 1000
    assert result["garbage_freed"] is True
    assert result["live_seen"] == 0
