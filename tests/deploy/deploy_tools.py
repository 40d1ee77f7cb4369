"""The deploy tools (tools/deploy/*.py are scripts, not packages), loaded for the tests by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    """``tools/deploy/<name>.py`` as a module (cached in ``sys.modules`` under ``strongroom_deploy_<name>``)."""
    key = f"strongroom_deploy_{name}"
    if key in sys.modules:
        return sys.modules[key]
    directory = REPO / "tools" / "deploy"
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    spec = importlib.util.spec_from_file_location(key, directory / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
