"""
deploy/monitoring/: the dashboard is the generator's output, the PrometheusRule is well formed,
every query parses as PromQL, and every metric and label it uses is one podiam's metric classes
register (tests/e2e/test_monitoring_metrics.py checks the same against running processes).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import promql_parser
import pytest
import yaml

from promql_bundle import RULES, all_uses, dashboard, every_process_metrics, expressions, missing, rules, uses

GENERATOR = Path(__file__).resolve().parents[2] / "tools" / "monitoring_dashboard.py"
SEVERITIES = {"critical", "warning"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("monitoring_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def test_the_committed_dashboard_is_current() -> None:
    generator = _generator()
    assert generator.DASHBOARD.read_text(encoding="utf-8") == generator.render(), \
        "deploy/monitoring/grafana-dashboard.json is stale: run scripts/monitoring-dashboard"


def test_every_query_parses_as_promql() -> None:
    for where, query in expressions():
        try:
            promql_parser.parse(query)
        except ValueError as e:
            pytest.fail(f"{where}: {e}\n{query}")


def test_every_metric_and_label_used_is_one_podiam_registers() -> None:
    assert missing(all_uses(), every_process_metrics()) == []


def test_the_check_finds_a_label_a_series_lacks_and_a_series_that_does_not_exist() -> None:
    exported = every_process_metrics()
    assert missing(uses("x", 'sum by (role) (rate(podiam_credential_cache_hits_total{job="a"}[5m]))'), exported) \
        == ["x: podiam_credential_cache_hits_total has no label role"]
    assert missing(uses("x", "podiam_remote_connected == 0 unless on (node) podiam_server_streams"), exported) \
        == ["x: podiam_remote_connected has no label node", "x: podiam_server_streams has no label node"]
    assert missing(uses("x", "podiam_imds_requests_total"), exported) == ["x: no series podiam_imds_requests_total"]


def test_the_rules_are_a_prometheus_rule_of_named_alerts() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert (document["apiVersion"], document["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert document["metadata"]["name"] == "podiam"
    groups = document["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    keys = []
    for rule in rules():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        promql_parser.parse_duration(rule["for"])
        keys.append((rule["alert"], rule["labels"]["severity"]))
    assert len(set(keys)) == len(keys), "an alert name appears twice with one severity"
    assert {alert for alert, _ in keys} >= {
        "PodiamDown", "PodiamNotReady", "PodiamStsErrors", "PodiamCredentialCacheMisses",
        "PodiamCertificateExpiresSoon", "PodiamServerUnreachable", "PodiamIptablesRuleMissing"}


def test_the_dashboard_is_importable() -> None:
    board = dashboard()
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        area = {(box["x"] + dx, box["y"] + dy) for dx in range(box["w"]) for dy in range(box["h"])}
        assert not area & cells, f"{panel['title']!r} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert 'job=~"$job", instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])
