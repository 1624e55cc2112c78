"""
The one exception tree of podiam. Dependency errors (botocore, lightkube, aiohttp, OS
commands) are mapped onto it at the module that talks to the dependency, with
``raise ... from e``, so everything above those boundaries handles podiam errors only::

    PodiamError                     anything podiam raises on purpose
    ├── ConfigError                 a bad flag or setting; the process refuses to start
    ├── RequestRefused              a metadata request refused for what it is, before its caller matters
    │   ├── BadRequestTarget        the target is not canonical
    │   ├── RateLimited             the caller is over --pod-rate-limit (retry_after: whole seconds)
    │   ├── MethodNotAllowed        not GET or HEAD (not PUT, for the token)
    │   ├── ForwardedTokenRequest   a token request relayed by a proxy (SSRF guard, as real IMDS)
    │   ├── BadTokenTtl             the token TTL header is missing or out of range
    │   ├── TokenRequired           no token, and --require-imdsv2
    │   ├── InvalidToken            the token is invalid, expired or another caller's
    │   └── PathNotAllowed          neither an IAM path nor allow-listed (decided once the caller is known)
    ├── IdentityError               why a request cannot be tied to one pod and role
    │   ├── PodNotFound             no active pod has the caller's IP (after --pod-wait)
    │   │   └── NoServerReachable   ...and split mode's agent has no podiam server to learn it from
    │   ├── PodAmbiguous            two active pods share the caller's IP: refused, not guessed
    │   ├── HostNetworkCaller       the caller is the node itself or a hostNetwork pod
    │   ├── NoRoleError             the pod has no role annotation and there is no default role
    │   ├── InvalidRoleError        the annotation is not a valid role name or ARN
    │   ├── RoleForbidden           the pod's namespace does not permit its role
    │   │   └── NamespaceNotKnown   ...or is not known to the agent yet (transient)
    │   └── RoleMismatch            the pod asked for a role other than its own
    ├── CredentialsError            STS did not give credentials
    │   ├── StsCallFailed           STS answered with an error (code kept: AccessDenied, ...)
    │   └── StsUnavailable          STS could not be reached within the deadline
    ├── KubeError                   the Kubernetes API failed us (connection, auth, protocol)
    │   ├── NodeNotFound            the Node whose start-up taint is to go does not exist
    │   └── NodeChanged             the Node changed between its read and its patch (409): read it again
    ├── RemoteCallFailed            split mode: a call to a podiam server failed, or no stream was open for it
    ├── NodeMetadataError           the node's own IMDS did not answer (auto-discovery, proxy)
    └── IptablesError               installing or removing the DNAT rule failed

Each error's message is written for the person who reads it: what happened and, where
there is one, what to do. Messages never contain secrets. The status, metrics label and
event reason each error is answered with are in one table, ``decision.REFUSALS``.
"""

from __future__ import annotations


class PodiamError(Exception):
    """Base of every error podiam raises on purpose."""


class ConfigError(PodiamError):
    """A flag or setting is invalid; raised before anything starts."""


class RequestRefused(PodiamError):
    """A metadata request refused for what it is (its method, token, path, rate), not for who sent it."""


class BadRequestTarget(RequestRefused):
    """A metadata request's target is not in the one canonical form (imds/target.py)."""


class RateLimited(RequestRefused):
    """The caller spent its request budget; ``retry_after`` is whole seconds, at least 1."""

    def __init__(self, message: str, *, retry_after: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """The Retry-After header's value, as rate_limit.retry_after_header renders it."""


class MethodNotAllowed(RequestRefused):
    """The method is not one the route takes."""


class ForwardedTokenRequest(RequestRefused):
    """A token request carries X-Forwarded-For: relayed by a proxy, so refused as real IMDS does."""


class BadTokenTtl(RequestRefused):
    """A token request's TTL header is missing or not a whole number of seconds in range."""


class TokenRequired(RequestRefused):
    """A request without a token while IMDSv2 is required."""


class InvalidToken(RequestRefused):
    """The token is malformed, expired, or was issued to another caller."""


class PathNotAllowed(RequestRefused):
    """A path that is neither an IAM path nor allow-listed for proxying to the node's IMDS."""


class IdentityError(PodiamError):
    """The request cannot be tied to exactly one pod and one role."""


class PodNotFound(IdentityError):
    """No active pod on this node has the caller's IP."""


class NoServerReachable(PodNotFound):
    """Split mode: the agent's mirror does not know the caller and no podiam server answers."""


class PodAmbiguous(IdentityError):
    """More than one active pod has the caller's IP; refusing beats guessing."""


class HostNetworkCaller(IdentityError):
    """The caller shares the node's network; it never gets a pod role through its IP."""


class NoRoleError(IdentityError):
    """The pod names no role and no default role is configured."""


class InvalidRoleError(IdentityError):
    """The pod's role annotation is not a valid IAM role name or ARN."""


class RoleForbidden(IdentityError):
    """Namespace restrictions do not permit the pod's role (or cannot be read: fail closed)."""


class NamespaceNotKnown(RoleForbidden):
    """The pod's namespace has not reached the agent's namespace watch yet; passes by itself."""


class RoleMismatch(IdentityError):
    """The pod asked for the credentials of a role that is not its own."""


class CredentialsError(PodiamError):
    """STS did not give credentials for an identity."""


class StsCallFailed(CredentialsError):
    """STS answered with an error; ``code`` is STS's error code (e.g. AccessDenied)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class StsUnavailable(CredentialsError):
    """STS could not be reached, or did not answer within the deadline."""


class KubeError(PodiamError):
    """The Kubernetes API could not be used (connection, authentication, protocol)."""


class NodeNotFound(KubeError):
    """The Node named by --node (or by a split agent) does not exist."""


class NodeChanged(KubeError):
    """The Node's resourceVersion moved between its read and a conditional patch (409 Conflict)."""


class RemoteCallFailed(PodiamError):
    """Split mode: an agent's call to a podiam server (other than its stream) failed or could not be made."""


class NodeMetadataError(PodiamError):
    """The node's own instance metadata service did not answer as expected."""


class IptablesError(PodiamError):
    """The iptables DNAT rule could not be inspected, installed or removed."""
