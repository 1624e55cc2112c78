"""docs/helm-values.md is generated from the chart's values.yaml comments and must be current;
every value has a description."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

GENERATOR = Path(__file__).resolve().parents[2] / "tools" / "helm_values.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_values", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_committed_page_is_current() -> None:
    tool = generator()
    assert tool.PAGE.read_text() == tool.render(tool.VALUES.read_text()), "run scripts/helm-values-reference"


def test_every_value_is_documented() -> None:
    tool = generator()
    assert tool.undocumented(tool.VALUES.read_text()) == []


def test_a_value_without_a_description_is_found_and_comments_continue() -> None:
    tool = generator()
    text = "# -- Top.\n# More.\na: 1\nb:\n  # -- Inner.\n  c: x\n  d: 2\ne:\n  f: [1]\n"
    assert [(d.key, d.default, d.description) for d in tool.parse(text)] == [("a", 1, "Top. More."),
                                                                            ("b.c", "x", "Inner.")]
    assert tool.undocumented(text) == ["b.d", "e.f"]
