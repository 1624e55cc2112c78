"""
Writes deploy/monitoring/grafana-dashboard.json, podiam's Grafana dashboard, from the panel
list below: the JSON is generated so that its PromQL is written once, here, in a form a
reader can check, and tests/unit/test_monitoring_bundle.py fails when the committed file is
stale (and, with tests/e2e/test_monitoring_metrics.py, when a panel names a metric or label
that podiam does not export).

    scripts/monitoring-dashboard           # rewrite the dashboard
    scripts/monitoring-dashboard --check   # exit 1 if it is stale

Every query is filtered by the dashboard's variables: the Prometheus data source, the
scrape jobs (the agents' and the servers') and their instances.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "monitoring" / "grafana-dashboard.json"
COMMAND = "scripts/monitoring-dashboard"

S = '{job=~"$job", instance=~"$instance"}'
"""Every selector's filter: the dashboard's job and instance variables."""
RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def quantiles(histogram: str, by: str = "") -> tuple[Query, ...]:
    group = f"le{', ' + by if by else ''}"
    label = f" {{{{{by}}}}}" if by else ""
    return tuple(q(f"histogram_quantile({p}, sum by ({group}) (rate({histogram}_bucket{S}[{RATE}])))",
                   f"p{round(p * 100)}{label}") for p in (0.5, 0.99))


ROWS = (
    Row("Metadata requests", (
        Panel("Requests by route and status", "Metadata requests answered by podiam, per second.", "reqps",
              (q(f"sum by (route, status) (rate(podiam_imds_request_duration_seconds_count{S}[{RATE}]))",
                 "{{route}} {{status}}"),)),
        Panel("Latency by route",
              "p50 and p99. The SDKs give the metadata service 1 s; a cache hit is well under 1 ms.", "s",
              quantiles('podiam_imds_request_duration_seconds', "route")),
        Panel("Refusals by reason", "Requests refused (403, 404, 429, 503...), per second, by reason.", "reqps",
              (q(f"sum by (reason) (rate(podiam_imds_refusals_total{S}[{RATE}]))", "{{reason}}"),)),
        Panel("Proxied to the node's IMDS",
              "Requests answered from the node's own metadata service, by route and upstream status.", "reqps",
              (q(f"sum by (route, status) (rate(podiam_imds_proxied_total{S}[{RATE}]))", "{{route}} {{status}}"),
               q(f"sum(rate(podiam_imds_connections_refused_total{S}[{RATE}]))",
                 "connections refused (--max-connections-per-ip)"))),
    )),
    Row("Credentials and STS", (
        Panel("Credential cache: hits and misses",
              "A miss is a request that waited for STS: prefetch should leave none on the request path.", "reqps",
              (q(f"sum(rate(podiam_credential_cache_hits_total{S}[{RATE}]))", "hits"),
               q(f"sum(rate(podiam_credential_cache_misses_total{S}[{RATE}]))", "misses"))),
        Panel("Identities in the cache", "Identities (role, session, external id) with credentials.", "short",
              (q(f"sum by (instance) (podiam_credential_cache_identities{S})", "{{instance}}"),)),
        Panel("STS AssumeRole calls and errors", "Calls per second, and errors by STS's error code.", "reqps",
              (q(f"sum(rate(podiam_sts_assume_role_calls_total{S}[{RATE}]))", "calls"),
               q(f"sum by (code) (rate(podiam_sts_assume_role_errors_total{S}[{RATE}]))", "error {{code}}"))),
        Panel("STS AssumeRole latency", "Duration of AssumeRole calls, successful or not.", "s",
              quantiles("podiam_sts_assume_role_duration_seconds")),
        Panel("Policy denials by reason",
              "Pods decided with a refused role (IAMRoleForbidden, IAMRoleInvalid), per second.", "short",
              (q(f"sum by (reason) (rate(podiam_policy_denials_total{S}[{RATE}]))", "{{reason}}"),
               q(f"sum(podiam_namespace_annotation_errors{S})", "namespaces with unusable annotations"))),
    )),
    Row("Node", (
        Panel("DNAT rule present", "1 while the agent's iptables rule is installed; 0 means pods reach "
              "the node's own IMDS.", "short",
              (q(f"min by (instance) (podiam_iptables_rule_present{S})", "{{instance}}"),)),
        Panel("DNAT rule restored and check errors",
              "Times the rule was found deleted and put back, and iptables calls that failed.", "short",
              (q(f"sum by (instance) (increase(podiam_iptables_rule_restored_total{S}[{RATE}]))",
                 "restored {{instance}}"),
               q(f"sum by (instance) (increase(podiam_iptables_check_errors_total{S}[{RATE}]))",
                 "check errors {{instance}}"))),
    )),
    Row("Kubernetes", (
        Panel("Watch health", "Seconds each watch has been failing (0 when healthy), and whether it has "
              "listed.", "s",
              (q(f"max by (instance, resource) (podiam_watch_failing_seconds{S})", "failing {{resource}} {{instance}}"),
               q(f"min by (instance, resource) (podiam_watch_synced{S})", "synced {{resource}} {{instance}}"))),
        Panel("Watch restarts", "Watches re-established, by resource and reason (resume, relist).", "short",
              (q(f"sum by (resource, reason) (increase(podiam_watch_restarts_total{S}[{RATE}]))",
                 "{{resource}} {{reason}}"),)),
        Panel("Pods indexed", "Active pods in each process's index (a server's: every node's).", "short",
              (q(f"sum by (instance) (podiam_pods_indexed{S})", "{{instance}}"),
               q(f"min(podiam_pod_index_synced{S})",
                 "all indexes synced"))),
        Panel("Warning events", "Events written for pods and nodes, by reason and outcome.", "short",
              (q(f"sum by (reason, outcome) (increase(podiam_kube_events_total{S}[{RATE}]))",
                 "{{reason}} {{outcome}}"),)),
    )),
    Row("Split mode", (
        Panel("Server streams", "Agents streaming from each server.", "short",
              (q(f"sum by (instance) (podiam_server_streams{S})", "{{instance}}"),), width=8),
        Panel("Agents connected", "Agents with an open stream, of all agents in split mode.", "short",
              (q(f"sum(podiam_remote_connected{S})", "connected"),
               q(f"count(podiam_remote_connected{S})", "agents")), width=8),
        Panel("Seconds since the last update", "Per agent: since its server last sent a message (-1: never). "
              "Quiet nodes get few messages; a broken stream shows in the connected count.", "s",
              (q(f"max by (instance) (podiam_remote_seconds_since_update{S})", "{{instance}}"),), width=8),
        Panel("Streams: failures, snapshots, changes",
              "Agents' broken streams by gRPC code; servers' snapshots and changes sent, and calls refused.",
              "short",
              (q(f"sum by (code) (increase(podiam_remote_stream_failures_total{S}[{RATE}]))", "failed {{code}}"),
               q(f"sum(increase(podiam_server_snapshots_total{S}[{RATE}]))", "snapshots"),
               q(f"sum(increase(podiam_server_changes_sent_total{S}[{RATE}]))", "changes"),
               q(f"sum by (reason) (increase(podiam_server_streams_refused_total{S}[{RATE}]))",
                 "refused {{reason}}"))),
        Panel("Refusals reported", "Split agents' refusals sent to a server for its Warning events, dropped, "
              "or failed to send; and what the servers did with them.", "short",
              (q(f"sum(increase(podiam_remote_refusals_reported_total{S}[{RATE}]))", "reported"),
               q(f"sum by (reason) (increase(podiam_remote_refusals_dropped_total{S}[{RATE}]))",
                 "dropped {{reason}}"),
               q(f"sum by (code) (increase(podiam_remote_report_failures_total{S}[{RATE}]))",
                 "report failed {{code}}"),
               q(f"sum by (outcome) (increase(podiam_server_reported_refusals_total{S}[{RATE}]))",
                 "server {{outcome}}"))),
        Panel("Certificate expiry", "Time left on each process's mutual-TLS certificate (--cert).", "s",
              (q(f"min by (job, instance) (podiam_tls_certificate_expiration_timestamp_seconds{S}) - time()",
                 "{{instance}}"),), kind="table", width=WIDTH),
    )),
)


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    rendered: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": query.expr,
                     "legendFormat": query.legend, **({"instant": True, "format": "table"}
                                                      if panel.kind == "table" else {})}
                    for i, query in enumerate(panel.queries)],
    }
    if panel.kind == "timeseries":
        rendered["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                               "tooltip": {"mode": "multi", "sort": "desc"}}
    return rendered


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2,
            "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "sort": 1, "hide": 0}


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        panels.append({"id": len(panels) + 1, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y = 0, y + line_height
            panels.append(_panel(panel, len(panels) + 1, x, y))
            x, line_height = x + panel.width, max(line_height, panel.height) if x else panel.height
        y += line_height
    return {
        "title": "podiam",
        "uid": "podiam",
        "description": f"podiam's agents and servers (generated by {COMMAND}: edit tools/monitoring_dashboard.py)",
        "tags": ["podiam", "kubernetes", "aws-iam"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "refresh": 1, "hide": 0},
            # podiam_pods_indexed has no labels of its own: every podiam process exports one series.
            _variable("job", "Job", "label_values(podiam_pods_indexed, job)"),
            _variable("instance", "Instance", 'label_values(podiam_pods_indexed{job=~"$job"}, instance)'),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        current = DASHBOARD.read_text(encoding="utf-8") if DASHBOARD.exists() else ""
        if current != text:
            print(f"{DASHBOARD} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
