"""The agent's garbage collector settings (ADR 0076), each in a fresh interpreter: they are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys

_CYCLE = """
import gc, json, weakref
from strongroom_agent.collector import GEN0_THRESHOLD, tune_collector

class Cycle:
    def __init__(self):
        self.me = self
"""


def _run(code: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _CYCLE + code], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


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


def test_cycles_made_after_start_up_are_still_collected() -> None:
    result = _run(
        "tune_collector()\n"
        "ref = weakref.ref(Cycle())\n"
        "held = []\n"
        "while ref() is not None and len(held) < 100_000:\n"
        "    held.append([])  # one net container allocation each\n"
        "print(json.dumps({'allocations': len(held) if ref() is None else -1, 'threshold': gc.get_threshold()[0]}))\n"
    )
    allocations, threshold = result["allocations"], result["threshold"]
    assert isinstance(allocations, int) and isinstance(threshold, int)
    # Collected by the first young collection: later than CPython's 700, never past the threshold.
    assert 700 < allocations <= threshold
