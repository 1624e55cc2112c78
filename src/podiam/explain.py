"""
`podiam explain`: what the agent would decide for one pod, for a person debugging it.

It runs the agent's own policy (RolePolicy.explain), with the same flags, on the pod and
namespace as the API has them now, and lists each check with its outcome; with --assume it
also makes the AssumeRole call. Nothing here decides anything the agent does not.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from podiam.credentials import Identity
from podiam.errors import (
    CredentialsError,
    HostNetworkCaller,
    IdentityError,
    NodeMetadataError,
    PodAmbiguous,
    PodiamError,
    PodNotFound,
)
from podiam.imds.core import status_for
from podiam.imds.upstream import NodeMetadataClient, base_arn_from_profile
from podiam.kube.connection import make_client
from podiam.kube.lookup import namespace_annotations, pod_by_name, pods_by_ip
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import RolePolicy
from podiam.settings import ExplainSettings
from podiam.sts.assumer import StsAssumer


@dataclass
class Check:
    check: str
    ok: bool
    detail: str


@dataclass
class Explanation:
    target: str
    pod: dict[str, Any] | None = None
    role_arn: str | None = None
    session_name: str | None = None
    checks: list[Check] = field(default_factory=list)
    status: int = 0
    """The HTTP status the agent would answer the pod's credentials request with."""
    answer: str = ""

    @property
    def gets_credentials(self) -> bool:
        return self.status == 200

    def passed(self, check: str, detail: str) -> None:
        self.checks.append(Check(check, True, detail))

    def failed(self, check: str, error: PodiamError) -> None:
        # STS's error code is already in its message (see sts/assumer.py).
        self.checks.append(Check(check, False, str(error)))
        self.status = status_for(error)
        self.answer = str(error)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "gets_credentials": self.gets_credentials}, indent=2)

    def to_text(self) -> str:
        lines = [f"target      {self.target}"]
        if self.pod:
            p = self.pod
            lines.append(f"pod         {p['namespace']}/{p['name']} (IP {p['ip'] or 'none'}, node {p['node']}, "
                         f"phase {p['phase']}, service account {p['service_account']})")
            lines.append(f"annotations {json.dumps(p['annotations'])}")
        if self.role_arn:
            session = f" (session {self.session_name})" if self.session_name else ""
            lines.append(f"role        {self.role_arn}{session}")
        lines.append("")
        lines += [f"  {'ok  ' if c.ok else 'FAIL'}  {c.check}: {c.detail}" for c in self.checks]
        verdict = "gets credentials" if self.gets_credentials else "gets no credentials"
        lines += ["", f"answer      {self.status}: {self.answer} ({verdict})"]
        return "\n".join(lines)


def _describe(pod: PodInfo) -> dict[str, Any]:
    return {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid, "ip": pod.ip, "node": pod.node,
            "phase": pod.phase,
            "host_network": pod.host_network, "deleting": pod.deleting,
            "service_account": pod.service_account, "annotations": dict(pod.annotations)}


async def explain(settings: ExplainSettings, *, namespace: str, name: str | None, ip: str | None,
                  assume: bool) -> Explanation:
    """Explain the decision for pod ``namespace/name``, or the pod with ``ip``."""
    result = Explanation(target=f"{namespace}/{name}" if name else f"IP {ip}")
    client = make_client(settings.kube)
    try:
        pod = await _find(client, result, namespace=namespace, name=name, ip=ip, node=settings.kube.node_name)
        if pod is None:
            return result
        base_arn = await _base_arn(settings, result)
        policy = RolePolicy.from_settings(settings.roles, base_arn, settings.restrictions)
        node = settings.kube.node_name
        if node and pod.node != node:
            result.failed("pod", PodNotFound(f"pod {pod.ref} runs on node {pod.node or '(none yet)'}, not {node}: "
                                             f"the agent on {node} never serves it"))
            return result
        if not pod.active:
            return _inactive(result, pod, policy)
        result.passed("pod", f"running with IP {pod.ip} on node {pod.node}")
        rules = None
        if settings.restrictions.enabled:
            annotations = await namespace_annotations(client, pod.namespace)
            rules = None if annotations is None else policy.parse_namespace(pod.namespace, annotations)
        try:
            identity, passed = policy.explain(pod, rules)
        except IdentityError as e:
            result.role_arn = _role_or_none(policy, pod)
            result.failed("policy", e)
            return result
        result.role_arn, result.session_name = identity.role_arn, identity.session_name
        for sentence in passed:
            result.passed("policy", sentence)
        result.status, result.answer = 200, f"credentials for {identity.role_arn}"
        if assume:
            await _assume(settings, result, identity)
        return result
    finally:
        await client.close()


async def _find(client: Any, result: Explanation, *, namespace: str, name: str | None,
                ip: str | None, node: str) -> PodInfo | None:
    if name is not None:
        pod = await pod_by_name(client, namespace, name)
        if pod is None:
            result.failed("pod", PodNotFound(f"pod {namespace}/{name} does not exist"))
        else:
            result.pod = _describe(pod)
        return pod
    assert ip is not None
    # Like the agent, which knows only its own node's pods (when --node says which).
    candidates = [p for p in await pods_by_ip(client, ip) if not node or p.node == node]
    active = [p for p in candidates if p.active]
    if len(active) > 1:
        refs = ", ".join(sorted(p.ref for p in active))
        result.failed("pod", PodAmbiguous(f"IP {ip} belongs to more than one running pod ({refs})"))
        return None
    pod = active[0] if active else (candidates[0] if candidates else None)
    if pod is None:
        result.failed("pod", PodNotFound(f"no pod has IP {ip}"))
        return None
    result.pod = _describe(pod)
    return pod


def _inactive(result: Explanation, pod: PodInfo, policy: RolePolicy) -> Explanation:
    if pod.host_network:
        if policy.host_network_role_arn is None:
            result.failed("pod", HostNetworkCaller(
                f"pod {pod.ref} uses hostNetwork: it shares the node's IP and is not served a pod role "
                "(see --host-network-role)"))
        else:
            result.role_arn = policy.host_network_role_arn
            result.passed("pod", "uses hostNetwork; the node's network gets --host-network-role")
            result.status, result.answer = 200, f"credentials for {policy.host_network_role_arn}"
        return result
    why = ("is being deleted" if pod.deleting else f"is {pod.phase}" if pod.ip else "has no IP yet")
    result.failed("pod", PodNotFound(f"pod {pod.ref} {why}, so its IP is not served"))
    return result


def _role_or_none(policy: RolePolicy, pod: PodInfo) -> str | None:
    with contextlib.suppress(IdentityError):
        return policy.role_arn(pod)
    return None


async def _base_arn(settings: ExplainSettings, result: Explanation) -> str | None:
    if settings.roles.base_role_arn or not settings.roles.auto_discover_base_arn:
        return settings.roles.base_role_arn
    async with NodeMetadataClient(settings.metadata_addr, 1.0) as imds:
        try:
            base = base_arn_from_profile(await imds.instance_profile_arn())
        except NodeMetadataError as e:
            result.checks.append(Check("base ARN", False, f"not discovered: {e}"))
            return None
    result.passed("base ARN", f"{base} (discovered from the node's instance profile)")
    return base


async def _assume(settings: ExplainSettings, result: Explanation, identity: Identity) -> None:
    assert settings.region is not None  # the CLI refuses --assume without a region
    try:
        async with StsAssumer(settings.region, settings.sts, Metrics()) as assumer:
            creds = await assumer.assume(identity)
    except CredentialsError as e:
        result.failed("AssumeRole", e)
        return
    result.passed("AssumeRole", f"access key {creds.access_key_id}, valid until "
                                f"{creds.expiration.isoformat(timespec='seconds')}")
