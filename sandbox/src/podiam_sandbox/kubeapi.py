"""
The Kubernetes API of the test world: an in-process server and a standalone one.

kmock 0.8's emulator serves objects over HTTP but not what a watch-based agent relies on:
resourceVersions, selectors, resumable watches, 410 Expired, bookmarks, server-side
timeouts, namespaces, generateName, PUT. ``KubeApiEmulator`` adds them (the modules
``kubeapi_*`` hold the parts); this module runs it.

In process (tests)::

    async with run_kubeapi() as api:
        write_kubeconfig(path, api.url)
        await api.emulator.create_object("pods", {...})

Standalone (the demo; its own process, as sandbox servers must not share the agent's)::

    python -m podiam_sandbox.kubeapi --host 127.0.0.1 --port 0 --kubeconfig PATH [--audit-log PATH]

writes the kubeconfig, prints ``ready <url>`` once serving, and exits cleanly on SIGTERM
or SIGINT; with --audit-log it appends one JSON line per request (the requester's token,
the RBAC verb, the object: ``kubeapi_wire.audit_record``), which tests compare with the RBAC
rules podiam's manifests grant. It serves with aiohttp directly rather than through ``kmock.Server``, which
would patch aiohttp's DNS resolution for the whole process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp.web

from podiam_sandbox import kubeapi_wire as wire
from podiam_sandbox.kubeapi_emulator import KubeApiEmulator, ResourceRef, core_resources

__all__ = [
    "KubeApi",
    "KubeApiEmulator",
    "ResourceRef",
    "core_resources",
    "kubeconfig_for",
    "main",
    "run_kubeapi",
    "write_kubeconfig",
]

SANDBOX_NAME = "podiam-sandbox"
SANDBOX_TOKEN = "podiam-sandbox-token"  # noqa: S105  # a dummy: the emulator checks no credentials
SHUTDOWN_TIMEOUT = 2.0
"""Seconds to let in-flight requests finish at shutdown; watches are dropped before that."""


@dataclass(frozen=True)
class KubeApi:
    """A running emulator and where it listens."""

    url: str
    emulator: KubeApiEmulator

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """A kubeconfig for this server at ``path`` (see ``write_kubeconfig``)."""
        return write_kubeconfig(path, self.url, namespace=namespace)


Handler = Callable[[aiohttp.web.BaseRequest], Awaitable[aiohttp.web.StreamResponse]]


def audited(handler: Handler, log: TextIO) -> Handler:
    """``handler``, first writing each request's audit record to ``log`` (one JSON line, flushed)."""

    async def serve(raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        record = wire.audit_record(raw_request.method, raw_request.path, raw_request.query,
                                   raw_request.headers.get("Authorization", ""))
        log.write(json.dumps(record) + "\n")
        log.flush()
        return await handler(raw_request)

    return serve


@contextlib.asynccontextmanager
async def run_kubeapi(
    *, host: str = "127.0.0.1", port: int = 0, emulator: KubeApiEmulator | None = None,
    audit_log: TextIO | None = None,
) -> AsyncIterator[KubeApi]:
    """Serve an emulator over HTTP until the block exits; port 0 picks a free port."""
    emulator = emulator if emulator is not None else KubeApiEmulator()
    handler: Handler = emulator if audit_log is None else audited(emulator, audit_log)
    # handler_cancellation: a client that goes away ends its watch at once, not at the next event.
    server = aiohttp.web.Server(handler, handler_cancellation=True)
    runner = aiohttp.web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    async with emulator:
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(runner, host, port)
            await site.start()
            yield KubeApi(url=_url(runner.addresses[0]), emulator=emulator)
        finally:
            await emulator.close_watches()
            await runner.cleanup()


def kubeconfig_for(url: str, *, namespace: str = "default", token: str = SANDBOX_TOKEN) -> dict[str, Any]:
    """A kubeconfig with one cluster at ``url``, a dummy token user, and its context current.

    ``token``: a dummy naming its holder, which the audit log records as the user."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": SANDBOX_NAME, "cluster": {"server": url}}],
        "users": [{"name": SANDBOX_NAME, "user": {"token": token}}],
        "contexts": [{
            "name": SANDBOX_NAME,
            "context": {"cluster": SANDBOX_NAME, "user": SANDBOX_NAME, "namespace": namespace},
        }],
        "current-context": SANDBOX_NAME,
        "preferences": {},
    }


def write_kubeconfig(path: Path, url: str, *, namespace: str = "default", token: str = SANDBOX_TOKEN) -> Path:
    """Write ``kubeconfig_for(url)`` as JSON (valid YAML for every client), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(kubeconfig_for(url, namespace=namespace, token=token), file, indent=2)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m podiam_sandbox.kubeapi``: serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m podiam_sandbox.kubeapi",
        description="Serve the sandbox's Kubernetes API emulator until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for the server here")
    parser.add_argument("--namespace", action="append", default=[], metavar="NAME",
                        help="create this namespace at start (repeatable)")
    parser.add_argument("--bookmark-interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between watch bookmarks (default: %(default)s)")
    parser.add_argument("--history-limit", type=int, default=10_000, metavar="CHANGES",
                        help="changes kept for watch resumption (default: %(default)s)")
    parser.add_argument("--audit-log", type=Path, metavar="PATH",
                        help="append one JSON line per request: user (token), RBAC verb, object")
    args = parser.parse_args(argv)
    # Nothing outside this process can read its request history or add reactions: keep none.
    emulator = KubeApiEmulator(bookmark_interval=args.bookmark_interval, history_limit=args.history_limit,
                               keep_requests=False)
    with contextlib.ExitStack() as files:
        audit = files.enter_context(args.audit_log.open("a", encoding="utf-8")) if args.audit_log else None
        asyncio.run(_serve(emulator, host=args.host, port=args.port, kubeconfig=args.kubeconfig,
                           namespaces=args.namespace, audit_log=audit))
    return 0


async def _serve(
    emulator: KubeApiEmulator, *, host: str, port: int, kubeconfig: Path | None, namespaces: Sequence[str],
    audit_log: TextIO | None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)  # only a flag: shutdown runs in the normal flow
    async with run_kubeapi(host=host, port=port, emulator=emulator, audit_log=audit_log) as api:
        for namespace in namespaces:
            await emulator.create_object("v1/namespaces", {"metadata": {"name": namespace}})
        if kubeconfig is not None:
            write_kubeconfig(kubeconfig, api.url)
        print(f"ready {api.url}", flush=True)  # the one line a parent process waits for
        await stop.wait()


def _url(address: Any) -> str:
    """The URL clients use for a bound socket address; a wildcard address is reached via loopback."""
    host, port = str(address[0]), int(address[1])
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"http://[{ip}]:{port}" if ip.version == 6 else f"http://{ip}:{port}"


if __name__ == "__main__":
    sys.exit(main())
