"""podiam's CLI as the test world needs it for split mode (the sandbox does not import podiam)."""

from __future__ import annotations

from podiam import cli
from podiam_sandbox.split import FlagRoute


def flag_route() -> FlagRoute:
    """Which agent flags are the server's in split mode: the CLI's own list, SERVER_POLICY_FLAGS."""
    return FlagRoute.from_click(cli.agent, cli.SERVER_POLICY_FLAGS)
