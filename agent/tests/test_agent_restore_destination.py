"""The restore destination's path rule: only plainly relative entry paths are written."""

from __future__ import annotations

import pytest
from strongroom_agent.restore import UnsafePath, safe_parts


def test_safe_parts() -> None:
    assert safe_parts("") == []
    assert safe_parts("a/b c/d") == ["a", "b c", "d"]
    for bad in ["/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a/", "..", "a\x00b"]:
        with pytest.raises(UnsafePath):
            safe_parts(bad)
