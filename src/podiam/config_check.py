"""
`--check-config`: every check a start-up makes before it touches the world, and nothing after.

``podiam agent ... --check-config`` and ``podiam server ... --check-config`` parse every
flag and variable into settings (cli.py, as a real start does), then run the checks here, and
exit: 0 with one line saying what would run, or 2 with the error, as click's usage errors.
An init container, CI (tests/integration/test_chart_cli.py runs it on the chart's rendered
DaemonSet and Deployment) and an operator editing a manifest all get the answer a start
would give, without a node.

What is checked, and why the line is drawn there:

- Everything start-up derives from the settings alone: the DNAT rule (with --iptables:
  --host-ip present and IPv4, the interface pattern), the role policy (base ARN, default and
  host-network roles, resolved as at start). With --auto-discover-base-arn and no
  --base-role-arn the base ARN comes from the node's IMDS at start, so role names are
  checked against a placeholder base ARN (account 000000000000): their form, not the account.
- Split mode's certificate files (--cert, --key, --ca): read and parsed, the key must be the
  certificate's, and the certificate must carry the usage the other side requires (clientAuth
  for an agent, serverAuth for a server). These are podiam's own inputs, mounted from a
  Secret; a wrong one otherwise shows up only at the first handshake (an agent retrying
  forever, a server refusing every agent). Files are only read.
- Not checked: anything that needs the network, iptables or the API (the region and base ARN
  from IMDS, API access and RBAC, STS permissions, whether a port is free), and files podiam
  does not parse itself (--kubeconfig is lightkube's; --audit-log is written, not read).
"""

from __future__ import annotations

from podiam.errors import ConfigError
from podiam.node.iptables import DnatRule
from podiam.policy import RolePolicy
from podiam.remote.tls import TlsFiles, check_files
from podiam.settings import AgentSettings, RestrictionSettings, RoleSettings, ServerSettings

PLACEHOLDER_BASE_ARN = "arn:aws:iam::000000000000:role/"
"""Stands in for a base ARN that start-up discovers from IMDS, so role names can be checked."""


def _policy(roles: RoleSettings, restrictions: RestrictionSettings) -> None:
    base = roles.base_role_arn
    if base is None and roles.auto_discover_base_arn:
        base = PLACEHOLDER_BASE_ARN
    RolePolicy.from_settings(roles, base, restrictions)


def check_agent(settings: AgentSettings) -> str:
    """Run the agent's start-up checks; the one-line summary, or ConfigError."""
    s = settings
    if s.node.iptables:
        DnatRule.from_settings(s.node, s.imds.app_port)
    rule = f"DNAT rule on {s.node.host_interface}" if s.node.iptables else "no DNAT rule"
    if s.remote is not None:
        check_files(TlsFiles(s.remote.cert, s.remote.key, s.remote.ca), "client")
        return (f"podiam agent: configuration OK (split mode, node {s.kube.node_name}, "
                f"servers {','.join(s.remote.addresses)}, {rule})")
    _policy(s.roles, s.restrictions)
    return f"podiam agent: configuration OK (agent mode, node {s.kube.node_name}, {rule})"


def check_server(settings: ServerSettings) -> str:
    """Run the server's start-up checks; the one-line summary, or ConfigError."""
    host, _, port = settings.bind.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--bind: {settings.bind!r} is not host:port")
    _policy(settings.roles, settings.restrictions)
    check_files(TlsFiles(settings.cert, settings.key, settings.ca), "server")
    return f"podiam server: configuration OK (gRPC on {settings.bind}, metrics on port {settings.metrics.port})"
