"""tools/chart.py (the chart rendered offline, its cases and kustomize bases) for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parent.parent / "tools" / "chart.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("podiam_chart_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


chart = _load()
