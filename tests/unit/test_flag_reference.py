"""docs/flags.md is generated from the click commands: it must match what they say now."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import click

from podiam.cli import main

GENERATOR = Path(__file__).resolve().parents[2] / "tools" / "flag_reference.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flag_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_flag_reference_is_current() -> None:
    generator = _generator()
    committed = generator.PAGE.read_text(encoding="utf-8") if generator.PAGE.exists() else ""
    assert committed == generator.render(), "docs/flags.md is stale: run scripts/flag-reference"


def test_every_option_of_every_command_is_on_the_page() -> None:
    page = _generator().render()
    root = click.Context(main, info_name="podiam", **main.context_settings)
    for name in main.list_commands(root):
        command = main.get_command(root, name)
        assert command is not None
        assert f"## podiam {name}" in page
        for param in command.get_params(click.Context(command, parent=root)):
            if isinstance(param, click.Option):
                for flag in [*param.opts, *param.secondary_opts]:
                    assert f"`{flag}`" in page, (name, flag)
                envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
                for envvar in envvars:
                    assert f"`{envvar}`" in page, (name, envvar)
