"""Fixtures of the console's real-browser tests (ADR 0054): the end-to-end stack of ``tests/e2e``
(its modules are imported from there, not copied) and Debian's chromium."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
if str(E2E) not in sys.path:
    sys.path.insert(0, str(E2E))

_spec = importlib.util.spec_from_file_location("e2e_conftest", E2E / "conftest.py")
assert _spec is not None and _spec.loader is not None
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)
stack_kafka = _e2e.stack_kafka

__all__ = ["artifacts", "chromium", "stack_kafka"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (apt-get installs it when missing and root; ``make prefetch`` does it first)."""
    from strongroom_servers._process import PrerequisiteMissing, debian_tool

    try:
        return debian_tool("chromium", "chromium")
    except PrerequisiteMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """Where screenshots go: ``$STRONGROOM_ARTIFACTS/<test>``, else under the pytest basetemp."""
    root = Path(os.environ["STRONGROOM_ARTIFACTS"]) if os.environ.get("STRONGROOM_ARTIFACTS") else None
    base = root if root is not None else tmp_path_factory.getbasetemp() / "artifacts"
    directory = base / request.node.name
    directory.mkdir(parents=True, exist_ok=True)
    return directory
