"""
Command line: flags and environment variables -> settings -> runner. Nothing else in
podiam reads the environment (botocore's own AWS_* variables aside, on purpose).

Every flag is also settable as PODIAM_<FLAG_IN_UPPER_SNAKE>; kube2iam's and kiam's flag
names are accepted where they mean the same thing, so existing DaemonSets move over.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Collection, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from podiam import __version__
from podiam.errors import ConfigError, PodiamError
from podiam.observability import logging as podiam_logging
from podiam.policy import ROLE_ARN_RE
from podiam.settings import (
    DEFAULT_ALLOW_ROUTE_REGEXP,
    DEFAULT_CA_DAYS,
    DEFAULT_DAYS,
    DEFAULT_NAMESPACE,
    IPTABLES_MODES,
    AgentSettings,
    ExplainSettings,
    ImdsSettings,
    KubeSettings,
    LogSettings,
    MetricsSettings,
    NodeSettings,
    ReadyTaintSettings,
    RemoteSettings,
    RestrictionSettings,
    RoleSettings,
    ServerSettings,
    StsSettings,
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration (``1h``, ``30m``, ``800ms``, ``1h30m``) or a plain number."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        if not value:
            raise ValueError("empty duration") from None
        while pos < len(value):
            m = _DURATION_PART.match(value, pos)
            if m is None:
                raise ValueError(f"{text!r} is not a duration like 1h, 30m, 800ms or 1h30m") from None
            seconds += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
    if not 0 <= seconds < float("inf"):  # also refuses NaN
        raise ValueError(f"{text!r} is not a finite, non-negative duration")
    return seconds


class Duration(click.ParamType[float]):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class IpAddress(click.ParamType[str]):
    name = "address"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(ipaddress.ip_address(str(value)))
        except ValueError:
            self.fail(f"{value!r} is not an IPv4 or IPv6 address", param, ctx)


class Regexp(click.ParamType[str]):
    name = "regexp"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            re.compile(str(value))
        except re.error as e:
            self.fail(f"{value!r} is not a valid regular expression: {e}", param, ctx)
        return str(value)


DURATION = Duration()


def _env(flag: str, *extra: str) -> list[str]:
    name = flag.split("/", 1)[0]  # "iptables/--no-iptables" -> PODIAM_IPTABLES
    return ["PODIAM_" + name.upper().replace("-", "_"), *extra]


_F = TypeVar("_F", bound=Callable[..., Any])


def _opt(flag: str, *aliases: str, env_extra: tuple[str, ...] = (), **kwargs: Any) -> Callable[[_F], _F]:
    """An option named ``--flag`` (plus aliases) with its PODIAM_ env var and the default shown."""
    kwargs.setdefault("show_default", True)
    return click.option(f"--{flag}", *aliases, envvar=_env(flag, *env_extra), show_envvar=True, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="podiam")
def main() -> None:
    """podiam: per-pod AWS IAM credentials for Kubernetes, served like the EC2 metadata service."""


_POLICY_OPTIONS = [
    _opt("kubeconfig", type=click.Path(dir_okay=False), default=None,
        help="kubeconfig for API access [default: in-cluster config, else $KUBECONFIG, else ~/.kube/config]"),
    _opt("base-role-arn", "--role-base-arn", type=str, default=None,
        help="Prefix for role names that are not ARNs, e.g. arn:aws:iam::123456789012:role/ (kiam: --role-base-arn)."),
    _opt("auto-discover-base-arn", "--role-base-arn-autodetect", is_flag=True, default=False,
        help="Take account and partition for the base ARN from the node's IMDS iam/info."),
    _opt("default-role", type=str, default=None,
        help="Role (name or ARN) for pods without the role annotation. Unset: such pods get 404."),
    _opt("iam-role-key", type=str, default="iam.amazonaws.com/role",
        help="Pod annotation holding a role name or a full role ARN."),
    _opt("iam-external-id", type=str, default="iam.amazonaws.com/external-id",
        help="Pod annotation holding an STS ExternalId."),
    _opt("namespace-restrictions", is_flag=True, default=False,
        help="Serve a role only if the pod's namespace permits it (kube2iam's or kiam's annotation). Recommended."),
    _opt("namespace-key", type=str, default="iam.amazonaws.com/allowed-roles",
        help="kube2iam's namespace annotation: a JSON list of role names, ARNs or patterns."),
    _opt("namespace-restriction-format", type=click.Choice(["glob", "regexp"]), default="glob",
        help="How --namespace-key entries match the role ARN: glob ('*' only) or an unanchored regexp."),
    _opt("namespace-permitted-key", type=str, default="iam.amazonaws.com/permitted",
        help="kiam's namespace annotation: a regexp over the whole role ARN."),
    _opt("disable-strict-namespace-regexp", is_flag=True, default=False,
        help="kiam's flag: the --namespace-permitted-key regexp may match anywhere in the role ARN, not only "
        "the whole of it. Loosens every such namespace; for clusters migrated from kiam with this flag."),
    _opt("default-role-bypasses-restrictions", is_flag=True, default=False,
        help="Serve the default role whatever the namespace permits (kube2iam's behaviour)."),
    _opt("host-network-role", type=str, default=None,
        help="Role for callers on the node's own network (hostNetwork pods, the node). Unset: they get 403."),
    _opt("session-tags", is_flag=True, default=False,
        help="Tag STS sessions with kubernetes-namespace, -pod-name, -pod-uid, -service-account (ABAC)."),
    _opt("session-duration", type=DURATION, default="1h",
        help="STS session duration (DurationSeconds): how long issued credentials are valid."),
    _opt("session-refresh", type=DURATION, default="30m",
        help="Refresh credentials in the background when less than this remains."),
    _opt("sts-timeout", type=DURATION, default="5s", help="Deadline of one AssumeRole call, retries included."),
    _opt("iam-role-error-ttl", type=DURATION, default="10s",
        help="How long an STS error for one identity is answered from memory before STS is asked again."),
    _opt("region", type=str, default=None, show_default=False,
        help="AWS region of STS calls [default: AWS_REGION, else AWS_DEFAULT_REGION, else the node's placement]"),
    _opt("use-regional-sts-endpoint", is_flag=True, default=False,
        help="Use the regional STS endpoint of the region (--region / AWS_REGION / AWS_DEFAULT_REGION / placement)."),
    _opt("metadata-addr", type=str, default="169.254.169.254",
        help="The node's real metadata service, host or host:port, for allow-listed paths only."),
]
"""Flags that decide what a pod gets: shared by `agent` and `explain`, so they agree."""


def _policy_options(f: _F) -> _F:
    for option in reversed(_POLICY_OPTIONS):
        f = option(f)
    return f


_NODE_READY_TAINT = _opt(
    "node-ready-taint", type=str, default=None, show_default=False,
    help="Taint key (e.g. podiam.io/agent-not-ready) that nodes join with (NoSchedule) and that is removed from a "
    "node once its agent is ready (rule installed, pods known), so no pod runs there before. Needs get and patch on "
    "nodes. Split mode: a flag of `podiam server`, which removes it when the node's agent reports ready.")
"""The node's start-up taint: the agent's in agent mode, the server's in split mode (the agent has no API access)."""

_FETCHERS = _opt(
    "fetchers", type=click.IntRange(min=1, max=StsSettings.max_pool_connections - 1), default=StsSettings.fetchers,
    help="STS calls in flight at once (prefetches, refreshes, requests); more wait in arrival order, so that a "
    "burst of new pods is served first come, first served. Split mode: a flag of `podiam server`.")
"""kiam's server flag, in both modes: whoever calls STS bounds its calls (the agent in agent mode)."""

# No environment variable, on purpose: one left set in a manifest would make every start a no-op.
_CHECK_CONFIG = click.option(
    "--check-config", is_flag=True, default=False,
    help="Parse and check every flag and variable (and split mode's certificate files), print one line and "
    "exit: 0 if a start would accept them, 2 with the error. Touches no network, iptables or API.")


@main.command()
@_policy_options
@_opt("node", type=str, default=None, env_extra=("NODE_NAME",), show_default=False,
      help="Name of this node; only pods bound to it are watched and served. Required.")
@_opt("app-port", "--port", type=click.IntRange(1, 65535), default=8181,
      help="Port of the metadata endpoint the DNAT rule sends pods to (kiam: --port).")
@_opt("host-ip", "--host", type=str, default=None, env_extra=("HOST_IP",),
      help="Node IP the DNAT rule sends pod metadata traffic to (kiam: --host).")
@_opt("host-interface", type=str, default="docker0",
      help="Pod-facing interface(s) for the DNAT rule: a name, a 'cali+' wildcard or '!eth0' negation.")
@_opt("iptables/--no-iptables", default=False,
      help="Install the DNAT rule at start (idempotent) and remove it at shutdown.")
@_opt("iptables-check-interval", type=DURATION, default="5s",
      help="How often the DNAT rule is checked and, if something deleted it, restored (with --iptables).")
@_opt("iptables-mode", type=click.Choice(IPTABLES_MODES), default="auto",
      help="The iptables backend for the rule, as the node's kube-proxy and CNI use: nft, legacy, or auto (the one "
      "holding the node's rules: kubelet's KUBE-IPTABLES-HINT chain first, then the rule counts, as Kubernetes' "
      "iptables-wrapper decides). Decided once at start and logged.")
@_NODE_READY_TAINT
@_FETCHERS
@_opt("http-server", type=click.Choice(["fast", "aiohttp"]), default="fast",
      help="The metadata endpoint's HTTP server: the dedicated fast path, or aiohttp (same behaviour).")
@_opt("require-imdsv2", is_flag=True, default=False,
      help="Refuse token-less metadata requests (401), as an instance with IMDSv2 required does.")
@_opt("pod-rate-limit", type=click.FloatRange(min=0), default=100.0,
      help="Requests per second one pod may make (burst twice that, at least 1); beyond it 429. 0 disables.")
@_opt("max-connections-per-ip", type=click.IntRange(min=1), default=256,
      help="Open connections one source IP may hold on the metadata endpoint; beyond it 503 and close.")
@_opt("pod-events/--no-pod-events", default=True,
      help="Record Warning events on pods that are refused or fail (needs create/patch on events).")
@_opt("pod-wait", type=DURATION, default="800ms",
      help="How long a request from an IP not yet in the pod index waits for the pod watch.")
@_opt("allow-route-regexp", "--whitelist-route-regexp", type=Regexp(), default=DEFAULT_ALLOW_ROUTE_REGEXP,
      help="Non-IAM paths matching this are proxied to the real metadata service; all else is 404. "
      "Default: SDK region discovery only (placement/*, dynamic/instance-identity/document).")
@_opt("metrics-port", type=click.IntRange(1, 65535), default=9181,
      help="Port of /metrics, /healthz and /readyz; never the app port pods can reach.")
@_opt("metrics-bind-address", type=IpAddress(), default="0.0.0.0",  # noqa: S104 - scraped from other nodes
      help="Address the metrics port listens on: all by default, so Prometheus can scrape the node; "
      "127.0.0.1 or the node's IP narrows who can read the metrics.")
@_opt("debug", is_flag=True, default=False,
      help="Serve /debug/pods (pod index and cache state, no secrets) on the metrics port, to loopback callers only.")
@_opt("audit-log", type=str, default=None,
      help="Write one JSON record per credential issuance to this file ('-': stdout) [default: the log stream].")
@_opt("shutdown-grace", type=DURATION, default="5s", help="Time in-flight requests get to finish at shutdown.")
@_opt("log-format", type=click.Choice(["text", "json"]), default="text", help="Log format.")
@_opt("log-level", "--level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
      default="info", help="Log level. Served requests are logged at debug only; issuances and refusals at info.")
@_opt("server-address", type=str, default=None, show_default=False,
      help="Split mode: podiam servers to stream this node from (host:port, a comma-separated list, or "
      "dns:///name:port); the agent then holds no AWS or Kubernetes credentials.")
@_opt("cert", type=click.Path(dir_okay=False), default=None, show_default=False,
      help="Split mode: PEM client certificate of this agent.")
@_opt("key", type=click.Path(dir_okay=False), default=None, show_default=False,
      help="Split mode: PEM private key of --cert.")
@_opt("ca", type=click.Path(dir_okay=False), default=None, show_default=False,
      help="Split mode: PEM CA bundle that signs the servers' certificates.")
@_opt("server-name", type=str, default=None, show_default=False,
      help="Split mode: the name the server's certificate must carry [default: the address's host].")
@_CHECK_CONFIG
def agent(*, check_config: bool, **flags: Any) -> None:
    """Serve pods on this node their own IAM role's credentials (kube2iam's architecture)."""
    ctx = click.get_current_context()
    given = {name for name in flags if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    try:
        settings = agent_settings(flags, os.environ, given)
        if check_config:
            from podiam.config_check import check_agent  # noqa: PLC0415 - loads split mode's TLS checks

            click.echo(check_agent(settings))
            return
        podiam_logging.configure(settings.log)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    from podiam.runner import Agent  # noqa: PLC0415 - imported late: `podiam --help` stays fast

    _run_command("agent", Agent(settings).run())


def _positive(flags: dict[str, Any], name: str) -> float:
    value: float = flags[name]
    if value <= 0:
        raise ConfigError(f"--{name.replace('_', '-')} must be longer than 0s")
    return value


REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}", re.ASCII)
"""An AWS region's name: us-east-1, eu-central-2, us-gov-west-1, cn-northwest-1."""


def _region(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """--region (kiam's flag), then AWS_REGION: most SDKs read it; botocore alone reads only AWS_DEFAULT_REGION."""
    if flag is not None and not REGION_RE.fullmatch(flag):
        raise ConfigError(f"--region: {flag!r} is not an AWS region name (like us-east-1)")
    return flag or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None


def _role_settings(flags: dict[str, Any]) -> RoleSettings:
    return RoleSettings(
        base_role_arn=flags["base_role_arn"],
        auto_discover_base_arn=flags["auto_discover_base_arn"],
        default_role=flags["default_role"],
        role_key=flags["iam_role_key"],
        external_id_key=flags["iam_external_id"],
        session_tags=flags["session_tags"],
        host_network_role=flags["host_network_role"],
    )


def _restriction_settings(flags: dict[str, Any]) -> RestrictionSettings:
    return RestrictionSettings(
        enabled=flags["namespace_restrictions"],
        namespace_key=flags["namespace_key"],
        format=flags["namespace_restriction_format"],
        permitted_key=flags["namespace_permitted_key"],
        strict_permitted_regexp=not flags["disable_strict_namespace_regexp"],
        default_role_bypasses=flags["default_role_bypasses_restrictions"],
    )


def _sts_settings(flags: dict[str, Any], environ: Mapping[str, str], **server: Any) -> StsSettings:
    """``server``: StsSettings fields of flags outside the policy options (fetchers, assume_role_arn)."""
    settings = StsSettings(
        session_duration=flags["session_duration"],
        session_refresh=flags["session_refresh"],
        call_timeout=flags["sts_timeout"],
        error_ttl=flags["iam_role_error_ttl"],
        region=_region(flags["region"], environ),
        regional_endpoint=flags["use_regional_sts_endpoint"],
        **server,
    )
    # Refresh against duration is StsSettings' own check, made above; STS's limits are the
    # CLI's alone, as moto (tests, the benchmarks' accelerated clock) takes shorter sessions.
    if settings.session_duration < 900 or settings.session_duration > 43200:
        raise ConfigError("--session-duration must be between 15m and 12h (STS limits)")
    return settings


def _assume_role_arn(flags: dict[str, Any]) -> str | None:
    chain: str | None = flags["assume_role_arn"]
    if chain is not None and not ROLE_ARN_RE.fullmatch(chain):
        raise ConfigError(f"--assume-role-arn: {chain!r} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    return chain


SERVER_POLICY_FLAGS = (
    "kubeconfig", "base_role_arn", "auto_discover_base_arn", "default_role", "default_role_bypasses_restrictions",
    "namespace_restrictions", "namespace_key", "namespace_restriction_format", "namespace_permitted_key",
    "disable_strict_namespace_regexp",
    "iam_role_key", "iam_external_id", "host_network_role", "session_duration", "session_refresh", "session_tags",
    "sts_timeout", "iam_role_error_ttl", "region", "use_regional_sts_endpoint", "fetchers", "pod_events",
    "node_ready_taint",
)
"""Agent flags that are the server's in split mode: the agent holds no policy, STS or API access."""


def _remote_settings(flags: dict[str, Any], given: Collection[str]) -> RemoteSettings | None:
    if not flags.get("server_address"):
        for flag in ("cert", "key", "ca", "server_name"):
            if flags.get(flag):
                raise ConfigError(f"--{flag.replace('_', '-')} is for split mode: give --server-address too")
        return None
    server_side = [name for name in SERVER_POLICY_FLAGS if name in given]
    if server_side:
        names = ", ".join("--" + ("no-pod-events" if n == "pod_events" else n.replace("_", "-")) for n in server_side)
        raise ConfigError(f"with --server-address the policy is the server's: give {names} to `podiam server`")
    missing = [f"--{flag}" for flag in ("cert", "key", "ca") if not flags.get(flag)]
    if missing:
        raise ConfigError(f"--server-address needs {', '.join(missing)} (mutual TLS only)")
    from podiam.remote.client import parse_addresses  # noqa: PLC0415 - grpc loads in split mode only

    return RemoteSettings(addresses=parse_addresses(flags["server_address"]), cert=flags["cert"], key=flags["key"],
                          ca=flags["ca"], server_name=flags.get("server_name"))


def agent_settings(flags: dict[str, Any], environ: Mapping[str, str], given: Collection[str] = ()) -> AgentSettings:
    """Settings from parsed flags; ``environ`` only for the AWS region, which botocore reads alone otherwise.
    ``given``: the flags set on the command line or in the environment (split mode refuses policy flags)."""
    if not flags["node"]:
        raise ConfigError("--node (or NODE_NAME) is required: the agent serves the pods of one node")
    remote = _remote_settings(flags, given)
    return AgentSettings(
        remote=remote,
        kube=KubeSettings(node_name=flags["node"], kubeconfig=flags["kubeconfig"]),
        roles=_role_settings(flags),
        restrictions=_restriction_settings(flags),
        sts=_sts_settings(flags, environ, fetchers=flags["fetchers"]),
        imds=ImdsSettings(
            app_port=flags["app_port"],
            server=flags["http_server"],
            metadata_addr=flags["metadata_addr"],
            allow_route_regexp=flags["allow_route_regexp"],
            require_imdsv2=flags["require_imdsv2"],
            pod_wait=flags["pod_wait"],
            pod_rate_limit=flags["pod_rate_limit"],
            max_connections_per_ip=flags["max_connections_per_ip"],
            shutdown_grace=flags["shutdown_grace"],
        ),
        node=NodeSettings(host_ip=flags["host_ip"], host_interface=flags["host_interface"],
                          iptables=flags["iptables"], pod_events=flags["pod_events"],
                          iptables_check_interval=_positive(flags, "iptables_check_interval"),
                          iptables_mode=flags["iptables_mode"]),
        ready_taint=ReadyTaintSettings(key=flags["node_ready_taint"]),
        log=LogSettings(format=flags["log_format"], level=flags["log_level"].lower(), audit_log=flags["audit_log"]),
        metrics=MetricsSettings(port=flags["metrics_port"], debug=flags["debug"],
                                bind_address=flags["metrics_bind_address"]),
    )


@main.command()
@_policy_options
@_opt("bind", type=str, default="0.0.0.0:9610", help="host:port of the gRPC service agents stream from.")
@_opt("cert", type=click.Path(dir_okay=False), required=True, show_default=False,
      help="PEM certificate of this server (reloaded when the file changes).")
@_opt("key", type=click.Path(dir_okay=False), required=True, show_default=False, help="PEM private key of --cert.")
@_opt("ca", type=click.Path(dir_okay=False), required=True, show_default=False,
      help="PEM CA bundle that signs agent certificates (client certificates are required).")
@_FETCHERS
@_opt("assume-role-arn", type=str, default=None, show_default=False,
      help="kiam's chain: first assume this role, then the pod roles with its credentials (refreshed ahead of "
      "expiry). AWS caps such chained sessions at 1h, so --session-duration must be at most 1h.")
@_opt("pod-events/--no-pod-events", default=True,
      help="Record Warning events on pods that are refused (needs create/patch on events).")
@_NODE_READY_TAINT
@_opt("metrics-port", type=click.IntRange(1, 65535), default=9620, help="Port of /metrics, /healthz and /readyz.")
@_opt("metrics-bind-address", type=IpAddress(), default="0.0.0.0",  # noqa: S104 - scraped from other nodes
      help="Address the metrics port listens on.")
@_opt("log-format", type=click.Choice(["text", "json"]), default="text", help="Log format.")
@_opt("log-level", "--level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
      default="info", help="Log level.")
@_CHECK_CONFIG
def server(*, check_config: bool, **flags: Any) -> None:
    """Split mode's server: watch every pod, assume their roles, stream each node's agent its pods."""
    try:
        sts = _sts_settings(flags, os.environ, assume_role_arn=_assume_role_arn(flags), fetchers=flags["fetchers"])
        settings = ServerSettings(
            kube=KubeSettings(node_name="", kubeconfig=flags["kubeconfig"]),
            cert=flags["cert"], key=flags["key"], ca=flags["ca"], bind=flags["bind"],
            roles=_role_settings(flags), restrictions=_restriction_settings(flags),
            sts=sts,
            log=LogSettings(format=flags["log_format"], level=flags["log_level"].lower()),
            metrics=MetricsSettings(port=flags["metrics_port"], bind_address=flags["metrics_bind_address"]),
            metadata_addr=flags["metadata_addr"], pod_events=flags["pod_events"],
            ready_taint=ReadyTaintSettings(key=flags["node_ready_taint"]),
        )
        if check_config:
            from podiam.config_check import check_server  # noqa: PLC0415 - loads the TLS checks

            click.echo(check_server(settings))
            return
        podiam_logging.configure(settings.log)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    from podiam.server_runner import Server  # noqa: PLC0415 - imported late: `podiam --help` stays fast

    _run_command("server", Server(settings).run())


@main.command()
@click.argument("pod", required=False)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of POD.")
@click.option("--ip", help="Explain the pod with this IP instead of naming it (what the agent sees).")
@click.option("--node", envvar=["PODIAM_NODE", "NODE_NAME"], default=None,
              help="Explain as the agent on this node would: pods elsewhere are never its to serve.")
@click.option("--assume", is_flag=True, help="Also make the AssumeRole call and report the result.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_policy_options
def explain(*, pod: str | None, namespace: str, ip: str | None, node: str | None, assume: bool, output: str,
            **flags: Any) -> None:
    """What the agent, with these flags, would answer POD (or the pod with --ip), and why.

    Exit status 0 when the pod would get credentials, 1 when not, 2 for a usage error.
    """
    if (pod is None) == (ip is None):
        raise click.UsageError("name a POD or give --ip, not both")
    try:
        settings = ExplainSettings(
            kube=KubeSettings(node_name=node or "", kubeconfig=flags["kubeconfig"]),
            roles=_role_settings(flags),
            restrictions=_restriction_settings(flags),
            sts=_sts_settings(flags, os.environ),
            metadata_addr=flags["metadata_addr"],
        )
        if assume and settings.sts.region is None:
            raise click.UsageError("--assume needs a region: --region, or AWS_REGION (or AWS_DEFAULT_REGION)")
        # The report is the output: the agent's own warnings (e.g. the namespace index's about a
        # malformed annotation, which the report lists as a failed check) go to stderr, errors only.
        podiam_logging.configure(LogSettings(level="error"))
        from podiam.explain import explain as run_explain  # noqa: PLC0415 - keeps `--help` fast

        result = asyncio.run(run_explain(settings, namespace=namespace, name=pod, ip=ip, assume=assume))
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except PodiamError as e:
        click.echo(f"podiam explain: {e}", err=True)
        sys.exit(1)
    click.echo(result.to_json() if output == "json" else result.to_text())
    sys.exit(0 if result.gets_credentials else 1)


def _run_command(command: str, coro: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived command; its errors as a user sees them: exit 2 for configuration, 1 otherwise."""
    try:
        _run(coro)
    except ConfigError as e:
        click.echo(f"podiam {command}: configuration error: {e}", err=True)
        sys.exit(2)
    except PodiamError as e:
        click.echo(f"podiam {command}: {e}", err=True)
        sys.exit(1)


def _run(coro: Any) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional: the fastest loop where installed
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _certs_opt(flag: str, *decls: str, **kwargs: Any) -> Callable[[_F], _F]:
    """As _opt, under PODIAM_CERTS_: a generic PODIAM_NAMESPACE or PODIAM_FORCE could be another command's."""
    kwargs.setdefault("show_default", True)
    return click.option(f"--{flag}", *decls, envvar="PODIAM_CERTS_" + flag.upper().replace("-", "_"),
                        show_envvar=True, **kwargs)


@main.group()
def certs() -> None:
    """Certificates for split mode's mutual TLS (server and agents)."""


@certs.command("init")
@_certs_opt("out", type=click.Path(file_okay=False, path_type=Path), required=True,
            help="Directory to write into; created (0700) if missing.")
@_certs_opt("server-dns", multiple=True, default=(), show_default=False,
            help="Extra DNS name for the server certificate (repeatable; space-separated in the variable), besides "
            "podiam-server, podiam-server.NS, podiam-server.NS.svc and podiam-server.NS.svc.cluster.local.")
@_certs_opt("server-ip", type=IpAddress(), multiple=True, default=(), show_default=False,
            help="IP address for the server certificate (repeatable; space-separated in the variable), for agents "
            "that dial an address.")
@_certs_opt("namespace", default=DEFAULT_NAMESPACE,
            help="The server's namespace: in its default DNS names, and the Secrets' namespace.")
@_certs_opt("days", type=int, default=DEFAULT_DAYS, help="Validity of the server and agent certificates, in days.")
@_certs_opt("ca-days", type=int, default=DEFAULT_CA_DAYS, help="Validity of the CA, in days (at least --days).")
@_certs_opt("format", "output_format", type=click.Choice(["files", "kubernetes"]), default="files",
            help="files: PEM files DIR/{ca,server,agent}/tls.crt, tls.key (and ca.crt). kubernetes: Secret "
            "manifests (JSON) DIR/podiam-server-tls.json, DIR/podiam-agent-tls.json, DIR/ca/podiam-ca.json.")
@_certs_opt("force", is_flag=True, default=False, help="Replace files that exist instead of refusing.")
def certs_init(*, out: Path, server_dns: tuple[str, ...], server_ip: tuple[str, ...], namespace: str, days: int,
               ca_days: int, output_format: str, force: bool) -> None:
    """Write a new CA, a server certificate (serverAuth) and an agent certificate (clientAuth).

    Keys are ECDSA P-256, written 0600. The files are named as cert-manager names a
    Certificate's Secret keys, so the server and agent take cert-manager's Secrets too.

    With --format kubernetes, `kubectl apply -f DIR/` applies the server's and the agent's
    Secrets; the CA's (DIR/ca/) is applied only on purpose, for a cert-manager CA Issuer.

    Rotation: first give every server and agent a ca.crt holding the old and the new CA,
    then replace the leaves (tls.crt, tls.key), then drop the old CA from ca.crt.
    docs/split-mode-certificates.md has the commands.
    """
    # Imported here: cryptography (~9 MiB resident) is for this command and the server, not the agent.
    from podiam.certs import CertSpec, create, write_tree  # noqa: PLC0415

    try:
        spec = CertSpec(server_dns=tuple(name.lower() for name in server_dns),
                        server_ips=tuple(ipaddress.ip_address(ip) for ip in server_ip),
                        namespace=namespace, days=days, ca_days=ca_days)
        bundle = create(spec, datetime.datetime.now(datetime.UTC))
        files = bundle.files() if output_format == "files" else bundle.secrets(namespace)
        written = write_tree(out, files, force=force)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    for path in written:
        click.echo(path)
