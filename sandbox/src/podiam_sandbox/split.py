"""
What the test world needs for split mode besides processes: the mutual-TLS files (a CA, the
server's certificate, the agent's), and the routing of one agent command line onto the two
processes (policy flags to ``podiam server``, node-local flags to ``podiam agent``).

The routing's knowledge of which flags are the server's comes from podiam's own CLI
(``FlagRoute`` is built from it by the caller: the sandbox does not import podiam), so the
world cannot disagree with what a split agent refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAME = "podiam-server"
"""The name in the server's certificate, as a Service's would be; agents pass it as --server-name."""


@dataclass(frozen=True)
class FlagRoute:
    """Which of the agent's option strings belong to the server in split mode."""

    server: frozenset[str]
    """Option strings (``--base-role-arn``, its aliases, ``--no-pod-events``) the server takes instead."""
    valued: frozenset[str]
    """Option strings, of either process, followed by a value (``--pod-wait 5s``)."""

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
    """PEM files of one split-mode deployment, as ``podiam server``/``agent`` take them."""

    ca: Path
    server_cert: Path
    server_key: Path
    agent_cert: Path
    agent_key: Path


def write_tls_files(directory: Path, server_hosts: Sequence[str] = (SERVER_NAME, "127.0.0.1")) -> TlsFiles:
    """A new CA, a server certificate for ``server_hosts`` and an agent certificate, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="podiam sandbox")
    server = ca.issue_cert(*server_hosts)
    agent = ca.issue_cert("podiam-agent")  # trustme's leaves carry clientAuth and serverAuth
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                     directory / "agent.crt", directory / "agent.key")
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    agent.cert_chain_pems[0].write_to_path(str(files.agent_cert))
    agent.private_key_pem.write_to_path(str(files.agent_key))
    for key in (files.server_key, files.agent_key):
        key.chmod(0o600)
    return files
