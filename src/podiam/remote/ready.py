"""
Split mode's node-ready taint: a split agent has no API access, so it cannot remove its
node's start-up taint itself. Once it is ready (its rule installed, its mirror holding a
snapshot: its /readyz), it calls ReportReady on the channel of its open stream, and the
server removes the taint its own --node-ready-taint names from the node the agent named,
then answers. Without an answer (no stream open, an error status, the deadline) the agent
calls again after the back-off (node/ready_taint.py), on whatever stream is open then:
after a reconnect, another replica.

The request names only the node, never a taint: the key is the server's flag, so an agent
(or whoever holds the one client certificate all agents share) can remove that one taint
from any node that has it, and nothing else. See docs/threat-model.md, "Split mode".

Agent side: ``report_ready``. Server side: the service's ``ReportReady`` (remote/server.py)
asks a ``ReadyNodes`` (server_runner.py wires it to kube/node_taint.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import grpc

from podiam.errors import RemoteCallFailed
from podiam.remote import podiam_pb2 as pb
from podiam.remote import podiam_pb2_grpc as pb_grpc


class ReadyNodes(Protocol):
    """The server's side of ReportReady, when it has a --node-ready-taint."""

    @property
    def taint_key(self) -> str:
        """The server's --node-ready-taint."""
        ...

    async def node_ready(self, node: str) -> bool:
        """Remove the taint from ``node``; whether it had it. Raises KubeError (NodeNotFound,
        NodeChanged, a failed or slow API call) when it did not happen."""
        ...


async def report_ready(channel: Callable[[], grpc.aio.Channel | None], node: str, *,
                       timeout: float) -> tuple[str | None, bool]:
    """One ReportReady call on the open stream's channel: (the server's taint key or None, removed).

    RemoteCallFailed when no stream is open or the call fails: the caller retries.
    """
    open_channel = channel()
    if open_channel is None:
        raise RemoteCallFailed("no podiam server stream is open to report readiness on")
    try:
        reply = await pb_grpc.PodiamStub(open_channel).ReportReady(pb.ReportReadyRequest(node=node), timeout=timeout)
    except grpc.aio.AioRpcError as e:
        raise RemoteCallFailed(f"ReportReady failed: {e.code().name}: {(e.details() or '')[:200]}") from e
    except grpc.aio.UsageError as e:  # the stream's channel closed under us: the next stream's is used
        raise RemoteCallFailed("ReportReady: the stream's channel closed") from e
    return reply.taint_key or None, reply.removed
