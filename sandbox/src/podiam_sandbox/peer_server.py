"""A host that reports who called it: a tiny HTTP server answering every request with the
caller's IP, which it also records. Tests use it to see what source address a redirected
pod connection arrives with."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class PeerServer:
    """A tiny HTTP server answering every request with the caller's IP, which it also records."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.peers: list[str] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PeerServer:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            peer = writer.get_extra_info("peername")[0]
            self.peers.append(peer)
            await reader.readuntil(b"\r\n\r\n")
            body = peer.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)
