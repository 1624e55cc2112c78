"""
The chart and the CLI cannot drift: for every option combination (tools/chart.py's CASES) and
the example overlay, the rendered DaemonSet's and Deployment's container arguments and
environment are given to `podiam agent|server ... --check-config`, which must accept them.

Substituted, as the cluster would: the downward API's values (NODE_NAME, HOST_IP) and the
mounted certificate files' paths (`podiam certs init`'s, which --check-config reads).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_tools import chart

KUBECTL = Path(sys.executable).parent / "kubectl"
TLS_DIR = "/etc/podiam/tls"
DOWNWARD = {"spec.nodeName": "node-1", "status.hostIP": "10.0.0.7"}
"""What the kubelet gives the downward API's fields, on some node."""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "tls"
    subprocess.run([sys.executable, "-m", "podiam", "certs", "init", "--out", str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def environment(container: dict[str, Any]) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = DOWNWARD[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = var["value"]
    return env


def check_config(container: dict[str, Any], tls: Path) -> tuple[int, str]:
    args = [arg.replace(TLS_DIR, str(tls)) for arg in container["args"]]
    result = subprocess.run([sys.executable, "-m", "podiam", *args, "--check-config"], env=environment(container),
                            capture_output=True, text=True, timeout=60, check=False)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(chart.CASES))
def test_the_cli_accepts_every_rendered_container(case: str, certs: Path) -> None:
    objects = chart.render(chart.CASES[case])
    kinds = {"DaemonSet": ("agent", "agent")}
    if chart.CASES[case].get("mode") == "split":
        kinds["Deployment"] = ("server", "server")
    assert {o["kind"] for o in objects} >= set(kinds)
    for kind, (command, side) in kinds.items():
        container = chart.container(objects, kind)
        assert container["args"][0] == command
        code, out = check_config(container, certs / side)
        assert code == 0, f"{kind} of case {case}: {out}"
        assert out.startswith(f"podiam {command}: configuration OK")


def test_the_example_overlays_agent_is_accepted(certs: Path) -> None:
    built = subprocess.run([str(KUBECTL), "kustomize", str(chart.KUSTOMIZE / "overlays" / "example")],
                           capture_output=True, text=True, timeout=60, check=True)
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    code, out = check_config(chart.container(objects, "DaemonSet"), certs / "agent")
    assert code == 0, out
    assert out == "podiam agent: configuration OK (agent mode, node node-1, DNAT rule on cali+)\n"


def test_a_container_the_cli_refuses_fails_the_check(certs: Path) -> None:
    """The check can fail: a split agent given a policy flag through extraArgs is refused."""
    objects = chart.render({**chart.CASES["split"], "agent": {"extraArgs": ["--session-tags"]}})
    code, out = check_config(chart.container(objects, "DaemonSet"), certs / "agent")
    assert code == 2
    assert "give --session-tags to `podiam server`" in out


NOT_VALUES = {
    "agent": {
        "--node": "the downward API's spec.nodeName, as NODE_NAME",
        "--host-ip": "the downward API's status.hostIP, as HOST_IP",
        "--kubeconfig": "in-cluster configuration: the ServiceAccount's token",
        "--server-name": "the chart's Service name is in the server certificate as the agent dials it",
        "--check-config": "a check, not a setting",
        "--region": "aws.region, as AWS_REGION, which the SDKs in the container read as well",
    },
    "server": {
        "--kubeconfig": "in-cluster configuration: the ServiceAccount's token",
        "--metadata-addr": "the server's node's IMDS, only for region discovery: extraArgs if ever needed",
        "--auto-discover-base-arn": "its pod reaches IMDS through the agent, which never serves iam/info: the chart "
                                    "refuses it and asks for baseRoleArn",
        "--metrics-bind-address": "a pod's own network namespace: all addresses are the pod's",
        "--check-config": "a check, not a setting",
        "--region": "aws.region, as AWS_REGION, which the SDKs in the container read as well",
    },
}
"""The flags the chart leaves to extraArgs or fills itself, and why."""


def test_every_flag_of_the_cli_is_a_value_of_the_chart() -> None:
    """A new flag fails this until a value (and a case that sets it) renders it, or it is listed above."""
    import click  # noqa: PLC0415

    from podiam import cli  # noqa: PLC0415

    rendered: dict[str, set[str]] = {"agent": set(), "server": set()}
    for values in chart.CASES.values():
        objects = chart.render(values)
        for kind in ("DaemonSet", "Deployment"):
            if any(o["kind"] == kind for o in objects):
                args = chart.container(objects, kind)["args"]
                rendered[args[0]] |= {arg.split("=", 1)[0] for arg in args[1:]}
    for name, command in (("agent", cli.agent), ("server", cli.server)):
        options = [p for p in command.params if isinstance(p, click.Option)]
        missing = [p.opts[0] for p in options
                   if not {*p.opts, *p.secondary_opts} & rendered[name] and p.opts[0] not in NOT_VALUES[name]]
        assert missing == [], f"podiam {name} flags no chart value renders: {missing}"
