"""podiam's CLI as the test world needs it for split mode (the sandbox does not import podiam)."""

from __future__ import annotations

import click

from podiam import cli
from podiam_sandbox.split import FlagRoute


def flag_route() -> FlagRoute:
    """Which agent flags are the server's in split mode: the CLI's own list, SERVER_POLICY_FLAGS."""
    server: set[str] = set()
    valued: set[str] = set()
    for param in cli.agent.params:
        if not isinstance(param, click.Option):
            continue
        strings = [*param.opts, *param.secondary_opts]
        if param.name in cli.SERVER_POLICY_FLAGS:
            server.update(strings)
        if not param.is_flag:
            valued.update(strings)
    return FlagRoute(server=frozenset(server), valued=frozenset(valued))
