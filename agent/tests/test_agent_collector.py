"""The agent's garbage collector settings (ADR 0076), each in a fresh interpreter: they are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

_CYCLE = """
import gc, json, weakref
from strongroom_agent.collector import tune_collector

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
        "    'garbage_freed': garbage() is None,\n"
        "    'live_seen': sum(isinstance(o, Cycle) for o in gc.get_objects()),\n"
        "}))\n"
    )
    assert result["after"] == result["before"]  # CPython's thresholds: cycles are found as soon as before
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000  # what the imports made
    assert result["garbage_freed"] is True  # collected first, not frozen for ever
    assert result["live_seen"] == 0  # the live start-up objects are out of the collector's sight


def test_cycles_made_after_start_up_are_still_collected() -> None:
    code = "tune_collector(); ref = weakref.ref(Cycle()); held = []\n"
    code += "while ref() is not None and len(held) < 100_000: held.append([])\n"  # net container allocations
    code += "print(json.dumps([len(held) if ref() is None else -1, gc.get_threshold()[0]]))\n"
    allocations, threshold = _run(code)
    assert 0 < allocations <= threshold  # by the first young collection, as without the freeze
