"""docs/flags.md is generated from the click commands: it must match what they say now."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
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


def _commands(group: click.Group, ctx: click.Context, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command, a group's own commands too (`certs init`), with its name after `podiam`."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield prefix + name, command
        if isinstance(command, click.Group):
            yield from _commands(command, click.Context(command, info_name=name, parent=ctx), f"{prefix}{name} ")


def test_every_option_of_every_command_is_on_the_page() -> None:
    page = _generator().render()
    root = click.Context(main, info_name="podiam", **main.context_settings)
    names = [name for name, _ in _commands(main, root)]
    assert "certs init" in names
    for name, command in _commands(main, root):
        assert f"## podiam {name}" in page
        for param in command.get_params(click.Context(command, parent=root)):
            if isinstance(param, click.Option):
                for flag in [*param.opts, *param.secondary_opts]:
                    assert f"`{flag}`" in page, (name, flag)
                envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
                for envvar in envvars:
                    assert f"`{envvar}`" in page, (name, envvar)
