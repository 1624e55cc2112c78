"""
The AssumeRole client: podiam's only contact with (aio)botocore.

The client is built from the SDK's standard configuration chain, so everything an
operator knows from any AWS SDK applies to podiam's own credentials and endpoint:
AWS_ACCESS_KEY_ID, profiles, web identity, the instance profile, AWS_ENDPOINT_URL_STS,
AWS_CA_BUNDLE, proxies. botocore errors are mapped onto podiam's exception tree here
and nowhere else, and the STS metrics (calls, errors, latency) are recorded here, where
the calls are made: a credential source that is not STS (split mode) counts nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Protocol, Self

from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioCredentialResolver, AioRefreshableCredentials
from aiobotocore.session import AioSession, get_session
from botocore.configprovider import ConfigChainFactory
from botocore.credentials import CredentialProvider
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from podiam import __version__
from podiam.credentials import Credentials, Identity
from podiam.errors import CredentialsError, StsCallFailed, StsUnavailable
from podiam.observability.metrics import Metrics
from podiam.settings import StsSettings

UNAVAILABLE_CODE = "Unavailable"
"""The error code recorded (metrics, the cache's state view) for StsUnavailable, which has none."""

CHAIN_SESSION_NAME = "podiam"
"""RoleSessionName of the --assume-role-arn session (CloudTrail shows it as the pod calls' caller)."""

CHAIN_DURATION = 3600
"""Seconds asked for the --assume-role-arn session: a role's default maximum session."""

MAX_CHAINED_DURATION = 3600.0
"""Seconds: AWS caps a session assumed with another role's credentials (role chaining) at 1 h."""

ENDPOINT_SERVICES = ("sts", "sso", "sso-oidc")
"""The services whose endpoints a podiam session resolves: STS, and SSO for a profile's SSO
credentials (botocore's SSO provider makes its clients from the same session)."""

_MESSAGE_LIMIT = 300
"""STS error messages are quoted in our errors, truncated: they name principals and
resources, never credentials, but can be long."""


class Assumer(Protocol):
    """Something that turns an Identity into Credentials, raising CredentialsError."""

    async def assume(self, identity: Identity) -> Credentials: ...


class StsAssumer:
    """AssumeRole through one long-lived aiobotocore STS client.

    Use as ``async with StsAssumer(region, settings) as assumer:``; the client (and its
    connection pool) lives as long as the context.
    """

    def __init__(
        self, region: str, settings: StsSettings, metrics: Metrics, *, session: AioSession | None = None
    ) -> None:
        self._region = region
        self._settings = settings
        self._metrics = metrics.credentials
        self._session = session
        self._stack: AsyncExitStack | None = None
        self._client: Any = None  # aiobotocore's STS client: untyped, kept inside this class

    async def __aenter__(self) -> Self:
        session = self._session or get_session()
        _keep_only_our_endpoints(session)
        _prefer_endpoint_choice(session, regional=self._settings.regional_endpoint)
        config = AioConfig(
            connect_timeout=min(self._settings.connect_timeout, self._settings.call_timeout),
            # Half the deadline per attempt: a hung attempt leaves time for one retry.
            read_timeout=self._settings.call_timeout / 2,
            retries={"mode": "standard", "total_max_attempts": self._settings.max_attempts},
            max_pool_connections=self._settings.max_pool_connections,
            # Shows in CloudTrail's userAgent: which AssumeRole calls were podiam's.
            user_agent_extra=f"podiam/{__version__}",
        )
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.create_client("sts", region_name=self._region, config=config)
            )
            if self._settings.assume_role_arn is not None:
                self._client = await stack.enter_async_context(
                    self._chained_client(self._client, config, session.get_component("data_loader")))
        except BotoCoreError as e:
            await stack.aclose()
            raise _map_error(e, what="create the STS client") from e
        self._stack = stack
        return self

    def _chained_client(self, base: Any, config: AioConfig, loader: Any) -> Any:
        """--assume-role-arn (kiam's chain): a client for the pod roles whose credentials are
        ``base``'s AssumeRole of that role, which botocore refreshes ahead of their expiry
        (15 minutes before; a failed early refresh keeps the old ones until 10 minutes before)."""
        arn = self._settings.assume_role_arn
        what = f"assume the --assume-role-arn role {arn}"

        async def chain_credentials() -> dict[str, str]:
            try:
                async with asyncio.timeout(self._settings.call_timeout):
                    response = await base.assume_role(RoleArn=arn, RoleSessionName=CHAIN_SESSION_NAME,
                                                      DurationSeconds=CHAIN_DURATION)
            except (ClientError, BotoCoreError, TimeoutError) as e:
                raise _map_error(e, what=what, deadline=self._settings.call_timeout) from e
            c = response["Credentials"]
            return {"access_key": c["AccessKeyId"], "secret_key": c["SecretAccessKey"], "token": c["SessionToken"],
                    "expiry_time": _as_utc(c["Expiration"]).isoformat()}

        session = AioSession()
        # base's loader: the models and endpoints are loaded (and trimmed) once, not per session.
        session.register_component("data_loader", loader)
        _prefer_endpoint_choice(session, regional=self._settings.regional_endpoint)
        session.register_component("credential_provider", AioCredentialResolver([_ChainProvider(chain_credentials)]))
        return session.create_client("sts", region_name=self._region, config=config)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def endpoint_url(self) -> str:
        """The STS endpoint the client resolved (for the start-up log line)."""
        return str(self._require_client().meta.endpoint_url)

    async def assume(self, identity: Identity) -> Credentials:
        """One AssumeRole call for ``identity`` within ``settings.call_timeout``, retries included."""
        client = self._require_client()
        params: dict[str, Any] = {
            "RoleArn": identity.role_arn,
            "RoleSessionName": identity.session_name,
            "DurationSeconds": int(self._settings.session_duration),
        }
        if identity.external_id:
            params["ExternalId"] = identity.external_id
        if identity.session_tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in identity.session_tags]
        role = identity.role_arn
        what = f"assume role {role} (session {identity.session_name})"
        self._metrics.sts_calls.labels(role=role).inc()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.call_timeout):
                response = await client.assume_role(**params)
        except (ClientError, BotoCoreError, TimeoutError) as e:
            error = _map_error(e, what=what, deadline=self._settings.call_timeout)
            self._metrics.sts_errors.labels(role=role, code=error_code(error)).inc()
            raise error from e
        except CredentialsError as e:  # the --assume-role-arn session could not be had
            self._metrics.sts_errors.labels(role=role, code=error_code(e)).inc()
            raise
        finally:
            self._metrics.sts_latency.observe(time.perf_counter() - started)
        c = response["Credentials"]
        return Credentials(
            access_key_id=c["AccessKeyId"],
            secret_access_key=c["SecretAccessKey"],
            session_token=c["SessionToken"],
            expiration=_as_utc(c["Expiration"]),
            # STS does not say when it issued the credentials; the answer's arrival is
            # within the call deadline of it.
            last_updated=dt.datetime.now(dt.UTC),
        )

    def _require_client(self) -> Any:
        if self._client is None:
            raise RuntimeError("StsAssumer is used outside its 'async with' block")
        return self._client


class _ChainProvider(CredentialProvider):  # type: ignore[misc]  # botocore is untyped
    METHOD = "podiam-assume-role-arn"
    CANONICAL_NAME = "podiam-assume-role-arn"

    def __init__(self, fetch: Any) -> None:
        super().__init__()
        self._fetch = fetch

    async def load(self) -> AioRefreshableCredentials:
        return AioRefreshableCredentials.create_from_metadata(await self._fetch(), refresh_using=self._fetch,
                                                              method=self.METHOD)


def _keep_only_our_endpoints(session: AioSession) -> None:
    """Trim the endpoint data of ``session``'s loader to ENDPOINT_SERVICES, before any client.

    botocore's endpoints.json describes every service in every partition: 1.2 MB of JSON,
    about 7 MiB as dicts, which the loader caches and the session's endpoint resolver holds
    for the process's life. The resolver takes the loader's cached object, so trimming that
    object in place trims what every client of the session sees; the partitions (regions,
    DNS suffixes, defaults) stay whole, so an unlisted service still resolves by the
    partition's defaults, as botocore resolves any service it has no entry for.
    """
    endpoints, _ = session.get_component("data_loader").load_data_with_path("endpoints")
    for partition in endpoints.get("partitions", ()):
        services = partition.get("services", {})
        partition["services"] = {name: services[name] for name in ENDPOINT_SERVICES if name in services}


def _prefer_endpoint_choice(session: AioSession, *, regional: bool) -> None:
    """Make ``regional`` botocore's *default* for sts_regional_endpoints.

    botocore resolves the setting as: session variable, AWS_STS_REGIONAL_ENDPOINTS,
    ``sts_regional_endpoints`` in the profile, default. Setting a session variable would
    override the operator's explicit environment and profile, so the default of the
    chain is replaced instead: an explicit SDK setting still wins, as in any SDK.
    'legacy' sends the legacy regions (us-east-1, eu-west-1, ...) to sts.amazonaws.com.
    An AWS_ENDPOINT_URL_STS bypasses both.
    """
    chain = ConfigChainFactory(session=session).create_config_chain(
        instance_name="sts_regional_endpoints",
        env_var_names="AWS_STS_REGIONAL_ENDPOINTS",
        config_property_names="sts_regional_endpoints",
        default="regional" if regional else "legacy",
    )
    session.get_component("config_store").set_config_provider("sts_regional_endpoints", chain)


def error_code(error: CredentialsError) -> str:
    """STS's code of a failed call, or UNAVAILABLE_CODE when STS did not answer."""
    return error.code if isinstance(error, StsCallFailed) else UNAVAILABLE_CODE


def _map_error(e: Exception, *, what: str, deadline: float | None = None) -> CredentialsError:
    """botocore's exception for a failed call -> podiam's, most specific first.

    Messages name the role and STS's own words; botocore exceptions never carry the
    request's credentials, and neither do these.
    """
    if isinstance(e, ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")[:_MESSAGE_LIMIT]
        return StsCallFailed(f"STS refused to {what}: {code}: {message}", code=code)
    if isinstance(e, TimeoutError):
        return StsUnavailable(f"STS did not answer within {deadline:g} s when trying to {what}")
    if isinstance(e, HTTPClientError | BotoConnectionError):
        return StsUnavailable(f"STS could not be reached to {what}: {e}")
    if isinstance(e, NoCredentialsError | PartialCredentialsError):
        return StsCallFailed(
            f"podiam has no usable AWS credentials of its own to {what}: configure the node's"
            " instance profile or the standard AWS_* variables",
            code="NoCredentials",
        )
    if isinstance(e, ParamValidationError):
        return StsCallFailed(f"invalid AssumeRole parameters to {what}: {e}", code="ValidationError")
    return StsCallFailed(f"could not {what}: {e}", code=type(e).__name__)


def _as_utc(value: dt.datetime) -> dt.datetime:
    # botocore parses timestamps with dateutil's tzutc; the rest of podiam uses datetime.UTC.
    return value.astimezone(dt.UTC)
