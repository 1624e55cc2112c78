"""
Settings: frozen dataclasses, one group per concern, assembled per command.

The CLI (cli.py) is the only place that reads flags and the environment; it builds these
objects and everything else receives them. Durations are float seconds everywhere.
Every default is documented on its field, with the reason for the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from podiam.errors import ConfigError

DEFAULT_NAMESPACE = "kube-system"
"""`podiam certs init`'s namespace: the server's, in its certificate's DNS names and the Secrets."""
DEFAULT_DAYS = 365
"""`podiam certs init`: validity of the server and agent certificates, in days."""
DEFAULT_CA_DAYS = 3650
"""`podiam certs init`: validity of the CA, in days (replacing a CA takes a rollout; a leaf, one Secret)."""

IPTABLES_MODES = ("auto", "nft", "legacy")
"""--iptables-mode's values: the two iptables backends, or auto (the node's)."""

DEFAULT_ALLOW_ROUTE_REGEXP = r"^/[^/]+/(meta-data/placement/.*|dynamic/instance-identity/document)$"
"""Paths proxied to the node's real IMDS by default: what SDKs read to discover the region.

Everything else that is not an IAM path answers 404, so a pod never reaches the node's
user-data, its instance profile credentials or anything that identifies the node beyond
its region (kiam's stance; kube2iam proxied everything).
"""


@dataclass(frozen=True)
class KubeSettings:
    node_name: str
    """Only pods bound to this node (spec.nodeName) are watched and served."""

    kubeconfig: str | None = None
    """Path to a kubeconfig; None means in-cluster config, else KUBECONFIG / ~/.kube/config."""

    request_timeout: float = 10.0
    """Seconds for one non-watch API call (list, event write)."""

    watch_timeout: float = 290.0
    """Seconds the API server is asked to keep one watch open (timeoutSeconds).

    Below the common 5-minute idle cut of load balancers, so the watch is renewed on our
    terms, from the last resourceVersion, before something in between drops it silently.
    """

    watch_retry_initial: float = 0.2
    """Seconds: base back-off after the first failed list/watch attempt, doubling per failure.
    Short, so that one dropped connection is resumed before pods notice."""

    watch_retry_max: float = 5.0
    """Seconds: upper bound of the back-off between failed list/watch attempts."""

    watch_retry_jitter: float = 0.5
    """Fraction of a list/watch retry delay taken off at random: every node's agent loses the
    API at the same moment, and must not come back to it in lockstep."""

    watch_inactivity_margin: float = 30.0
    """Seconds past ``watch_timeout`` after which a silent watch stream is presumed dead: the
    server should have ended it by then, so something in between dropped it silently."""

    watch_unready_after: float = 30.0
    """Seconds a synced watch may keep failing before /readyz reports the agent not ready.

    The index keeps serving what it last saw, so a short API blip (a control-plane upgrade)
    should not take every agent out of service; a longer one means new pods and IP reuse
    go unseen, which an operator must be told.
    """


@dataclass(frozen=True)
class RoleSettings:
    base_role_arn: str | None = None
    """Prefix for annotation values that are not ARNs, e.g. arn:aws:iam::123456789012:role/."""

    auto_discover_base_arn: bool = False
    """Take the account and partition from the node's own IMDS iam/info at start."""

    default_role: str | None = None
    """Role (name or ARN) for pods without the role annotation; None serves them nothing."""

    role_key: str = "iam.amazonaws.com/role"
    """Pod annotation that names the role (kube2iam's and kiam's key)."""

    external_id_key: str = "iam.amazonaws.com/external-id"
    """Pod annotation holding the STS ExternalId (kube2iam's key)."""

    session_tags: bool = False
    """Tag STS sessions with kubernetes-namespace, -pod-name, -pod-uid and -service-account
    (the names EKS Pod Identity uses), so IAM policies can use them (ABAC)."""

    host_network_role: str | None = None
    """Role (name or ARN) for callers on the node's own network (hostNetwork pods, the node
    itself); None refuses them. No namespace applies: they cannot be told apart."""


@dataclass(frozen=True)
class RestrictionSettings:
    enabled: bool = False
    """Namespace restrictions: a pod may assume a role only if its namespace permits it.
    Off by default, as in kube2iam; recommended on in any shared cluster."""

    namespace_key: str = "iam.amazonaws.com/allowed-roles"
    """kube2iam's namespace annotation: a JSON list of role names, ARNs or patterns."""

    format: str = "glob"
    """How kube2iam list entries match the role ARN: ``glob`` (``*`` only) or ``regexp``
    (unanchored, as kube2iam). kiam's annotation is always an anchored regexp."""

    permitted_key: str = "iam.amazonaws.com/permitted"
    """kiam's namespace annotation: a regular expression over the whole role ARN."""

    strict_permitted_regexp: bool = True
    """kiam's regexp is anchored at both ends (kiam's default); False, kiam's
    --disable-strict-namespace-regexp: it may match anywhere in the ARN, so ``team-`` permits
    every role whose ARN contains it. Only for namespaces migrated from kiam with that flag."""

    default_role_bypasses: bool = False
    """Serve the default role whatever the namespace permits (kube2iam's behaviour)."""


@dataclass(frozen=True)
class StsSettings:
    session_duration: float = 3600.0
    """Seconds: STS DurationSeconds. One hour, so that after a refresh at 30 minutes left
    credentials handed out still have well over the 15 minutes after which SDKs (Java v1,
    boto3) refresh on every call - the failure behind kiam's 2x slowdown."""

    session_refresh: float = 1800.0
    """Seconds before expiry at which credentials are refreshed in the background.

    botocore treats credentials with 15 + (2..10) minutes or less left as due; serving them
    with 30 minutes left keeps every SDK from refreshing early.
    """

    call_timeout: float = 5.0
    """Seconds: deadline of one AssumeRole call, retries included."""

    request_wait: float = 0.7
    """Seconds a metadata request waits for an in-flight refresh of credentials that are
    still valid before it is served the old ones; below the SDKs' 1 s timeout."""

    error_ttl: float = 10.0
    """Seconds an STS error for one identity is remembered and answered from memory, so a
    failing role cannot turn pod retries into an STS request storm."""

    backoff_initial: float = 1.0
    """Seconds before the first background retry after a failed prefetch or refresh."""

    backoff_max: float = 60.0
    """Seconds: cap of the exponential back-off of background retries."""

    backoff_jitter: float = 0.25
    """Fraction by which background retry delays are shortened, at random, so that identities
    failing together (an STS outage) do not retry together."""

    refresh_jitter: float = 0.1
    """Fraction of ``session_refresh`` by which background refreshes start early, at random:
    identities fetched together (a node's start, a rollout) then do not refresh together."""

    expiry_margin: float = 60.0
    """Seconds: credentials with this little validity left are never served, so that clock
    skew and transit cannot make a pod use credentials STS already considers expired."""

    max_timer: float = 300.0
    """Seconds: the longest a cache timer sleeps before checking the wall clock again. Timers
    run on the loop's monotonic clock while expirations are wall time; a wall-clock step (NTP,
    a resumed VM) is then noticed within this bound."""

    connect_timeout: float = 1.0
    """Seconds for one TCP/TLS connect to STS (at most ``call_timeout``): a healthy endpoint
    connects in milliseconds, so a longer wait only eats the deadline a retry could use."""

    max_attempts: int = 3
    """Attempts per AssumeRole call (botocore's standard retry mode), all within call_timeout."""

    max_pool_connections: int = 50
    """Connections to STS kept open at most: more than ``fetchers``, so that a call never waits
    for a connection (botocore's default pool is 10) and the chained client of
    --assume-role-arn has its own."""

    fetchers: int = 8
    """STS calls in flight at once, prefetches, refreshes and requests together (--fetchers, 8
    as kiam's server). A node's start, or pods started together, prefetch many identities at
    once: unbounded, they share STS's capacity and all finish late together (100 calls to moto
    in 0.6 s each took 0.6-1.2 s); bounded, they are made in arrival order and the first pods
    are served first. At a 20-50 ms STS round trip, 8 make 160-400 calls/s: a node's 110 pods
    in under a second."""

    assume_role_arn: str | None = None
    """kiam's --assume-role-arn: pod roles are assumed with the credentials of this role (assumed
    first with podiam's own, refreshed ahead of expiry); None: with podiam's own. AWS caps such
    chained sessions at 1 h, so ``session_duration`` must then be at most 3600."""

    region: str | None = None
    """Region for STS; None: AWS_REGION / AWS_DEFAULT_REGION, else the node's IMDS placement."""

    regional_endpoint: bool = False
    """Use the regional STS endpoint of ``region`` instead of the global one."""

    def __post_init__(self) -> None:
        # The one check of this rule: the CLI and every other builder of settings (the
        # benchmarks' scaled agent, tests) get it by constructing the object.
        if self.assume_role_arn is not None and self.session_duration > 3600:
            raise ConfigError("--session-duration must be at most 1h with --assume-role-arn: AWS caps sessions "
                              "assumed with another role's credentials (role chaining) at 1 hour")
        if self.session_refresh + self.expiry_margin >= self.session_duration:
            raise ConfigError(
                f"--session-refresh must be shorter than --session-duration by more than {self.expiry_margin:g}s,"
                " or fresh credentials would be due for refresh at once"
            )
        if not 1 <= self.fetchers < self.max_pool_connections:
            raise ConfigError(f"--fetchers must be at least 1 and below the STS connection pool's "
                              f"{self.max_pool_connections}, not {self.fetchers}")


@dataclass(frozen=True)
class ImdsSettings:
    app_port: int = 8181
    """TCP port of the metadata endpoint the DNAT rule points at (kube2iam's default)."""

    bind_address: str = "0.0.0.0"  # noqa: S104 - pods reach us through DNAT to the host IP
    """Address the metadata endpoint listens on."""

    server: str = "fast"
    """``fast``: the dedicated httptools protocol (imds/fast_server.py); ``aiohttp``: the same
    decisions served by aiohttp, kept for comparison and as a fallback."""

    metadata_addr: str = "169.254.169.254"
    """The node's real IMDS, ``host`` or ``host:port``, for allow-listed paths only."""

    allow_route_regexp: str = DEFAULT_ALLOW_ROUTE_REGEXP
    """Regular expression over the request path; matching non-IAM paths are proxied."""

    require_imdsv2: bool = False
    """Refuse token-less metadata requests with 401, as an instance requiring IMDSv2 does."""

    pod_rate_limit: float = 100.0
    """Requests per second one pod IP may make (token bucket, burst twice that); 0 disables.
    Generous for SDKs, which ask a few times per refresh; a tight loop gets 429."""

    pod_wait: float = 0.8
    """Seconds a request from an unknown IP waits for the pod index to learn the pod.

    Pods can ask before the watch event that announces them arrives (Jobs, fast starts);
    below the SDKs' 1 s metadata timeout so that the answer still reaches them.
    """

    upstream_timeout: float = 1.0
    """Seconds: deadline of one request to the node's real IMDS."""

    shutdown_grace: float = 5.0
    """Seconds in-flight requests get to finish at shutdown."""

    max_connections_per_ip: int = 256
    """Open connections one source IP may hold on the metadata endpoint; beyond it a new one
    gets 503 and is closed. Each costs the agent memory (up to the bounds below), so without a
    cap one pod could exhaust it; SDKs hold one or a few, a busy pod a few dozen."""

    write_buffer_high: int = 64 * 1024
    """Bytes of replies buffered for one connection above which it stops being read (resumed
    below a quarter of it): a client that sends but never reads cannot grow the agent's memory.
    64 KiB holds dozens of credential replies: a client that reads never reaches it."""

    pipeline_depth: int = 32
    """Pipelined requests one connection may have waiting for replies (behind one that waits
    for STS, say) before it stops being read; resumed when half have been answered."""

    keepalive_timeout: float = 60.0
    """Seconds a connection to the metadata endpoint may sit idle, or take between a request's
    first byte and its end (fast server): an idle or trickling client cannot hold it forever."""

    listen_backlog: int = 1024
    """Connections the kernel queues before the endpoint accepts them (fast server). A node's
    pods starting at once connect at once; asyncio's default of 100 overflowed at 1,000."""

    rate_limit_tracked: int = 65536
    """Callers whose rate-limit buckets are remembered at most; past it, callers with full
    buckets are forgotten (they lose nothing). Bounds the memory a stream of new IPs can take."""

    tokens_remembered: int = 8192
    """IMDSv2 tokens remembered as verified, so repeat requests skip the HMAC; past it the
    memory is cleared (live tokens verify once more). An SDK uses one token for the two or
    three requests of a refresh."""

    rate_limit_log_interval: float = 60.0
    """Seconds between two log lines about one rate-limited caller. A flooding pod would
    otherwise write a line per request; podiam_imds_refusals_total still counts every 429."""

    replay_window: float = 1.0
    """Seconds a connection's repeat of its last request (the same bytes) may be answered with
    the last reply without being parsed and decided again (imds/core.py's Replay). Any change
    to the pod index or the credentials ends it at once, and it never outlives the request's
    token; the window bounds only how late a replay notices credentials aging past their
    refresh point (minutes before they expire)."""

    rendered_replies: int = 8192
    """Rendered credential replies kept, one per set of credentials in use, so far above need
    (past it they are dropped together: the live ones render again once). Also how many
    rate-limited callers' last log times are remembered."""

    allow_route_pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once here so the request path never compiles; a bad pattern is a
        # ConfigError raised by the CLI before this object exists.
        object.__setattr__(self, "allow_route_pattern", re.compile(self.allow_route_regexp))


@dataclass(frozen=True)
class NodeSettings:
    host_ip: str | None = None
    """Address the DNAT rule sends pod metadata traffic to (the node's IP, HOST_IP)."""

    host_interface: str = "docker0"
    """Pod-facing interface(s): a name, ``cali+`` style wildcard, or ``!eth0`` negation."""

    iptables: bool = False
    """Install the DNAT rule at start (idempotent) and remove it at shutdown."""

    pod_events: bool = True
    """Record Warning events on pods that are refused or fail (needs create/patch on events)."""

    iptables_timeout: float = 10.0
    """Seconds for one iptables command, its wait for the xtables lock included (half of it):
    another agent or kube-proxy may hold the lock, but a hung command must not hang start-up
    or shutdown."""

    iptables_check_interval: float = 5.0
    """Seconds between checks that the DNAT rule is still installed (restored if not).

    A CNI or kube-proxy restart, or someone's ``iptables -t nat -F``, can delete it; until
    it is back, pods time out or reach the node's real IMDS. Each check is one ``iptables
    -C``, cheap enough to bound that gap to a few seconds.
    """

    iptables_mode: str = "auto"
    """Which iptables backend manages the rule: ``nft`` (iptables-nft), ``legacy``
    (iptables-legacy), or ``auto``: the one that already holds the node's rules, decided once
    at start as Kubernetes' iptables-wrapper decides it (node/backend.py). A rule written with
    the other backend than the node's kube-proxy and CNI is invisible to their tools and
    evaluated in an order nobody chose."""

    def __post_init__(self) -> None:
        if self.iptables_mode not in IPTABLES_MODES:
            raise ConfigError(f"--iptables-mode must be one of {', '.join(IPTABLES_MODES)}, not {self.iptables_mode!r}")


_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_taint_key(key: str) -> None:
    """ConfigError unless ``key`` is a taint key the API server accepts: a qualified name, an
    optional DNS-subdomain prefix and ``/``, then at most 63 characters (e.g.
    ``podiam.io/agent-not-ready``)."""
    prefix, _, name = key.rpartition("/")
    if not _QUALIFIED_NAME.fullmatch(name) or (
        "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix))
    ):
        raise ConfigError(
            f"--node-ready-taint {key!r} is not a taint key: expected an optional DNS-subdomain prefix and '/', "
            "then up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
            "(e.g. podiam.io/agent-not-ready)"
        )


@dataclass(frozen=True)
class ReadyTaintSettings:
    """The node's start-up taint (node/ready_taint.py, kube/node_taint.py): nodes join with it,
    and it is removed once the agent is ready, so no pod runs before its metadata traffic is
    redirected (ANCHORS.md complaint 7)."""

    key: str | None = None
    """The taint's key (--node-ready-taint); None: nothing is removed, and no Node is read.
    Every taint with this key goes, whatever its value or effect; no other taint is touched.
    In split mode the server's setting: the agent cannot name the taint it asks to remove."""

    ready_poll: float = 0.5
    """Seconds between two looks at the agent's readiness (/readyz's decision) before the
    taint is removed: pods wait for the node that long at most, beyond the agent's start."""

    call_timeout: float = 5.0
    """Seconds: the deadline of one removal, the Node's read and its patch together (the agent
    in agent mode, the server in split mode)."""

    report_timeout: float = 10.0
    """Seconds: the deadline of a split agent's ReportReady call; longer than ``call_timeout``,
    which the server spends on the Node before it answers."""

    retry_initial: float = 0.5
    """Seconds before the first retry of a removal that failed (API error, conflict, no server)."""

    retry_max: float = 30.0
    """Seconds: the cap of the back-off between failed removals; retried until done."""

    def __post_init__(self) -> None:
        if self.key is not None:
            check_taint_key(self.key)
        if self.ready_poll <= 0 or self.call_timeout <= 0 or self.report_timeout <= self.call_timeout:
            raise ConfigError("ready-taint settings need ready_poll > 0 and 0 < call_timeout < report_timeout")


@dataclass(frozen=True)
class EventSettings:
    """How Warning Events on pods are written (kube/events.py)."""

    interval: float = 60.0
    """Seconds: at most one write per (pod, reason) per interval; repeats in between only bump
    a count (as the kubelet's recorder does), so a pod hammering the endpoint is one API write
    a minute, not one per request."""

    max_tracked: int = 10_000
    """(pod, reason) pairs remembered at most; the least recently warned is evicted. Bounds the
    memory whatever pods do; a node's pods times a few reasons each fit many times over."""

    write_timeout: float = 5.0
    """Seconds for one write, its 404/409 fallback included. The writer is sequential, so a
    hanging API server must not hold it for long."""

    flush_timeout: float = 2.0
    """Seconds the shutdown gives the writer for what is scheduled, then it is cancelled:
    Events are best effort and must not hold up the agent's stop."""

    def __post_init__(self) -> None:
        if self.max_tracked < 1:
            raise ConfigError("events: max_tracked must be at least 1")


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"
    """``text`` for people, ``json`` for log pipelines."""

    level: str = "info"
    """debug, info, warning or error. Per-request lines appear at debug only."""

    audit_log: str | None = None
    """Where issuance records go: a file path (JSON lines, appended), ``-`` for stdout, or
    None for the normal log stream."""


@dataclass(frozen=True)
class MetricsSettings:
    port: int = 9181
    """Port of /metrics, /healthz and /readyz; never the app port pods can reach."""

    debug: bool = False
    """Serve /debug/pods (the pod index and cache state, no secrets) on this port, to loopback
    callers only: it names every pod, IP and role, and pods can reach this port too."""

    bind_address: str = "0.0.0.0"  # noqa: S104 - scraped from other nodes
    """Address the metrics endpoint listens on."""


@dataclass(frozen=True)
class ReportSettings:
    """How a split agent reports its pods' refusals to the server, which writes the Warning
    events (remote/reports.py)."""

    max_pending: int = 1000
    """(pod, reason) pairs held while they wait to be sent; a new pair beyond it is dropped
    (and counted), so an unreachable server costs bounded memory."""

    batch: int = 200
    """Pairs sent in one ReportRefusals call at most."""

    call_timeout: float = 2.0
    """Seconds: deadline of one ReportRefusals call."""

    retry_initial: float = 0.5
    """Seconds before the first retry after a failed report."""

    retry_max: float = 30.0
    """Seconds: the cap of the back-off between failed reports."""

    def __post_init__(self) -> None:
        if self.max_pending < 1 or self.batch < 1 or self.call_timeout <= 0:
            raise ConfigError("report settings need max_pending >= 1, batch >= 1 and call_timeout > 0")


@dataclass(frozen=True)
class RemoteSettings:
    """Split mode's agent: where its podiam servers are and how it proves itself to them."""

    addresses: tuple[str, ...]
    """gRPC targets, tried in turn: ``host:port`` or ``dns:///name:port`` (--server-address)."""
    cert: str
    """PEM client certificate (clientAuth usage) of this agent."""
    key: str
    """PEM private key of ``cert``."""
    ca: str
    """PEM CA bundle that signs the servers' certificates."""
    server_name: str | None = None
    """The name the server's certificate must carry; None: each address's host."""
    reports: ReportSettings = field(default_factory=ReportSettings)
    """Refusals reported to the server for its Warning events."""
    first_snapshot_wait: float = 10.0
    """Seconds start-up waits for the first snapshot before it serves anyway (from an empty
    mirror, refusing unknown pods with 503 until a server answers): the snapshot says what
    the node's own network gets (the server's --host-network-role)."""


@dataclass(frozen=True)
class ServerSettings:
    """`podiam server`: the policy, STS and Kubernetes settings of the agent, and the service."""

    kube: KubeSettings
    cert: str
    """PEM certificate of the server (serverAuth usage, with the names agents dial)."""
    key: str
    """PEM private key of ``cert``."""
    ca: str
    """PEM CA bundle that signs the agents' certificates; reloaded when it changes."""
    bind: str = "0.0.0.0:9610"
    """host:port of the gRPC service."""
    roles: RoleSettings = field(default_factory=RoleSettings)
    restrictions: RestrictionSettings = field(default_factory=RestrictionSettings)
    sts: StsSettings = field(default_factory=StsSettings)
    events: EventSettings = field(default_factory=EventSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=lambda: MetricsSettings(port=9620))
    metadata_addr: str = "169.254.169.254"
    """The IMDS of the server's own node: region and --auto-discover-base-arn only."""
    pod_events: bool = True
    """Record Warning events on pods that are refused (the agents cannot)."""
    ready_taint: ReadyTaintSettings = field(default_factory=ReadyTaintSettings)
    """--node-ready-taint: the taint this server removes from a node when its agent reports ready."""
    change_log: int = 2000
    """Changes kept per node for reconnecting agents; older than that, an agent gets a snapshot."""
    send_queue: int = 2000
    """Changes queued for one agent; past it they are dropped for a fresh snapshot."""
    task_stop_timeout: float = 5.0
    """Seconds a cancelled root task gets at shutdown before it is named as stuck."""


@dataclass(frozen=True)
class AgentSettings:
    kube: KubeSettings
    roles: RoleSettings = field(default_factory=RoleSettings)
    restrictions: RestrictionSettings = field(default_factory=RestrictionSettings)
    sts: StsSettings = field(default_factory=StsSettings)
    imds: ImdsSettings = field(default_factory=ImdsSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    events: EventSettings = field(default_factory=EventSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    ready_taint: ReadyTaintSettings = field(default_factory=ReadyTaintSettings)
    """--node-ready-taint: the taint removed from this node once the agent is ready (agent mode; a
    split agent reports its readiness to the server, which holds the key)."""
    remote: RemoteSettings | None = None
    """Split mode (--server-address): pods, decisions and credentials come from podiam servers."""
    task_stop_timeout: float = 5.0
    """Seconds a cancelled root task (a watcher, the rule guard) gets to finish at shutdown
    before it is logged by name as stuck; a stuck task must not hold the node's pods' rule."""

    def __post_init__(self) -> None:
        # Without the rule, "ready" says nothing about where pods' metadata traffic goes: removing
        # the taint then would open the very window it closes.
        if self.ready_taint.key is not None and not self.node.iptables:
            raise ConfigError("--node-ready-taint needs --iptables: the taint goes once the agent's DNAT rule is "
                              "installed, and without --iptables the agent cannot tell that it is")


@dataclass(frozen=True)
class ExplainSettings:
    """`podiam explain`: the agent's policy settings, and where to look."""

    kube: KubeSettings
    roles: RoleSettings = field(default_factory=RoleSettings)
    restrictions: RestrictionSettings = field(default_factory=RestrictionSettings)
    sts: StsSettings = field(default_factory=StsSettings)
    metadata_addr: str = "169.254.169.254"
    """The node's IMDS, for --auto-discover-base-arn only. --assume uses ``sts.region``."""
