"""The pods and credentials as the metadata endpoint's tests need them (tests/ is on sys.path)."""

from __future__ import annotations

from typing import Any

from podiam.credentials import Identity
from podiam.imds.core import PodLookup
from podiam.pods import PodEntry


class LoopbackPods:
    """A real PodIndex (or split mode's Mirror), except that loopback addresses may be pods'
    (core's PodLookup).

    The HTTP tests serve their pods at 127.0.0.1: a test machine has no other address that a
    client can connect from. In the agent loopback is only ever the node itself, which
    PodIndex.is_host_ip answers (tests/unit/test_pod_index.py holds it to that); everything
    else these tests ask the index itself.
    """

    def __init__(self, index: PodLookup) -> None:
        self.index = index

    def lookup(self, ip: str) -> PodEntry:
        return self.index.lookup(ip)

    async def wait_for(self, ip: str, timeout: float) -> PodEntry:
        return await self.index.wait_for(ip, timeout)

    @property
    def host_identity(self) -> Identity | None:
        return self.index.host_identity

    @property
    def pod_changes(self) -> int:
        return self.index.pod_changes

    def is_host_ip(self, ip: str) -> bool:
        return not ip.startswith("127.") and self.index.is_host_ip(ip)


class CredentialDouble:
    """What every in-memory CredentialSource of the tests shares: credentials that never change
    but by what the test does through fresh() and get() (so no replay ever has to end for them)."""

    credential_changes = 0
    replays = 0

    def replayed(self) -> None:
        self.replays += 1


class RecordingTransport:
    """The asyncio transport the fast server's protocol writes to, in memory: keeps what is
    written; everything counts as flushed at once, so reading never pauses."""

    def __init__(self, peer: str = "10.0.0.5") -> None:
        self.peer = peer
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "wrote after closing"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
