"""
`podiam certs init`'s output in real mutual-TLS handshakes over loopback, with Python's ssl
(OpenSSL): the files as written, and the Secrets as a kubelet would mount them, work as they
are; everything else is refused in the handshake (TLS 1.3: the client learns of the
server's refusal only at its first read, as an end of stream).

What OpenSSL enforces, found here rather than assumed: a client checks that the server's
certificate allows serverAuth, and a server that asks for client certificates checks that
they allow clientAuth ("unsuitable certificate purpose"), both when the certificate carries an
extended key usage; so the agent certificate cannot serve and the server certificate cannot
connect as an agent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from click.testing import CliRunner

from podiam.cli import main


def certs_init(out: Path, *args: str) -> Path:
    result = CliRunner().invoke(main, ["certs", "init", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return certs_init(tmp_path_factory.mktemp("pki"), "--server-ip", "127.0.0.1")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another `certs init`: same names, another CA."""
    return certs_init(tmp_path_factory.mktemp("other"), "--server-ip", "127.0.0.1")


def server_context(leaf: Path) -> ssl.SSLContext:
    """As the server reads its mounted Secret: its certificate and key, and the CA of agents in ca.crt."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(leaf / "tls.crt", leaf / "tls.key")
    context.load_verify_locations(leaf / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path, leaf: Path | None) -> ssl.SSLContext:
    """As the agent dials: the CA of servers, its own certificate (or none), the server's name checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    context.load_verify_locations(ca)
    if leaf is not None:
        context.load_cert_chain(leaf / "tls.crt", leaf / "tls.key")
    return context


class EchoServer:
    """An asyncio TLS server that echoes one line to each client that got through the handshake."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = writer.get_extra_info("peercert")
            self.peers.append(dict(name[0] for name in peer["subject"])["commonName"])
            writer.write(await reader.readline())
            await writer.drain()
        finally:
            writer.close()

    async def start(self, context: ssl.SSLContext) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest_asyncio.fixture()
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    yield server
    await server.stop()


def _exchange(port: int, context: ssl.SSLContext, server_name: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        tls.sendall(b"ping\n")
        return tls.recv(16)


async def exchange(port: int, context: ssl.SSLContext, server_name: str) -> bytes:
    """One line there and back; raises what the handshake (or the first read after it) raises.

    The client is a blocking ssl socket in a thread: asyncio's TLS transport reports a
    server's refusal alert at the first read as a plain end of stream, and the alert is the
    reason these tests check.
    """
    return await asyncio.to_thread(_exchange, port, context, server_name)


@pytest.mark.parametrize("server_name", ["podiam-server.kube-system.svc", "podiam-server", "127.0.0.1"])
async def test_the_agent_and_server_certificates_shake_hands(pki: Path, echo: EchoServer, server_name: str) -> None:
    await echo.start(server_context(pki / "server"))
    assert await exchange(echo.port, client_context(pki / "agent" / "ca.crt", pki / "agent"), server_name) == b"ping\n"
    assert echo.peers == ["podiam-agent"]


async def test_the_secrets_work_as_a_kubelet_mounts_them(tmp_path: Path, echo: EchoServer) -> None:
    manifests = certs_init(tmp_path / "manifests", "--format", "kubernetes", "--namespace", "podiam")
    mounts = {}
    for component in ("server", "agent"):
        secret = json.loads((manifests / f"podiam-{component}-tls.json").read_text())
        mount = mounts[component] = tmp_path / "mounts" / component
        mount.mkdir(parents=True)
        for key, value in secret["data"].items():
            (mount / key).write_bytes(base64.b64decode(value))
    await echo.start(server_context(mounts["server"]))
    context = client_context(mounts["agent"] / "ca.crt", mounts["agent"])
    assert await exchange(echo.port, context, "podiam-server.podiam.svc.cluster.local") == b"ping\n"


async def refused_by_server(echo: EchoServer, context: ssl.SSLContext, caplog: pytest.LogCaptureFixture,
                            reason: str, verify_message: str | None = None) -> None:
    """The server's handshake fails for ``reason``; the client gets no answer, and the handler never runs.

    asyncio's TLS server closes the connection without flushing its alert, so the client sees
    only an end of stream (or a reset); the reason is in asyncio's debug log of the failure.
    """
    asyncio.get_running_loop().set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        try:
            answer = await exchange(echo.port, context, "podiam-server")
        except (ssl.SSLError, ConnectionError):
            answer = b""
    assert answer == b""
    assert echo.peers == []
    failures = [r.exc_info[1] for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], ssl.SSLError)]
    assert failures and {e.reason for e in failures} == {reason}  # asyncio logs the one failure twice
    if verify_message is not None:
        assert isinstance(failures[0], ssl.SSLCertVerificationError)
        assert verify_message in failures[0].verify_message


async def test_a_client_without_a_certificate_is_refused(pki: Path, echo: EchoServer,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    await echo.start(server_context(pki / "server"))
    await refused_by_server(echo, client_context(pki / "agent" / "ca.crt", None), caplog,
                            "PEER_DID_NOT_RETURN_A_CERTIFICATE")


async def test_an_agent_of_another_ca_is_refused(pki: Path, other_pki: Path, echo: EchoServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    await echo.start(server_context(pki / "server"))
    # It trusts our server, so only its own certificate is wrong.
    await refused_by_server(echo, client_context(pki / "agent" / "ca.crt", other_pki / "agent"), caplog,
                            "CERTIFICATE_VERIFY_FAILED", "unable to get local issuer certificate")


async def test_the_server_certificate_cannot_connect_as_an_agent(pki: Path, echo: EchoServer,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    # Same CA, and a certificate this CA signed: only its purpose (serverAuth, not clientAuth) is wrong.
    await echo.start(server_context(pki / "server"))
    await refused_by_server(echo, client_context(pki / "agent" / "ca.crt", pki / "server"), caplog,
                            "CERTIFICATE_VERIFY_FAILED", "unsuitable certificate purpose")


async def refused_by_agent(pki: Path, echo: EchoServer, server_name: str, *messages: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        await exchange(echo.port, client_context(pki / "agent" / "ca.crt", pki / "agent"), server_name)
    assert any(message in refused.value.verify_message for message in messages), refused.value.verify_message
    assert echo.peers == []


async def test_the_agent_certificate_cannot_serve(pki: Path, echo: EchoServer) -> None:
    # The agent certificate names podiam-agent, so the name matches and only its purpose is wrong.
    await echo.start(server_context(pki / "agent"))
    await refused_by_agent(pki, echo, "podiam-agent", "unsuitable certificate purpose")


async def test_a_server_of_another_ca_is_refused(pki: Path, other_pki: Path, echo: EchoServer) -> None:
    await echo.start(server_context(other_pki / "server"))
    # OpenSSL's server sends its CA with its certificate (it completes the chain from ca.crt).
    await refused_by_agent(pki, echo, "podiam-server", "self-signed certificate in certificate chain",
                           "unable to get local issuer certificate")


async def test_a_server_name_not_in_the_certificate_is_refused(pki: Path, echo: EchoServer) -> None:
    await echo.start(server_context(pki / "server"))
    await refused_by_agent(pki, echo, "podiam-server.default.svc", "Hostname mismatch")
