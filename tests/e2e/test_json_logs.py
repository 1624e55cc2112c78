"""
One life of the agent with ``--log-format json``: pods watched and served, a refusal whose
Event cannot be written, the Kubernetes API and STS lost and back, a proxied read from a
node metadata service that refuses IMDSv2 tokens, and shutdown. Every line the process
writes must be a JSON object with an event, a level and a timestamp, and the lines of
each of those paths must carry their fields, so that a log pipeline can query them.

The outages are real ones on the wire: the agent reaches the API and STS through TCP
forwarders that the test cuts (connections reset, port closed) and restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from yarl import URL

from podiam_sandbox.kubeapi import write_kubeconfig
from podiam_sandbox.world import BASE_ARN, World, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CREDS = "/latest/meta-data/iam/security-credentials/"
REGION_PATH = "/latest/meta-data/placement/region"


class Forwarder:
    """Forwards TCP connections on 127.0.0.1 to ``host:port`` until cut; restored on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones: the service is gone, as the agent sees it."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=10)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = {client_writer}
        self._writers |= writers
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            writers.add(upstream_writer)
            self._writers.add(upstream_writer)
            pipes = [asyncio.create_task(_pipe(client_reader, upstream_writer)),
                     asyncio.create_task(_pipe(upstream_reader, client_writer))]
            # Either side closing ends the connection; the other pipe is cancelled with it.
            _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for pipe in pending:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass
        finally:
            for writer in writers:
                writer.transport.abort()
            self._writers -= writers
            self._handlers.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def forwarding(url: str) -> AsyncIterator[Forwarder]:
    target = URL(url)
    assert target.host is not None and target.port is not None
    forwarder = Forwarder(target.host, target.port)
    await forwarder.open()
    try:
        yield forwarder
    finally:
        await forwarder.cut()


@contextlib.asynccontextmanager
async def imds_refusing_tokens() -> AsyncIterator[str]:
    """A node metadata service that answers token requests 403 (as a proxy in front of an
    IMDSv1-only service does) and serves the region; ``host:port``."""

    async def token(_: web.Request) -> web.Response:
        return web.Response(status=403, text="Forbidden")

    async def region(_: web.Request) -> web.Response:
        return web.Response(text="us-east-1")

    app = web.Application()
    app.router.add_put("/latest/api/token", token)
    app.router.add_get(REGION_PATH, region)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def kube_api(world: World) -> AsyncIterator[Forwarder]:
    server = json.loads(world.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    async with forwarding(server) as forwarder:
        yield forwarder


@pytest_asyncio.fixture(loop_scope="module")
async def sts(world: World) -> AsyncIterator[Forwarder]:
    async with forwarding(world.sts.endpoint_url) as forwarder:
        yield forwarder


def records(logs: str) -> list[dict[str, Any]]:
    """Each line as a JSON object with event, level and timestamp; fails on any line that is not."""
    parsed = []
    for number, line in enumerate(logs.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"log line {number} is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), f"log line {number} is not an object: {line[:300]!r}"
        assert {"event", "level", "timestamp"} <= record.keys(), f"log line {number}: {line[:300]!r}"
        parsed.append(record)
    return parsed


def the(logged: list[dict[str, Any]], event: str, **fields: Any) -> dict[str, Any]:
    """The first record of ``event`` whose fields include ``fields``."""
    for record in logged:
        if record["event"] == event and all(record.get(k) == v for k, v in fields.items()):
            return record
    pytest.fail(f"no {event!r} line with {fields}; events: {sorted({r['event'] for r in logged})}")


async def test_every_line_is_a_json_object_and_each_path_logs_its_fields(
    world: World, kube_api: Forwarder, sts: Forwarder, tmp_path: Path,
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{kube_api.port}")
    # With restrictions the namespace watch runs too; one namespace's annotation is not JSON.
    await world.set_namespace("team-j", {"iam.amazonaws.com/allowed-roles": '["role-*"]'})
    await world.set_namespace("team-broken", {"iam.amazonaws.com/allowed-roles": "[not json"})
    async with imds_refusing_tokens() as node_imds:
        # Later flags win: the agent's API, STS and node metadata are the ones this test controls.
        agent = await world.start_agent(
            "--log-format", "json", "--log-level", "debug", "--kubeconfig", str(kubeconfig),
            "--metadata-addr", node_imds, "--sts-timeout", "2s", "--namespace-restrictions",
            env={"AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{sts.port}"},
        )
        try:
            served = await world.add_pod("logged", "team-j", role="role-logged")
            doc = (await served.http("GET", CREDS + "role-logged")).json()
            assert (await served.http("GET", REGION_PATH)).body == b"us-east-1"

            def logged_event(event: str, *fragments: str) -> Any:
                async def check() -> bool:
                    return any(f'"event": "{event}"' in line and all(f in line for f in fragments)
                               for line in agent.logs().splitlines())
                return check

            # The API goes away: both watches fail, and the Event for a refusal is not written.
            await kube_api.cut()
            await wait_until(logged_event("watch interrupted; resuming"), 20, "the watches to fail")
            assert (await served.http("GET", CREDS + "someone-else")).status == 403
            await wait_until(logged_event("event not written; its next occurrence tries again"), 20,
                             "the failed Event write")
            await kube_api.open()

            # STS goes away: a new pod's credentials cannot be fetched (the watch is back to see it).
            await sts.cut()
            stranded = await world.add_pod("stranded", "team-j", role="role-stranded")
            # The prefetch when the pod enters the index fails: the resumed watch has seen it.
            await wait_until(logged_event("credentials not fetched", "role-stranded"), 30,
                             "the watch to resume and the prefetch to fail")
            # STS unreachable (refused or reset) is StsUnavailable: 504, never the 502 of an STS error answer.
            assert (await stranded.http("GET", CREDS + "role-stranded")).status == 504
            await sts.open()
        finally:
            assert await agent.stop() == 0

    logs = agent.logs()
    for secret in (doc["SecretAccessKey"], doc["Token"]):
        assert secret not in logs
    logged = records(logs)
    assert {r["level"] for r in logged} <= {"debug", "info", "warning", "error"}

    the(logged, "agent started", node=world.node_name)
    for resource in ("pod", "namespace"):
        assert isinstance(the(logged, "watch listed", resource=resource)["objects"], int)
        interrupted = the(logged, "watch interrupted; resuming", resource=resource)
        assert interrupted["error"] and interrupted["view"] and interrupted["retry_in"] >= 0
    assert the(logged, "watch listed", resource="pod")["view"] == f"pods on {world.node_name}"
    assert the(logged, "namespace annotation cannot be used; the namespace permits no role",
               namespace="team-broken")["problem"]

    issued = the(logged, "credentials issued", namespace="team-j", pod="logged")
    assert (issued["access_key_id"], issued["role_arn"]) == (doc["AccessKeyId"], BASE_ARN + "role-logged")
    refused = the(logged, "request refused", client=served.ip, status=403, reason="role_mismatch")
    assert refused["target"] == CREDS + "someone-else"
    unwritten = the(logged, "event not written; its next occurrence tries again", reason="IAMRoleForbidden",
                    subject="pod team-j/logged")
    assert unwritten["error"]
    not_fetched = the(logged, "credentials not fetched", role_arn=BASE_ARN + "role-stranded")
    assert not_fetched["error"] and not_fetched["failures"] >= 1
    unavailable = the(logged, "credentials unavailable")
    assert unavailable["reason"] in ("sts_error", "sts_unavailable") and "role-stranded" in unavailable["detail"]

    the(logged, "node metadata token refused; using IMDSv1", status=403)
    the(logged, "node metadata proxied", pod="team-j/logged", path=REGION_PATH, upstream_status=200)
    the(logged, "stopped")
