"""
The metadata endpoint on aiohttp: adapts aiohttp requests to the framework-neutral core
(imds/core.py), which decides everything. Pods reach it through the DNAT rule.
"""

from __future__ import annotations

from aiohttp import web

from podiam.imds.core import ImdsDeps, MetadataCore, Reply, Request


class AiohttpAdapter:
    def __init__(self, core: MetadataCore) -> None:
        self._core = core

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # raw_path: the target as sent; aiohttp's path is decoded and the core decides what is canonical.
        answer = self._core.answer(Request(request.method, request.raw_path, request.headers, request.remote or ""))
        reply = answer if isinstance(answer, Reply) else await answer
        headers = {"Server": "EC2ws", "Content-Type": reply.content_type, **dict(reply.extra_headers)}
        return web.Response(status=reply.status, body=reply.body, headers=headers)


def make_app(deps: ImdsDeps) -> web.Application:
    app = web.Application(client_max_size=4096)  # pods send no bodies worth more than that
    app.router.add_route("*", "/{tail:.*}", AiohttpAdapter(MetadataCore(deps)).handle)
    return app
