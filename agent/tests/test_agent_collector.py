"""The agent's garbage collector settings (ADR 0076), each in a fresh interpreter: they are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

_CYCLE = """
import gc, json, weakref
from strongroom_agent.collector import GEN0_THRESHOLD, tune_collector

class Cycle:
    def __init__(self):
        self.me = self
"""


def _run(code: str) -> Any:
    done = subprocess.run([sys.executable, "-c", _CYCLE + code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_the_start_up_heap_is_frozen_after_its_garbage_is_freed() -> None:
    result = _run(
        "before = gc.get_threshold()\n"
        "gc.disable()  # no collection before tune_collector's own\n"
        "garbage = weakref.ref(Cycle())\n"
        "live = [Cycle() for _ in range(3)]\n"
        "gc.enable()\n"
        "tune_collector()\n"
        "print(json.dumps({\n"
        "    'before': before, 'after': gc.get_threshold(), 'frozen': gc.get_freeze_count(),\n"
        "    'threshold': GEN0_THRESHOLD,\n"
        "    'garbage_freed': garbage() is None,\n"
        "    'live_seen': sum(isinstance(o, Cycle) for o in gc.get_objects()),\n"
        "}))\n"
    )
    before, after = result["before"], result["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert after == [result["threshold"], before[1], before[2]] and after[0] > before[0]
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000  # what the imports made
    assert result["garbage_freed"] is True  # collected first, not frozen for ever
    assert result["live_seen"] == 0  # the live start-up objects are out of the collector's sight


def test_cycles_made_after_start_up_are_still_collected_within_the_threshold() -> None:
    code = "tune_collector(); ref = weakref.ref(Cycle()); held = []\n"
    code += "while ref() is not None and len(held) < 10 * GEN0_THRESHOLD: held.append([])\n"  # net allocations
    code += "print(json.dumps([len(held) if ref() is None else -1, GEN0_THRESHOLD]))\n"
    allocations, threshold = _run(code)
    # Collected by the first young collection: later than CPython's 700, never past the threshold.
    assert 700 < allocations <= threshold
