"""
`podiam explain`: what the agent would decide for one pod, for a person debugging it.

It loads the pod (or the pods with the IP) and its namespace, as the API has them now, into
the agent's own PodIndex and NamespaceIndex with the agent's policy and flags, and asks them
what the agent asks: who the IP is (decision.caller: the node's own network, ambiguity,
inactive pods) and what that pod is answered (decision.decide, decision.refusal for the
status). It lists each check with its outcome; with --assume it also makes the AssumeRole
call. Nothing here decides anything the agent does not.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from podiam.credentials import Identity
from podiam.decision import Refusal, caller, decide, refusal
from podiam.errors import (
    CredentialsError,
    HostNetworkCaller,
    IdentityError,
    NodeMetadataError,
    PodiamError,
    PodNotFound,
)
from podiam.imds.upstream import NodeMetadataClient, base_arn_from_profile
from podiam.kube.connection import KubeClient, make_client
from podiam.kube.lookup import namespace_annotations, pod_by_name, pods_by_ip
from podiam.kube.namespace_index import NamespaceIndex
from podiam.kube.pod_index import PodIndex
from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.policy import NamespaceRules, RolePolicy
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

    def failed(self, check: str, error: PodiamError, detail: str | None = None) -> None:
        """``check`` failed with ``error``; ``detail`` says why when the endpoint's message does not."""
        self.refused(check, refusal(error), detail)

    def refused(self, check: str, answer: Refusal, detail: str | None = None) -> None:
        # STS's error code is already in its message (see sts/assumer.py).
        self.checks.append(Check(check, False, detail or answer.message))
        self.status, self.answer = answer.status, answer.message

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
    node = settings.kube.node_name
    try:
        if name is not None:
            named = await pod_by_name(client, namespace, name)
            if named is None:
                result.failed("pod", PodNotFound(f"pod {namespace}/{name} does not exist"))
                return result
            result.pod = _describe(named)
            pods = [named]
        else:
            # Like the agent, which knows only its own node's pods (when --node says which).
            pods = [p for p in await pods_by_ip(client, ip or "") if not node or p.node == node]
        base_arn = await _base_arn(settings, result)
        policy = RolePolicy.from_settings(settings.roles, base_arn, settings.restrictions)
        if name is not None and node and pods[0].node != node:
            result.failed("pod", PodNotFound(f"pod {pods[0].ref} runs on node {pods[0].node or '(none yet)'}, not "
                                             f"{node}: the agent on {node} never serves it"))
            return result
        namespaces = await _namespace_index(client, settings, policy, pods)

        def rules(pod: PodInfo) -> NamespaceRules | None:
            return namespaces.rules(pod.namespace) if namespaces else None

        # The agent's index, holding what the agent's watch would hold: the same code then
        # decides hostNetwork, inactive pods and shared IPs, and runs the policy.
        index = PodIndex(lambda pod: policy.identity(pod, rules(pod)))
        index.replace(pods)
        target_ip = ip if name is None else pods[0].ip
        if target_ip is None:  # the pod cannot ask yet: there is nothing the endpoint would decide
            result.failed("pod", PodNotFound(f"pod {pods[0].ref} has no IP yet, so its IP is not served"))
            return result
        host_identity = policy.host_identity(node or next((p.node for p in pods if p.node), ""))
        try:
            entry = caller(index, target_ip, host_identity)
        except IdentityError as e:
            _not_served(result, pods, e)
            return result
        if entry.pod.host_network:  # the node's own network, served --host-network-role
            shown = next((p for p in pods if p.host_network), None)  # none for loopback or --host-ip
            result.pod = _describe(shown) if shown else result.pod
            result.passed("pod", "uses hostNetwork; the node's network gets --host-network-role")
            _served(result, decide(entry))
            return result
        pod = entry.pod
        result.pod = _describe(pod)
        result.passed("pod", f"running with IP {pod.ip} on node {pod.node}")
        decision = decide(entry)
        if isinstance(decision, Refusal):
            result.role_arn = _role_or_none(policy, pod)
            result.refused("policy", decision)
            return result
        _, passed = policy.explain(pod, rules(pod))  # the index's decision, with its reasons
        for sentence in passed:
            result.passed("policy", sentence)
        _served(result, decision)
        if assume:
            await _assume(settings, result, decision)
        return result
    finally:
        await client.close()


async def _namespace_index(client: KubeClient, settings: ExplainSettings, policy: RolePolicy,
                           pods: list[PodInfo]) -> NamespaceIndex | None:
    """The agent's namespace index with the pods' namespaces, when restrictions are on."""
    if not settings.restrictions.enabled:
        return None
    namespaces = NamespaceIndex(policy, Metrics())
    for name in sorted({p.namespace for p in pods}):
        namespaces.set(name, await namespace_annotations(client, name))
    return namespaces


def _served(result: Explanation, identity: Identity | Refusal) -> None:
    assert isinstance(identity, Identity)  # the entry was found with an identity
    result.role_arn, result.session_name = identity.role_arn, identity.session_name
    result.status, result.answer = 200, f"credentials for {identity.role_arn}"


def _not_served(result: Explanation, pods: list[PodInfo], error: IdentityError) -> None:
    """The IP is refused before any policy runs: shared, the node's own, or no active pod has it."""
    if isinstance(error, HostNetworkCaller):
        result.pod = _describe(next((p for p in pods if p.host_network), pods[0])) if pods else result.pod
    elif isinstance(error, PodNotFound) and pods:
        pod = pods[0]
        result.pod = _describe(pod)
        why = "is being deleted" if pod.deleting else f"is {pod.phase}" if pod.ip else "has no IP yet"
        result.failed("pod", error, f"pod {pod.ref} {why}, so its IP is not served")
        return
    result.failed("pod", error)


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
    assert settings.sts.region is not None  # the CLI refuses --assume without a region
    try:
        async with StsAssumer(settings.sts.region, settings.sts, Metrics()) as assumer:
            creds = await assumer.assume(identity)
    except CredentialsError as e:
        result.failed("AssumeRole", e)
        return
    result.passed("AssumeRole", f"access key {creds.access_key_id}, valid until "
                                f"{creds.expiration.isoformat(timespec='seconds')}")
