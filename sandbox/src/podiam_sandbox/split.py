"""
What the test world needs for split mode besides processes: the mutual-TLS files (a CA, the
server's certificate, the agent's), and the routing of one agent command line onto the two
processes (policy flags to ``podiam server``, node-local flags to ``podiam agent``).

The certificates are ``podiam certs init``'s, run as a process and used as it writes them.
The routing's knowledge of which flags are the server's comes from podiam's own CLI
(``FlagRoute.from_click(cli.agent, cli.SERVER_POLICY_FLAGS)``, called by whoever imports the
CLI: the e2e tests and the demo; the rest of the sandbox does not import podiam), so the world
cannot disagree with what a split agent refuses.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

SERVER_NAME = "podiam-server"
"""A name in the server's certificate (`podiam certs init`'s default Service name); agents pass it as --server-name."""


@dataclass(frozen=True)
class FlagRoute:
    """Which of the agent's option strings belong to the server in split mode."""

    server: frozenset[str]
    """Option strings (``--base-role-arn``, its aliases, ``--no-pod-events``) the server takes instead."""
    valued: frozenset[str]
    """Option strings, of either process, followed by a value (``--pod-wait 5s``)."""

    @classmethod
    def from_click(cls, agent: click.Command, server_params: Collection[str]) -> FlagRoute:
        """The route of ``podiam agent``'s options: those whose parameter name is in ``server_params``
        (the CLI's SERVER_POLICY_FLAGS) are the server's, with all their option strings."""
        server: set[str] = set()
        valued: set[str] = set()
        for param in agent.params:
            if not isinstance(param, click.Option):
                continue
            strings = [*param.opts, *param.secondary_opts]
            if param.name in server_params:
                server.update(strings)
            if not param.is_flag:
                valued.update(strings)
        return cls(server=frozenset(server), valued=frozenset(valued))

    def split(self, flags: Sequence[str]) -> tuple[list[str], list[str]]:
        """``flags`` as (the server's, the agent's), each option with its value, in order."""
        server: list[str] = []
        agent: list[str] = []
        i = 0
        while i < len(flags):
            flag = flags[i]
            name = flag.split("=", 1)[0]
            if not name.startswith("-"):
                raise ValueError(f"{flag!r} is not an option (flags: {list(flags)})")
            width = 2 if name in self.valued and "=" not in flag else 1
            if i + width > len(flags):
                raise ValueError(f"{flag} needs a value")
            (server if name in self.server else agent).extend(flags[i:i + width])
            i += width
        return server, agent


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one split-mode deployment, as ``podiam certs init`` writes them."""

    directory: Path

    @property
    def server(self) -> tuple[str, str, str]:
        """The server's --cert, --key and --ca (the CA that signs agent certificates)."""
        return self._leaf("server")

    @property
    def agent(self) -> tuple[str, str, str]:
        """The agent's --cert, --key and --ca (the CA that signs the server's certificate)."""
        return self._leaf("agent")

    def _leaf(self, name: str) -> tuple[str, str, str]:
        d = self.directory / name
        return str(d / "tls.crt"), str(d / "tls.key"), str(d / "ca.crt")


async def podiam_certs(directory: Path, timeout: float = 60.0) -> TlsFiles:
    """A new CA, server and agent certificate in ``directory``, by ``podiam certs init``, used as is.

    Its server certificate names ``podiam-server`` (SERVER_NAME) and 127.0.0.1, where the
    world's servers listen.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podiam", "certs", "init", "--out", str(directory), "--server-ip", "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"podiam certs init exited with {process.returncode}: {out.decode(errors='replace')}")
    return TlsFiles(directory)
