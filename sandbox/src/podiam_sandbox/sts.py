"""
A local STS for the tests and the demo: moto's server, in a subprocess.

A subprocess rather than moto's in-process ThreadedMotoServer: the server is then real
over the wire (podiam's aiobotocore client talks HTTP to it), stopping it is an STS
outage for every client, and starting it again on the same port is the recovery. The
object holds no event-loop state (a plain ``subprocess.Popen``), so one instance can
serve a whole test module whatever loop each test runs in.

What moto's STS does and does not do (moto 5.2): AssumeRole succeeds for any role ARN
(no trust policy, external ID or duration checks) and rejects session names over 64
characters (ValidationError). GetCallerIdentity signed with credentials from its
AssumeRole answers ``arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`` (ACCOUNT from the
role ARN, ROLE its last path segment), which end-to-end tests use to prove which role a
pod got. With INITIAL_NO_AUTH_ACTION_COUNT=n in ``extra_env``, requests after the first n
are checked against the caller's IAM policies.

Counting calls: moto tracks every model instance it creates and serves them at
``GET /moto-api/data.json``; each successful AssumeRole (also AssumeRoleWithWebIdentity
/ WithSAML) creates one ``sts.AssumedRole``. Failed calls create none. ``reset()``
(``POST /moto-api/reset``) forgets them along with every other moto state. ``start()``
returns once STS answers an AssumeRole (see ``_warm_up``), with that call forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Self

import aiohttp

ACCOUNT_ID = "123456789012"
"""moto's default account: role ARNs without another account live here."""

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto accepts anything; these are the convention
REGION = "us-east-1"


_WARM_UP_FORM = (
    f"Action=AssumeRole&Version=2011-06-15&RoleArn=arn:aws:iam::{ACCOUNT_ID}:role/warm-up"
    "&RoleSessionName=podiam-sandbox-warm-up"
)
_WARM_UP_AUTHORIZATION = (
    f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{REGION}/sts/aws4_request,"
    " SignedHeaders=host, Signature=0"
)
"""moto routes a request by the service its credential scope names, and checks no signature."""


@dataclass(frozen=True)
class AssumeRoleCall:
    """One successful AssumeRole moto served (no secrets kept)."""

    role_arn: str
    session_name: str
    external_id: str | None
    assumed_role_arn: str
    """arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION"""


class MotoSts:
    """moto's server on ``host:port`` (a free port when 0), started and stopped at will.

    ``async with MotoSts() as sts:`` starts it and stops it at the end; ``stop()`` and
    ``start()`` in between simulate an outage and the recovery, on the same port.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_timeout: float = 20.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self._start_timeout = start_timeout
        self._extra_env = dict(extra_env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client_env(self) -> dict[str, str]:
        """Environment for a process that should use this STS (podiam's agent, an SDK).

        AWS_REGION is what most SDKs read, AWS_DEFAULT_REGION what botocore reads.
        """
        return {
            "AWS_ENDPOINT_URL_STS": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server (again, on the same port) and wait until it answers."""
        if self.running:
            return
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives until stop(); a pipe could fill and block moto
        # Popen, not asyncio's subprocess API: the object must not belong to one event loop
        # (a module-scoped test fixture outlives each test's loop). Popen returns at once.
        self._process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self._extra_env},
        )
        try:
            await self._wait_ready()
            await self._warm_up()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the server: every client now fails to connect. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def reset(self) -> None:
        """Forget every moto state (roles assumed, IAM users, ...)."""
        await self._request("POST", "/moto-api/reset")

    async def loaded_services(self) -> set[str]:
        """The services whose backends moto has loaded (it loads one on its first request)."""
        return set(await self._request("GET", "/moto-api/data.json"))

    async def assume_role_calls(
        self, *, role_arn: str | None = None, session_name: str | None = None
    ) -> list[AssumeRoleCall]:
        """Successful AssumeRole calls the server has answered, optionally filtered."""
        data = await self._request("GET", "/moto-api/data.json")
        calls = [
            AssumeRoleCall(
                role_arn=item["role_arn"],
                session_name=item["session_name"],
                external_id=item.get("external_id"),
                assumed_role_arn=item["arn"],
            )
            for item in data.get("sts", {}).get("AssumedRole", [])
        ]
        return [
            c
            for c in calls
            if (role_arn is None or c.role_arn == role_arn)
            and (session_name is None or c.session_name == session_name)
        ]

    async def _warm_up(self) -> None:
        """Load moto's STS backend now, then forget the call.

        moto imports a service's models on its first request for it: 0.05-0.2 s on a warm
        machine, over a second on a fresh, loaded one. A first AssumeRole that slow outlasts a
        client's per-attempt read timeout and is retried, so moto counts it twice. The call
        goes unsigned (moto checks no signature, only the scope naming the service); reset-auth
        gives back the unauthenticated request it used of INITIAL_NO_AUTH_ACTION_COUNT.
        """
        await self._request(
            "POST",
            "/",
            data=_WARM_UP_FORM,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": _WARM_UP_AUTHORIZATION},
            json=False,
        )
        await self.reset()
        no_auth = self._extra_env.get("INITIAL_NO_AUTH_ACTION_COUNT", os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT"))
        await self._request("POST", "/moto-api/reset-auth", data=no_auth or "inf")

    async def _request(
        self, method: str, path: str, *, data: str | None = None, headers: dict[str, str] | None = None,
        json: bool = True,
    ) -> Any:
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, self.endpoint_url + path, data=data, headers=headers) as response,
        ):
            response.raise_for_status()
            return await response.json(content_type=None) if json else await response.text()

    async def _wait_ready(self) -> None:
        """Poll until the server answers, it exits, or start_timeout passes."""
        url = self.endpoint_url + "/moto-api/data.json"
        probe_timeout = aiohttp.ClientTimeout(total=1.0)
        try:
            async with (
                asyncio.timeout(self._start_timeout),
                aiohttp.ClientSession(timeout=probe_timeout) as http,
            ):
                while True:
                    process = self._process
                    if process is None or process.poll() is not None:
                        raise RuntimeError(f"moto server exited at start: {self._log_tail()}")
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with http.get(url) as response:
                            if response.status == 200:
                                return
                    # Polling a child process that has no readiness signal; not test synchronisation.
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError(
                f"moto server not ready on {self.endpoint_url} after {self._start_timeout:g} s:"
                f" {self._log_tail()}"
            ) from None

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode(errors="replace")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port
