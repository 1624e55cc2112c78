"""
The Helm chart and the kustomize bases, checked offline: `helm lint --strict` (the Helm SDK
of helm-python-sdk), every option combination rendered (tools/chart.py's CASES) and each
object validated with kubernetes-validate --strict against the oldest Kubernetes podiam
supports and the newest the package knows; `kubectl kustomize` of every base and overlay;
the bases equal to the chart's defaults; and what the chart promises about security.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

import podiam
from chart_tools import chart
from podiam import certs

OLDEST_KUBERNETES = "1.25"
"""The oldest Kubernetes the chart is for (Chart.yaml's kubeVersion; docs/helm-values.md says why)."""
VERSIONS = (OLDEST_KUBERNETES, kubernetes_validate.latest_version())
CRD_KINDS = {"Certificate", "Issuer", "ServiceMonitor"}
"""Kinds of cert-manager and prometheus-operator, whose schemas kubernetes-validate does not ship."""
KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = sorted(p.parent for p in (chart.KUSTOMIZE / "overlays").glob("*/kustomization.yaml"))


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run([str(KUBECTL), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_identity(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_the_chart_is_podiams_version() -> None:
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == podiam.__version__
    assert meta["kubeVersion"] == f">={OLDEST_KUBERNETES}.0-0"


@pytest.mark.parametrize("case", sorted(chart.CASES))
def test_helm_lint_strict_finds_nothing(case: str) -> None:
    report = helm_python.lint(chart.CHART.resolve(), dict(chart.CASES[case]), strict=True,
                              namespace=chart.NAMESPACE, kube_version=f"v{OLDEST_KUBERNETES}.0")
    assert report["errors"] == []
    # Severity 1 is information (Helm's "icon is recommended"); 2 warnings and 3 errors fail strict lint.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", sorted(chart.CASES))
def test_every_rendered_object_is_valid_kubernetes(case: str, version: str) -> None:
    objects = chart.render(chart.CASES[case])
    unknown = set()
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add(obj["kind"])
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} for Kubernetes {version}: {e.message} at "
                        f"{'.'.join(map(str, e.path))}")
    assert unknown <= CRD_KINDS


@pytest.mark.parametrize("values", [
    {"mode": "kiam"}, {"cni": "antrea"}, {"mode": "split", "baseRoleArn": ""},
    {"certificates": {"source": "vault"}, "mode": "split", "autoDiscoverBaseArn": False},
    {"mode": "split", "autoDiscoverBaseArn": False, "server": {"podAntiAffinity": "x"}},
])
def test_values_that_cannot_work_are_refused_with_a_reason(values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=r"must be|no preset|needs baseRoleArn"):
        chart.render(values)


def test_the_kustomize_bases_are_the_charts_defaults_as_generated() -> None:
    assert chart.write_bases(check=True) == [], "run scripts/render-kustomize and commit the bases"


@pytest.mark.parametrize("mode", sorted(chart.BASES))
def test_kubectl_kustomize_builds_each_base_into_the_charts_objects(mode: str) -> None:
    built = by_identity(kustomize(chart.KUSTOMIZE / "base" / mode))
    rendered = by_identity([chart.without_helm_labels(o) for o in chart.render(chart.BASES[mode])])
    assert built == rendered


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_builds_into_valid_objects(overlay: Path) -> None:
    objects = kustomize(overlay)
    assert objects
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_agent_runs_with_only_what_the_rule_needs() -> None:
    objects = chart.render({})
    pod = chart.find(objects, "DaemonSet")["spec"]["template"]["spec"]
    agent = chart.container(objects, "DaemonSet")
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]  # every node, tainted or not
    assert agent["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    lock = next(v for v in pod["volumes"] if v["name"] == "xtables-lock")
    assert lock["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert {"name": "xtables-lock", "mountPath": "/run/xtables.lock"} in agent["volumeMounts"]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {"metadata": 8181, "metrics": 9181}


def test_a_taint_toleration_is_added_when_the_tolerations_are_narrowed() -> None:
    values = {"agent": {"nodeReadyTaint": "podiam.io/agent-not-ready", "tolerations": [{"key": "gpu",
                                                                                        "operator": "Exists"}]}}
    pod = chart.find(chart.render(values), "DaemonSet")["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"},
                                  {"key": "podiam.io/agent-not-ready", "operator": "Exists", "effect": "NoSchedule"}]


def test_each_cni_preset_picks_its_interface_and_host_interface_wins() -> None:
    presets = yaml.safe_load((chart.CHART / "values.yaml").read_text())["cniInterfaces"]
    assert {presets[k] for k in ("aws-vpc-cni", "calico", "cilium", "flannel", "weave", "kubenet", "kindnet")} == {
        "eni+", "cali+", "lxc+", "cni0", "weave", "cbr0", "veth+"}
    for cni, interface in presets.items():
        args = chart.container(chart.render({"cni": cni}), "DaemonSet")["args"]
        assert f"--host-interface={interface}" in args
    args = chart.container(chart.render({"cni": "calico", "hostInterface": "!eth0"}), "DaemonSet")["args"]
    assert "--host-interface=!eth0" in args and "--host-interface=cali+" not in args


def test_split_mode_gives_the_agent_no_api_access_and_the_server_its_own() -> None:
    objects = chart.render(chart.CASES["split"])
    agent_pod = chart.find(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert agent_pod["automountServiceAccountToken"] is False
    assert agent_pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    subjects = [s["name"] for b in bindings for s in b["subjects"]]
    assert subjects == ["podiam-server"]
    assert chart.find(objects, "ServiceAccount", "podiam-agent")["automountServiceAccountToken"] is False
    args = chart.container(objects, "DaemonSet")["args"]
    assert "--server-address=dns:///podiam-server.kube-system.svc:9610" in args


def test_split_mode_servers_are_replicated_spread_and_unprivileged() -> None:
    objects = chart.render(chart.CASES["split"])
    deployment = chart.find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    server = chart.container(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert server["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                         "capabilities": {"drop": ["ALL"]}}
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert chart.find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    service = chart.find(objects, "Service", "podiam-server")
    assert service["spec"]["clusterIP"] == "None"
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    agent_secrets = {v["secret"]["secretName"] for v in
                     chart.find(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    # The names `podiam certs init --format kubernetes` gives its Secrets.
    assert (secrets, agent_secrets) == ({certs.SERVER_SECRET}, {certs.AGENT_SECRET})


def test_cert_manager_certificates_carry_the_usage_each_side_requires() -> None:
    objects = chart.render(chart.CASES["split-cert-manager"])
    server = chart.find(objects, "Certificate", "podiam-server")["spec"]
    agent = chart.find(objects, "Certificate", "podiam-agent")["spec"]
    assert server["secretName"] == certs.SERVER_SECRET and agent["secretName"] == certs.AGENT_SECRET
    assert "server auth" in server["usages"] and "client auth" not in server["usages"]
    assert "client auth" in agent["usages"] and "server auth" not in agent["usages"]
    assert "podiam-server.kube-system.svc" in server["dnsNames"]
    assert chart.find(objects, "Issuer")["spec"] == {"ca": {"secretName": certs.CA_SECRET}}
    with_issuer = chart.render(chart.CASES["split-cert-manager-issuer"])
    assert not [o for o in with_issuer if o["kind"] == "Issuer"]


def test_the_network_policy_keeps_the_metrics_port_to_its_scrapers() -> None:
    for case, component, ports in (("agent", "agent", (8181, 9181)), ("split", "server", (9610, 9620))):
        policy = chart.find(chart.render(chart.CASES[case]), "NetworkPolicy", f"podiam-{component}")["spec"]
        open_rule, metrics_rule = policy["ingress"]
        assert open_rule == {"ports": [{"port": ports[0], "protocol": "TCP"}]}
        assert metrics_rule["ports"] == [{"port": ports[1], "protocol": "TCP"}]
        assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]
