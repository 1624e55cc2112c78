"""
The Helm chart (deploy/helm/podiam), rendered offline, and the kustomize bases made from it.

Rendering uses the Helm SDK that helm-python-sdk bundles (no helm binary, no cluster).
``CASES`` are the option combinations that change which objects the chart renders or what
they hold; the tests render, lint and validate each, and run the CLI on each one's container
arguments. The kustomize bases are the chart's defaults, generated here:

    scripts/render-kustomize           # rewrite deploy/kustomize/base/{agent,split}
    scripts/render-kustomize --check   # exit 1 if they are stale

A base is the chart rendered as release ``podiam`` in namespace ``kube-system`` (the names
`podiam certs init` puts in its certificates), without Helm's own labels (helm.sh/chart,
app.kubernetes.io/managed-by: Helm), which would be false for objects kustomize applies.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "podiam"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
RELEASE = "podiam"
NAMESPACE = "kube-system"
COMMAND = "scripts/render-kustomize"
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

Values = Mapping[str, Any]
Manifest = dict[str, Any]

BASE_ROLE_ARN = "arn:aws:iam::123456789012:role/pods/"
"""A base role ARN for the cases that need one (split mode, whose server cannot discover it)."""

READY_TAINT = "podiam.io/agent-not-ready"
"""The start-up taint of the cases that set agent.nodeReadyTaint (docs/deploying.md's example)."""

BASES: dict[str, Values] = {
    "agent": {},
    # Split mode's server cannot discover the base ARN, and a base cannot know the account:
    # annotations must be full ARNs until an overlay adds --base-role-arn (the example does).
    "split": {"mode": "split", "autoDiscoverBaseArn": False},
}
"""The kustomize bases: the chart's defaults, per mode."""

_EVERY_POLICY_VALUE: Values = {
    "baseRoleArn": BASE_ROLE_ARN, "defaultRole": "default-app", "defaultRoleBypassesRestrictions": True,
    "hostNetworkRole": "node-tools", "iamRoleKey": "example.com/role", "iamExternalId": "example.com/external-id",
    "namespaceRestrictions": {"enabled": True, "key": "example.com/allowed-roles", "format": "regexp",
                              "permittedKey": "example.com/permitted", "disableStrictRegexp": True},
    "sessionTags": True, "sessionDuration": "2h", "sessionRefresh": "40m", "stsTimeout": "3s",
    "iamRoleErrorTtl": "20s", "useRegionalStsEndpoint": True, "aws": {"region": "eu-west-1"},
    "logFormat": "text", "logLevel": "debug",
}
_EVERY_AGENT_VALUE: Values = {
    "appPort": 8282, "metricsPort": 9282, "metricsBindAddress": "0.0.0.0",  # noqa: S104 - scraped from other nodes
    "iptablesCheckInterval": "10s", "fetchers": 16,
    "requireImdsv2": True, "podRateLimit": 50, "maxConnectionsPerIp": 64, "podWait": "500ms",
    "allowRouteRegexp": "^/latest/meta-data/placement/.*$", "httpServer": "aiohttp", "shutdownGrace": "3s",
    "metadataAddr": "169.254.169.254:80", "debug": True, "auditLog": "-",
    "extraArgs": ["--pod-wait=600ms"],  # after the chart's own: the last --pod-wait wins
    "extraEnv": {"HTTPS_PROXY": "http://proxy.example:3128"},
}

CASES: dict[str, Values] = {
    "agent": {},
    "agent-no-restrictions": {"namespaceRestrictions": {"enabled": False}},
    "agent-no-events": {"podEvents": False},
    "agent-base-arn-no-iptables": {"baseRoleArn": BASE_ROLE_ARN, "agent": {"iptables": False}, "cni": "calico"},
    "agent-every-value": {**_EVERY_POLICY_VALUE, "agent": _EVERY_AGENT_VALUE, "hostInterface": "!eth0"},
    "agent-monitoring-no-netpol": {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": False},
                                   "rbac": {"create": True}},
    "split": {"mode": "split", "baseRoleArn": BASE_ROLE_ARN},
    "split-full-arns": BASES["split"],
    "split-cert-manager": {"mode": "split", "baseRoleArn": BASE_ROLE_ARN, "certificates": {"source": "cert-manager"}},
    "split-cert-manager-issuer": {"mode": "split", "baseRoleArn": BASE_ROLE_ARN, "certificates": {
        "source": "cert-manager", "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer",
                                                                "group": "cert-manager.io"}}}},
    "split-no-restrictions-no-events": {"mode": "split", "baseRoleArn": BASE_ROLE_ARN,
                                        "namespaceRestrictions": {"enabled": False}, "podEvents": False},
    "agent-iptables-legacy-ready-taint": {"agent": {"iptablesMode": "legacy", "nodeReadyTaint": READY_TAINT}},
    "split-iptables-nft-ready-taint": {"mode": "split", "baseRoleArn": BASE_ROLE_ARN,
                                       "agent": {"iptablesMode": "nft", "nodeReadyTaint": READY_TAINT}},
    "split-every-value": {**_EVERY_POLICY_VALUE, "mode": "split", "agent": _EVERY_AGENT_VALUE,
                          "server": {"replicas": 3, "grpcPort": 9611, "metricsPort": 9621, "fetchers": 4,
                                     "assumeRoleArn": "arn:aws:iam::123456789012:role/podiam-chain",
                                     "podAntiAffinity": "hard", "extraArgs": {"iam-role-error-ttl": "15s"},
                                     "extraEnv": [{"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"}]},
                          "sessionDuration": "1h", "sessionRefresh": "30m",
                          "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
"""Option combinations that change the rendered objects, by name; the tests run every one."""


def chart() -> helm_python.Chart:
    """The chart, loaded (the SDK wants an absolute path)."""
    return helm_python.Chart.load(CHART.resolve())


def render(values: Values, *, namespace: str = NAMESPACE) -> list[Manifest]:
    """The objects the chart renders with ``values``, in template order; NOTES.txt left out."""
    with chart() as loaded:
        rendered = loaded.render(values=dict(values), name=RELEASE, namespace=namespace)
    objects: list[Manifest] = []
    for template, text in sorted(rendered.items()):
        if template.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of ``kind`` (and ``name``); KeyError naming what is there otherwise."""
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if len(found) != 1:
        raise KeyError(f"{len(found)} {kind} objects named {name}: {[o['metadata']['name'] for o in objects]}")
    return found[0]


def container(objects: list[Manifest], kind: str) -> dict[str, Any]:
    """The one container of the chart's DaemonSet (agent) or Deployment (server)."""
    containers: list[dict[str, Any]] = find(objects, kind)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def without_helm_labels(obj: Any) -> Any:
    """``obj`` without Helm's own labels, wherever labels are (metadata, pod templates)."""
    if isinstance(obj, dict):
        return {key: ({k: v for k, v in value.items() if k not in HELM_LABELS} if key == "labels"
                      and isinstance(value, dict) else without_helm_labels(value)) for key, value in obj.items()}
    if isinstance(obj, list):
        return [without_helm_labels(item) for item in obj]
    return obj


def base_files(mode: str) -> dict[str, str]:
    """The files of the kustomize base for ``mode``: its objects and its kustomization."""
    objects = [without_helm_labels(o) for o in render(BASES[mode])]
    changed = yaml.safe_dump(dict(BASES[mode]), default_flow_style=True).strip() if BASES[mode] else ""
    header = (f"# Generated by {COMMAND} from deploy/helm/podiam (mode: {mode}, the chart's defaults"
              f"{' with ' + changed if changed else ''}): do not edit; change the chart or an overlay.\n")
    resources = header + "".join("---\n" + yaml.safe_dump(o, sort_keys=False) for o in objects)
    kustomization = header + yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": ["resources.yaml"],
    }, sort_keys=False)
    return {"resources.yaml": resources, "kustomization.yaml": kustomization}


def write_bases(check: bool = False) -> list[Path]:
    """Write (or with ``check``, compare) every base; the stale paths."""
    stale: list[Path] = []
    for mode in BASES:
        directory = KUSTOMIZE / "base" / mode
        for name, text in base_files(mode).items():
            path = directory / name
            if path.exists() and path.read_text() == text:
                continue
            stale.append(path)
            if not check:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(f"usage: {COMMAND} [--check]", file=sys.stderr)
        return 2
    stale = write_bases(check=check)
    for path in stale:
        print(f"{'stale' if check else 'wrote'}: {path.relative_to(ROOT)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
