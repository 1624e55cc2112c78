"""Flags -> settings: durations, env vars, aliases, clear errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from podiam.cli import agent_settings, main, parse_duration
from podiam.errors import ConfigError
from podiam.remote.client import host_of, parse_addresses


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600), ("30m", 1800), ("800ms", 0.8), ("1h30m", 5400), ("1.5s", 1.5), ("90", 90), ("0", 0),
    ("250us", 0.00025),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "1x", "-1s", "1h-", "inf", "nan", "1 h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59))
def test_go_style_durations_add_up(h: int, m: int, s: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env or {})
    return result.exit_code, result.output


def test_help_lists_every_flag_with_its_env_var() -> None:
    code, out = run("agent", "--help")
    assert code == 0
    for flag in ("--node", "--app-port", "--host-ip", "--host-interface", "--iptables", "--base-role-arn",
                 "--auto-discover-base-arn", "--default-role", "--iam-role-key", "--iam-external-id",
                 "--session-duration", "--session-refresh", "--use-regional-sts-endpoint", "--metadata-addr",
                 "--require-imdsv2", "--pod-wait", "--allow-route-regexp", "--metrics-port", "--log-format",
                 "--log-level", "--kubeconfig"):
        assert flag in out, flag
    assert "PODIAM_SESSION_DURATION" in out
    assert "PODIAM_IPTABLES" in out


def test_missing_node_is_a_usage_error() -> None:
    code, out = run("agent")
    assert code == 2
    assert "--node (or NODE_NAME) is required" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--session-duration", "soon"], "not a duration"),
    (["--pod-wait", "-1"], "non-negative"),
    (["--allow-route-regexp", "("], "not a valid regular expression"),
    (["--app-port", "70000"], "70000"),
    (["--session-refresh", "2h"], "--session-refresh must be shorter"),
    (["--session-duration", "15m", "--session-refresh", "14m30s"], "by more than 60s"),
    (["--session-duration", "5m", "--session-refresh", "1m"], "between 15m and 12h"),
    (["--log-format", "xml"], "xml"),
    (["--iptables-check-interval", "0s"], "--iptables-check-interval must be longer than 0s"),
    (["--metrics-bind-address", "all"], "'all' is not an IPv4 or IPv6 address"),
    (["--region", "Virginia"], "--region: 'Virginia' is not an AWS region name"),
])
def test_bad_flags_are_refused_clearly(args: list[str], message: str) -> None:
    code, out = run("agent", "--node", "n1", *args)
    assert code == 2
    assert message in out


def test_version() -> None:
    code, out = run("--version")
    assert code == 0
    assert "podiam" in out


@pytest.mark.parametrize(("args", "env", "seconds"), [
    ([], {}, 5.0),
    (["--iptables-check-interval", "2500ms"], {}, 2.5),
    ([], {"PODIAM_IPTABLES_CHECK_INTERVAL": "1m"}, 60.0),
])
def test_the_iptables_check_interval_reaches_the_node_settings(
    args: list[str], env: dict[str, str], seconds: float
) -> None:
    command = main.commands["agent"]
    with CliRunner().isolation(env=env):  # click's own environment for the parse, nothing patched
        params = command.make_context("agent", ["--node", "n1", *args]).params
    assert agent_settings(params, {}).node.iptables_check_interval == seconds
    assert "PODIAM_IPTABLES_CHECK_INTERVAL" in run("agent", "--help")[1]


SPLIT = ("agent", "--node", "n1", "--server-address", "podiam:9610", "--cert", "a.crt", "--key", "a.key",
         "--ca", "ca.crt")


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--base-role-arn", "arn:aws:iam::123456789012:role/"], {}, "--base-role-arn"),
    (["--default-role", "r"], {}, "--default-role"),
    (["--namespace-restrictions"], {}, "--namespace-restrictions"),
    (["--host-network-role", "r"], {}, "--host-network-role"),
    (["--session-duration", "2h"], {}, "--session-duration"),
    (["--no-pod-events"], {}, "--no-pod-events"),
    (["--disable-strict-namespace-regexp"], {}, "--disable-strict-namespace-regexp"),
    (["--region", "eu-west-1"], {}, "--region"),
    (["--fetchers", "4"], {}, "--fetchers"),
    ([], {"PODIAM_IAM_ROLE_KEY": "x"}, "--iam-role-key"),  # from the environment too
])
def test_a_split_mode_agent_refuses_the_servers_flags(args: list[str], env: dict[str, str], named: str) -> None:
    code, out = run(*SPLIT, *args, env=env)
    assert code == 2
    assert named in out and "podiam server" in out


def test_a_split_mode_agent_needs_its_certificate() -> None:
    code, out = run("agent", "--node", "n1", "--server-address", "podiam:9610")
    assert code == 2
    assert "--cert, --key, --ca" in out


def test_server_addresses_are_lists_or_dns_names() -> None:
    assert parse_addresses("a:1, dns:///podiam.ns:9610") == ("a:1", "dns:///podiam.ns:9610")
    assert host_of("dns:///podiam.ns:9610") == "podiam.ns"
    with pytest.raises(ConfigError):
        parse_addresses("no-port")


def test_the_server_needs_its_certificates() -> None:
    code, out = run("server")
    assert code == 2
    assert "--cert" in out


@pytest.mark.parametrize("command", ["agent", "server", "explain"])
def test_every_policy_command_has_the_kiam_regexp_flag(command: str) -> None:
    assert "PODIAM_DISABLE_STRICT_NAMESPACE_REGEXP" in run(command, "--help")[1]


def test_disable_strict_namespace_regexp_reaches_the_restriction_settings() -> None:
    command = main.commands["agent"]
    with CliRunner().isolation(env={}):
        strict = command.make_context("agent", ["--node", "n1"]).params
        loose = command.make_context("agent", ["--node", "n1", "--disable-strict-namespace-regexp"]).params
    assert agent_settings(strict, {}).restrictions.strict_permitted_regexp
    assert not agent_settings(loose, {}).restrictions.strict_permitted_regexp


SERVER = ("server", "--cert", "s.crt", "--key", "s.key", "--ca", "ca.crt")


@pytest.mark.parametrize(("args", "message"), [
    (["--assume-role-arn", "not-an-arn"], "is not a role ARN"),
    (["--assume-role-arn", "arn:aws:iam::123456789012:role/chain", "--session-duration", "2h"], "at most 1h"),
])
def test_the_server_refuses_a_bad_assume_role_arn(args: list[str], message: str) -> None:
    code, out = run(*SERVER, *args)
    assert code == 2
    assert message in out


@pytest.mark.parametrize(("args", "env", "mode"), [
    ([], {}, "auto"),
    (["--iptables-mode", "legacy"], {}, "legacy"),
    ([], {"PODIAM_IPTABLES_MODE": "nft"}, "nft"),
])
def test_the_iptables_mode_reaches_the_node_settings(args: list[str], env: dict[str, str], mode: str) -> None:
    command = main.commands["agent"]
    with CliRunner().isolation(env=env):
        params = command.make_context("agent", ["--node", "n1", *args]).params
    assert agent_settings(params, {}).node.iptables_mode == mode


def test_an_unknown_iptables_mode_is_refused() -> None:
    code, out = run("agent", "--node", "n1", "--iptables-mode", "nftables")
    assert code == 2
    assert "'nftables' is not one of 'auto', 'nft', 'legacy'" in out


@pytest.mark.parametrize(("args", "env", "key"), [
    ([], {}, None),
    (["--node-ready-taint", "podiam.io/agent-not-ready"], {}, "podiam.io/agent-not-ready"),
    ([], {"PODIAM_NODE_READY_TAINT": "agent-not-ready"}, "agent-not-ready"),
])
def test_the_node_ready_taint_reaches_the_agent_settings(args: list[str], env: dict[str, str],
                                                         key: str | None) -> None:
    command = main.commands["agent"]
    with CliRunner().isolation(env=env):
        params = command.make_context("agent", ["--node", "n1", "--iptables", "--host-ip", "10.0.0.5", *args]).params
    assert agent_settings(params, {}).ready_taint.key == key


@pytest.mark.parametrize(("args", "env", "fetchers"), [
    ([], {}, 8),
    (["--fetchers", "3"], {}, 3),
    ([], {"PODIAM_FETCHERS": "20"}, 20),
])
def test_the_agent_bounds_its_sts_calls_by_fetchers(args: list[str], env: dict[str, str], fetchers: int) -> None:
    command = main.commands["agent"]
    with CliRunner().isolation(env=env):
        params = command.make_context("agent", ["--node", "n1", *args]).params
    assert agent_settings(params, {}).sts.fetchers == fetchers


@pytest.mark.parametrize("command", [("agent", "--node", "n1"), SERVER])
@pytest.mark.parametrize("value", ["0", "50", "x"])
def test_fetchers_outside_one_to_the_pool_size_are_refused(command: tuple[str, ...], value: str) -> None:
    code, out = run(*command, "--fetchers", value, "--check-config")
    assert code == 2
    assert "--fetchers" in out


@pytest.mark.parametrize("command", [("agent", "--node", "n1"), SERVER])
@pytest.mark.parametrize("key", ["", "-starts-with-a-dash", "Upper.Case.Prefix/name", "a/b/c", "x" * 64, "/name"])
def test_a_malformed_node_ready_taint_is_refused(command: tuple[str, ...], key: str) -> None:
    code, out = run(*command, "--node-ready-taint", key)
    assert code == 2
    assert "is not a taint key" in out


def test_a_split_mode_agent_leaves_the_node_ready_taint_to_the_server() -> None:
    # The server removes it, with its own key: an agent can never name the taint to remove.
    code, out = run(*SPLIT, "--node-ready-taint", "podiam.io/agent-not-ready")
    assert code == 2
    assert "--node-ready-taint" in out and "podiam server" in out


def test_the_node_ready_taint_needs_the_rule() -> None:
    # Without --iptables, ready would not mean that pods' metadata traffic reaches the agent.
    code, out = run("agent", "--node", "n1", "--node-ready-taint", "podiam.io/agent-not-ready")
    assert code == 2
    assert "--node-ready-taint needs --iptables" in out


@pytest.mark.parametrize(("args", "env", "region"), [
    ([], {}, None),
    ([], {"AWS_DEFAULT_REGION": "eu-west-1"}, "eu-west-1"),
    ([], {"AWS_REGION": "eu-central-1", "AWS_DEFAULT_REGION": "eu-west-1"}, "eu-central-1"),
    (["--region", "us-gov-west-1"], {"AWS_REGION": "eu-central-1"}, "us-gov-west-1"),  # kiam's flag first
])
def test_the_sts_region_is_the_flag_then_the_environment(args: list[str], env: dict[str, str],
                                                         region: str | None) -> None:
    command = main.commands["agent"]
    with CliRunner().isolation(env={}):
        params = command.make_context("agent", ["--node", "n1", *args]).params
    assert agent_settings(params, env).sts.region == region
