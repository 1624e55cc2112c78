"""
Prometheus metrics, on a registry owned by one process object rather than the library's
global one, so that tests and embedded agents never share counters.

Metric names follow Prometheus conventions; label values are bounded (routes are route
names, not paths; roles are the roles pods of this node use).
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from podiam.observability.loop_metrics import LoopCounter, LoopHistogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds. Dense below 10 ms (cache hits), sparse up to the SDKs' 1 s timeout and past it."""


class EndpointMetrics:
    """The metadata endpoint's: requests, refusals, proxied paths, refused connections."""

    def __init__(self, r: CollectorRegistry) -> None:
        # Once per request: lock-free (loop_metrics.py says why).
        self.requests = LoopHistogram(
            "podiam_imds_request_duration_seconds",
            "Metadata requests served, by route and HTTP status.",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "podiam_imds_refusals_total",
            "Metadata requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.proxied = Counter(
            "podiam_imds_proxied_total",
            "Requests pods made that were answered from the node's own IMDS, by route (the path "
            "without its version when the node's IMDS has it, else 'other'; 'unreachable' when it "
            "did not answer) and upstream status.",
            ["route", "status"],
            registry=r,
        )
        self.connections_refused = Counter(
            "podiam_imds_connections_refused_total",
            "Metadata endpoint connections refused (503, then closed): their source IP held --max-connections-per-ip.",
            registry=r,
        )


class RuleMetrics:
    """The DNAT rule's guard."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.iptables_rule_present = Gauge(
            "podiam_iptables_rule_present",
            "1 when the last check found the DNAT rule installed (or restored it), 0 while it is missing.",
            registry=r,
        )
        self.iptables_rule_restored = Counter(
            "podiam_iptables_rule_restored_total",
            "Times the DNAT rule was found missing while the agent ran, and put back.",
            registry=r,
        )
        self.iptables_check_errors = Counter(
            "podiam_iptables_check_errors_total",
            "Checks or restores of the DNAT rule that failed (iptables errors); retried at the next interval.",
            registry=r,
        )


class CredentialMetrics:
    """The credential cache and its STS calls."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.cache_hits = LoopCounter(  # once per credential request: lock-free (loop_metrics.py)
            "podiam_credential_cache_hits_total",
            "Credential requests answered from the cache without waiting for STS.",
            registry=r,
        )
        self.cache_misses = Counter(
            "podiam_credential_cache_misses_total",
            "Credential requests that had to wait for an STS call.",
            registry=r,
        )
        self.cached_identities = Gauge(
            "podiam_credential_cache_identities",
            "Identities (role, session, external id) with credentials in the cache.",
            registry=r,
        )
        self.sts_calls = Counter(
            "podiam_sts_assume_role_calls_total",
            "AssumeRole calls made, by role ARN.",
            ["role"],
            registry=r,
        )
        self.sts_errors = Counter(
            "podiam_sts_assume_role_errors_total",
            "AssumeRole calls that failed, by role ARN and error code.",
            ["role", "code"],
            registry=r,
        )
        self.sts_latency = Histogram(
            "podiam_sts_assume_role_duration_seconds",
            "Duration of AssumeRole calls, successful or not.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )


class PodMetrics:
    """The pod index as the pod watch fills it."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.pods_indexed = Gauge(
            "podiam_pods_indexed",
            "Active pods of this node in the IP index.",
            registry=r,
        )
        self.index_synced = Gauge(
            "podiam_pod_index_synced",
            "1 when the pod index has completed its initial list, else 0.",
            registry=r,
        )


class WatchMetrics:
    """The Kubernetes watches."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.watch_restarts = Counter(
            "podiam_watch_restarts_total",
            "Times a watch (pods, namespaces) was re-established, by resource and reason (resume, relist).",
            ["resource", "reason"],
            registry=r,
        )
        self.watch_synced = Gauge(
            "podiam_watch_synced",
            "1 once a watch (pods, namespaces) has completed its first list, else 0; by resource.",
            ["resource"],
            registry=r,
        )
        self.watch_failing_seconds = Gauge(
            "podiam_watch_failing_seconds",
            "Seconds a watch has been failing without a success in between (0 when healthy), by resource.",
            ["resource"],
            registry=r,
        )


class PolicyMetrics:
    """The role policy's decisions and the namespace restrictions it reads."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.policy_denials = Counter(
            "podiam_policy_denials_total",
            "Pod identity decisions that refused a role, by reason.",
            ["reason"],
            registry=r,
        )
        self.namespace_annotation_errors = Gauge(
            "podiam_namespace_annotation_errors",
            "Namespaces whose role restriction annotations cannot be parsed (they permit nothing).",
            registry=r,
        )


class EventMetrics:
    """The pods' Warning events."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.events = Counter(
            "podiam_kube_events_total",
            "Warning events for pods, by reason and outcome (created, updated, aggregated, failed).",
            ["reason", "outcome"],
            registry=r,
        )


class Metrics:
    """The process's registry, and each component's metrics on it.

    A group is registered when a component first asks for it (in its constructor), so a
    process exports only the series of what it runs: a split agent has no credential cache
    or watches, a server no metadata endpoint. Each name is declared once, in this module.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

    @functools.cached_property
    def endpoint(self) -> EndpointMetrics:
        return EndpointMetrics(self.registry)

    @functools.cached_property
    def rule(self) -> RuleMetrics:
        return RuleMetrics(self.registry)

    @functools.cached_property
    def credentials(self) -> CredentialMetrics:
        return CredentialMetrics(self.registry)

    @functools.cached_property
    def pods(self) -> PodMetrics:
        return PodMetrics(self.registry)

    @functools.cached_property
    def watches(self) -> WatchMetrics:
        return WatchMetrics(self.registry)

    @functools.cached_property
    def policy(self) -> PolicyMetrics:
        return PolicyMetrics(self.registry)

    @functools.cached_property
    def events(self) -> EventMetrics:
        return EventMetrics(self.registry)

    def render(self) -> bytes:
        """The text exposition format, for GET /metrics."""
        return generate_latest(self.registry)
