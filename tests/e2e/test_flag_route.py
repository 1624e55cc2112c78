"""
The test world's routing of one agent command line onto split mode's two processes agrees
with podiam's CLI: what it gives the agent, a split agent accepts; what it gives the server,
`podiam server` accepts and a split agent refuses. Pure parsing: no root, no processes.
"""

from __future__ import annotations

import click
import pytest
from cli_flags import flag_route

from podiam import cli
from podiam.errors import ConfigError
from podiam.settings import AgentSettings

SPLIT = ["--node", "node-1", "--server-address", "127.0.0.1:9610", "--cert", "a.crt", "--key", "a.key", "--ca", "ca"]
MIXED = ["--pod-wait", "5s", "--namespace-restrictions", "--namespace-restriction-format", "regexp",
         "--host-network-role", "node-tools", "--pod-rate-limit", "2", "--audit-log", "/tmp/audit.jsonl",
         "--session-tags", "--sts-timeout=2s", "--no-pod-events", "--require-imdsv2", "--role-base-arn", "arn:x/"]


def split_agent(argv: list[str]) -> AgentSettings:
    """What `podiam agent ARGV` would run with, parsed as the CLI parses it (not run)."""
    ctx = cli.agent.make_context("agent", [*SPLIT, *argv])
    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    return cli.agent_settings(ctx.params, {}, given)


def test_policy_and_sts_flags_go_to_the_server_and_node_local_ones_to_the_agent() -> None:
    server, agent = flag_route().split(MIXED)
    assert server == ["--namespace-restrictions", "--namespace-restriction-format", "regexp",
                      "--host-network-role", "node-tools", "--session-tags", "--sts-timeout=2s", "--no-pod-events",
                      "--role-base-arn", "arn:x/"]
    assert agent == ["--pod-wait", "5s", "--pod-rate-limit", "2", "--audit-log", "/tmp/audit.jsonl",
                     "--require-imdsv2"]
    settings = split_agent(agent)
    assert settings.remote is not None
    assert settings.imds.pod_wait == 5.0


def test_every_flag_routed_to_the_server_is_one_a_split_agent_refuses_and_the_server_takes() -> None:
    route = flag_route()
    server_options = {s for p in cli.server.params if isinstance(p, click.Option) for s in (*p.opts, *p.secondary_opts)}
    assert route.server <= server_options
    params = {s: p for p in cli.agent.params if isinstance(p, click.Option) for s in (*p.opts, *p.secondary_opts)}
    for option in sorted(route.server):
        argv = [option, valid_value(params[option])] if option in route.valued else [option]
        with pytest.raises(ConfigError, match=r"give --[a-z-]+ to `podiam server`"):
            split_agent(argv)


def valid_value(param: click.Option) -> str:
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[-1])
    if isinstance(param.type, click.types.IntParamType):  # --fetchers
        return "4"
    return "20m" if isinstance(param.type, cli.Duration) else "x"


def test_a_valued_flag_without_its_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs a value"):
        flag_route().split(["--pod-wait"])
