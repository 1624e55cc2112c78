"""
StsAssumer against moto's real STS server (a subprocess, over HTTP), and the MotoSts
sandbox itself: call counting, outage and recovery, error mapping, endpoint choice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiobotocore.session import get_session

from podiam.credentials import Credentials, Identity
from podiam.errors import ConfigError, StsCallFailed, StsUnavailable
from podiam.observability.metrics import Metrics
from podiam.settings import StsSettings
from podiam.sts.assumer import StsAssumer
from podiam.sts.cache import CredentialCache
from podiam_sandbox.sts import ACCOUNT_ID, AssumeRoleCall, MotoSts

REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT_ID}:role/app"
SETTINGS = StsSettings(session_duration=1800.0, session_refresh=900.0, call_timeout=2.0)


def unique(prefix: str) -> str:
    """A session name no other test uses: tests share one moto server and count its calls."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def moto_sts() -> AsyncIterator[MotoSts]:
    async with MotoSts() as sts:
        yield sts


def _isolate_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> None:
    """Only ``env`` configures the SDK: no profile, config file or leftover variable of the host."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never wait for a real IMDS
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def aws_env(moto_sts: MotoSts, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _isolate_aws_env(monkeypatch, tmp_path, moto_sts.client_env())


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest_asyncio.fixture
async def assumer(aws_env: None, metrics: Metrics) -> AsyncIterator[StsAssumer]:
    async with StsAssumer(REGION, SETTINGS, metrics) as a:
        yield a


async def caller_arn_with(creds: Credentials, endpoint_url: str) -> str:
    """GetCallerIdentity signed with ``creds``: which principal do they make the caller?"""
    async with get_session().create_client(
        "sts",
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
    ) as sts:
        response: dict[str, Any] = await sts.get_caller_identity()
    return str(response["Arn"])


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- AssumeRole ---------------------------------------------------------------------------------


async def test_assume_role_returns_credentials_for_the_requested_session(
    assumer: StsAssumer, moto_sts: MotoSts, metrics: Metrics
) -> None:
    session = unique("default-app")
    identity = Identity(role_arn=ROLE, session_name=session, external_id="ext-1", session_tags=(("pod", "app-1"),))

    before = dt.datetime.now(dt.UTC)
    creds = await assumer.assume(identity)
    after = dt.datetime.now(dt.UTC)

    duration = dt.timedelta(seconds=SETTINGS.session_duration)
    slack = dt.timedelta(seconds=2)  # moto computes expiry on its own clock, a moment later
    assert before + duration - slack <= creds.expiration <= after + duration + slack
    assert creds.expiration.tzinfo == dt.UTC
    assert before - slack <= creds.last_updated <= after + slack
    assert creds.access_key_id.startswith("ASIA")
    assert creds.secret_access_key not in repr(creds)
    assert await moto_sts.assume_role_calls(session_name=session) == [
        AssumeRoleCall(
            role_arn=ROLE,
            session_name=session,
            external_id="ext-1",
            assumed_role_arn=f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/app/{session}",
        )
    ]
    assert sample(metrics, "podiam_sts_assume_role_calls_total", role=ROLE) == 1
    assert sample(metrics, "podiam_sts_assume_role_duration_seconds_count") == 1


async def test_returned_credentials_make_the_caller_the_assumed_role(assumer: StsAssumer, moto_sts: MotoSts) -> None:
    # What the end-to-end tests rely on: the ARN names role and session, so a pod can
    # prove which role it was given. Also across accounts and role paths.
    for role_arn, expected_role in ((ROLE, "app"), ("arn:aws:iam::210987654321:role/team/db", "db")):
        session = unique("ns-pod")
        creds = await assumer.assume(Identity(role_arn=role_arn, session_name=session))
        account = role_arn.split(":")[4]
        assert await caller_arn_with(creds, moto_sts.endpoint_url) == (
            f"arn:aws:sts::{account}:assumed-role/{expected_role}/{session}"
        )


async def test_assume_role_calls_are_counted_per_role_and_session(assumer: StsAssumer, moto_sts: MotoSts) -> None:
    other_role = f"arn:aws:iam::{ACCOUNT_ID}:role/other"
    a, b = unique("a"), unique("b")
    for role_arn, session in ((ROLE, a), (ROLE, a), (other_role, a), (ROLE, b)):
        await assumer.assume(Identity(role_arn=role_arn, session_name=session))

    assert len(await moto_sts.assume_role_calls(session_name=a)) == 3
    assert len(await moto_sts.assume_role_calls(role_arn=ROLE, session_name=a)) == 2
    assert len(await moto_sts.assume_role_calls(role_arn=other_role, session_name=a)) == 1
    assert len(await moto_sts.assume_role_calls(session_name=b)) == 1


async def test_start_returns_with_sts_loaded_and_nothing_counted() -> None:
    # moto imports a service's backend on that service's first request: 0.05-0.2 s here, over
    # a second on a fresh, loaded CI machine. A first AssumeRole slower than the per-attempt
    # read timeout is retried and counted twice (CI, fcf4323), so "started" means STS is loaded.
    async with MotoSts() as sts:
        assert "sts" in await sts.loaded_services()
        assert await sts.assume_role_calls() == []


async def test_reset_forgets_the_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async with MotoSts() as sts:
        _isolate_aws_env(monkeypatch, tmp_path, sts.client_env())
        async with StsAssumer(REGION, SETTINGS, Metrics()) as assumer:
            await assumer.assume(Identity(role_arn=ROLE, session_name="before-reset"))
            assert len(await sts.assume_role_calls()) == 1
            await sts.reset()
            assert await sts.assume_role_calls() == []
            await assumer.assume(Identity(role_arn=ROLE, session_name="after-reset"))
        assert [c.session_name for c in await sts.assume_role_calls()] == ["after-reset"]


async def test_the_client_takes_its_endpoint_from_the_sdk_configuration(assumer: StsAssumer, moto_sts: MotoSts) -> None:
    # AWS_ENDPOINT_URL_STS, as any SDK reads it: what the start-up log line names.
    assert assumer.endpoint_url.rstrip("/") == moto_sts.endpoint_url.rstrip("/")


async def test_cache_on_moto_makes_one_call_per_identity(aws_env: None, moto_sts: MotoSts) -> None:
    session = unique("cached")
    identity = Identity(role_arn=ROLE, session_name=session)
    metrics = Metrics()
    async with StsAssumer(REGION, SETTINGS, metrics) as assumer, CredentialCache(assumer, SETTINGS, metrics) as cache:
        results = await asyncio.gather(*(cache.get(identity) for _ in range(50)))
        assert all(r is results[0] for r in results)
        assert await cache.get(identity) is results[0]
    assert len(await moto_sts.assume_role_calls(session_name=session)) == 1


# -- errors ---------------------------------------------------------------------------------------


async def test_sts_error_code_is_kept(assumer: StsAssumer, moto_sts: MotoSts, metrics: Metrics) -> None:
    too_long = "s" * 65  # STS allows 64 characters; moto enforces it

    with pytest.raises(StsCallFailed) as info:
        await assumer.assume(Identity(role_arn=ROLE, session_name=too_long))

    assert info.value.code == "ValidationError"
    assert ROLE in str(info.value)
    assert "testing" not in str(info.value)  # the secret key of the caller
    assert await moto_sts.assume_role_calls(session_name=too_long) == []
    assert sample(metrics, "podiam_sts_assume_role_errors_total", role=ROLE, code="ValidationError") == 1


async def test_node_without_permission_gets_access_denied(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # moto checks IAM policies after its first N requests: the two that create the node's user.
    async with MotoSts(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "2"}) as sts:
        env = sts.client_env()
        async with get_session().create_client(
            "iam",
            region_name=REGION,
            endpoint_url=sts.endpoint_url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        ) as iam:
            await iam.create_user(UserName="node")
            key = (await iam.create_access_key(UserName="node"))["AccessKey"]
        env |= {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        _isolate_aws_env(monkeypatch, tmp_path, env)

        async with StsAssumer(REGION, SETTINGS, Metrics()) as assumer:
            with pytest.raises(StsCallFailed) as info:
                await assumer.assume(Identity(role_arn=ROLE, session_name="default-app"))

        assert info.value.code == "AccessDenied"
        assert "sts:AssumeRole" in str(info.value)
        assert key["SecretAccessKey"] not in str(info.value)


async def test_outage_is_unavailable_within_the_deadline_and_recovery_works(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, metrics: Metrics
) -> None:
    async with MotoSts() as sts:
        _isolate_aws_env(monkeypatch, tmp_path, sts.client_env())
        async with StsAssumer(REGION, SETTINGS, metrics) as assumer:
            await assumer.assume(Identity(role_arn=ROLE, session_name="before"))

            await sts.stop()
            started = time.monotonic()
            with pytest.raises(StsUnavailable) as info:
                await assumer.assume(Identity(role_arn=ROLE, session_name="during"))
            assert time.monotonic() - started < SETTINGS.call_timeout + 0.5
            assert ROLE in str(info.value)
            assert sample(metrics, "podiam_sts_assume_role_errors_total", role=ROLE, code="Unavailable") == 1

            await sts.start()  # same port: the client needs no new endpoint
            await assumer.assume(Identity(role_arn=ROLE, session_name="after"))
        assert [c.session_name for c in await sts.assume_role_calls()] == ["after"]  # a new process


async def test_silent_endpoint_is_unavailable_at_the_call_deadline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A server that accepts and never answers: only the deadlines end the call.
    hang_up = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hang_up.wait()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _isolate_aws_env(
        monkeypatch,
        tmp_path,
        {
            "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        },
    )
    settings = StsSettings(call_timeout=1.0)
    try:
        async with StsAssumer(REGION, settings, Metrics()) as assumer:
            started = time.monotonic()
            with pytest.raises(StsUnavailable):
                await assumer.assume(Identity(role_arn=ROLE, session_name="silent"))
            assert time.monotonic() - started < settings.call_timeout + 0.5
    finally:
        hang_up.set()
        server.close()
        await server.wait_closed()


# -- endpoint choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("regional", "env", "expected"),
    [
        (False, {}, "https://sts.amazonaws.com"),
        (True, {}, "https://sts.us-east-1.amazonaws.com"),
        (False, {"AWS_STS_REGIONAL_ENDPOINTS": "regional"}, "https://sts.us-east-1.amazonaws.com"),
        (True, {"AWS_STS_REGIONAL_ENDPOINTS": "legacy"}, "https://sts.amazonaws.com"),
        (False, {"AWS_ENDPOINT_URL_STS": "http://sts.example:4566"}, "http://sts.example:4566"),
    ],
)
async def test_endpoint_follows_the_setting_unless_the_sdk_environment_says_otherwise(
    regional: bool, env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _isolate_aws_env(monkeypatch, tmp_path, env)
    async with StsAssumer(REGION, StsSettings(regional_endpoint=regional), Metrics()) as assumer:
        assert assumer.endpoint_url == expected


async def test_regional_endpoint_outside_the_legacy_regions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _isolate_aws_env(monkeypatch, tmp_path, {})
    async with StsAssumer("ap-east-1", StsSettings(regional_endpoint=False), Metrics()) as assumer:
        assert assumer.endpoint_url == "https://sts.ap-east-1.amazonaws.com"


async def test_assumer_outside_its_context_is_an_error() -> None:
    assumer = StsAssumer(REGION, SETTINGS, Metrics())
    with pytest.raises(RuntimeError):
        await assumer.assume(Identity(role_arn=ROLE, session_name="x"))


async def test_assume_role_arn_assumes_that_role_first_and_pod_roles_with_its_credentials(
    aws_env: None, moto_sts: MotoSts, metrics: Metrics
) -> None:
    chain = f"arn:aws:iam::{ACCOUNT_ID}:role/{unique('podiam-server')}"
    settings = StsSettings(session_duration=3600.0, session_refresh=1800.0, call_timeout=2.0, assume_role_arn=chain)
    first, second = unique("chained-a"), unique("chained-b")
    async with StsAssumer(REGION, settings, metrics) as assumer:
        creds = await assumer.assume(Identity(role_arn=ROLE, session_name=first))
        await assumer.assume(Identity(role_arn=ROLE, session_name=second))
    calls = await moto_sts.assume_role_calls()
    chained = [i for i, c in enumerate(calls) if c.role_arn == chain]
    pods = [i for i, c in enumerate(calls) if c.session_name in (first, second)]
    # One session of the chain role (reused while valid), made before the pod roles' calls.
    assert len(chained) == 1 and calls[chained[0]].session_name == "podiam"
    assert len(pods) == 2 and chained[0] < min(pods)
    assert await caller_arn_with(creds, moto_sts.endpoint_url) == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/app/{first}"


def test_assume_role_arn_caps_the_session_duration_at_one_hour() -> None:
    with pytest.raises(ConfigError, match="at most 1h"):
        StsSettings(session_duration=7200.0, assume_role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/chain")
