"""
The PromQL of the monitoring bundle (deploy/monitoring/), read with a real PromQL parser
(promql-parser, the Rust parser's Python binding), and what it requires of podiam's metrics:
each series it selects, with the labels it filters, groups or matches that series by.

tests/unit/test_monitoring_bundle.py checks these against podiam's metric classes;
tests/e2e/test_monitoring_metrics.py against what running agents and servers export.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from podiam.kube.pod_index import PodIndex
from podiam.observability.loop_metrics import LoopCounter, LoopHistogram
from podiam.observability.metrics import Metrics
from podiam.remote.client import StreamMetrics
from podiam.remote.mirror import Mirror
from podiam.remote.reports import ReportMetrics
from podiam.remote.server import ServerMetrics
from podiam.remote.tls import CertificateExpiry

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = MONITORING / "prometheus-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

TARGET_LABELS = frozenset({"job", "instance"})
"""What Prometheus adds to every scraped series; the bundle uses no other target label."""
PROMETHEUS_SERIES = {"up": TARGET_LABELS}
"""Series Prometheus itself makes, which the bundle may use."""
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}
"""The dashboard's variables, and what stands for them when a query is parsed."""
LABEL_VALUES = re.compile(r"label_values\((?P<selector>.*), *(?P<label>\w+)\)")


@dataclass(frozen=True)
class Use:
    """``where`` selects ``series`` and uses ``labels`` of it (in a matcher, by, or on)."""

    where: str
    series: str
    labels: frozenset[str]


def rules() -> list[dict[str, Any]]:
    """Every rule of every group of the PrometheusRule."""
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def grafana_query(text: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        text = text.replace(variable, value)
    return text


def expressions() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert, every panel query and every variable's selector."""
    for rule in rules():
        yield f"alert {rule['alert']} ({rule['labels']['severity']})", rule["expr"]
    board = dashboard()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", grafana_query(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.fullmatch(variable["definition"])
            assert match is not None, variable["definition"]
            yield f"variable {variable['name']}", grafana_query(match["selector"])


def _selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    return found


def uses(where: str, query: str) -> list[Use]:
    """What ``query`` needs: for each selector its series and matcher labels; for each ``by``
    and ``on``, those labels on every series beneath it (grouping by a label a series lacks
    silently makes one group)."""
    found: list[Use] = []

    def visit(node: promql_parser.Expr) -> None:
        grouping: list[str] = []
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"{where}: a selector without a metric name"
            labels = frozenset(m.name for m in node.matchers.matchers if m.name != "__name__")
            found.append(Use(where, node.name, labels))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            if node.modifier.type == promql_parser.AggModifierType.By:
                grouping = list(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None and matching.type == promql_parser.LabelModifierType.Include:
                grouping = list(matching.labels)
        if grouping:
            found.extend(Use(where, s.name, frozenset(grouping)) for s in _selectors(node))

    promql_parser.walk(promql_parser.parse(query), visit)
    return found


def all_uses() -> list[Use]:
    return [use for where, query in expressions() for use in uses(where, query)]


def registered_series(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    """Every series name the registry's metrics can produce (a counter's _total, a histogram's
    _bucket, ...) and its labels; a labelled metric that has no child yet exports none, so its
    labels come from the metric object."""
    series: dict[str, frozenset[str]] = {}
    # prometheus_client keeps which series names each collector produces only here.
    for collector, names in registry._collector_to_names.items():
        if isinstance(collector, MetricWrapperBase):
            labels = frozenset(collector._labelnames)
        else:
            assert isinstance(collector, LoopCounter | LoopHistogram), collector
            labels = frozenset(collector.labelnames)
        for name in names:
            series[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return series


def scraped_series(text: str) -> dict[str, frozenset[str] | None]:
    """The series names a /metrics page declares (a counter's _total, a histogram's _bucket,
    _count and _sum), each with the labels of its samples, or None while it has none (a
    labelled family that no event has touched yet is declared without samples)."""
    series: dict[str, frozenset[str] | None] = {}
    for family in text_string_to_metric_families(text):
        names = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        for suffix in names:
            seen = [frozenset(sample.labels) for sample in family.samples if sample.name == family.name + suffix]
            series[family.name + suffix] = frozenset().union(*seen) if seen else None
    return series


def every_process_metrics() -> dict[str, frozenset[str]]:
    """The series of an agent-mode agent, a split agent and a server, as their classes register them."""
    series: dict[str, frozenset[str]] = {}
    agent, split_agent, server = Metrics(), Metrics(), Metrics()
    # Metrics registers each component's group when the component asks for it: every group here.
    for group in (name for name, member in vars(Metrics).items() if isinstance(member, functools.cached_property)):
        getattr(agent, group)
    StreamMetrics(split_agent, Mirror(lambda decide: PodIndex(decide, host_ips=[]), "node-1"))
    ReportMetrics(split_agent)
    ServerMetrics(server)
    CertificateExpiry(server)
    for metrics in (agent, split_agent, server):
        series |= registered_series(metrics.registry)
    return series


def missing(uses_: list[Use], exported: Mapping[str, frozenset[str]]) -> list[str]:
    """What the bundle uses that ``exported`` (series -> labels) does not have, one line each."""
    known = {**exported, **PROMETHEUS_SERIES}
    problems = []
    for use in uses_:
        if use.series not in known:
            problems.append(f"{use.where}: no series {use.series}")
            continue
        unknown = use.labels - known[use.series] - TARGET_LABELS
        if unknown:
            problems.append(f"{use.where}: {use.series} has no label {', '.join(sorted(unknown))}")
    return problems
