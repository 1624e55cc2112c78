"""
Mutual TLS for split mode, from PEM files (cert-manager's layout works as is).

The server requires a client certificate signed by its CA (--ca), and reloads the three
files when any of them changes: gRPC asks for the configuration at each new handshake, so
a CA rollover or a renewed certificate applies to new connections without a restart. The
agent reads its files at each connection attempt, with the same effect. Besides the
handshake's checks, the server accepts a client certificate only with the clientAuth
extended key usage: a server certificate stolen from a replica is not an agent's.

Each side exports when its own certificate expires, as loaded (at start, at each reload on
the server, at each connection attempt on the agent): a renewal that stopped shows up as an
alert (deploy/monitoring/) before handshakes fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client import Gauge

from podiam.errors import ConfigError
from podiam.observability.metrics import Metrics


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    """PEM certificate chain of this side."""
    key: str
    """PEM private key of ``cert``."""
    ca: str
    """PEM CA bundle that signs the other side's certificates."""

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert, key, ca); ConfigError naming the file that cannot be read."""
        contents = []
        for flag, path in (("--cert", self.cert), ("--key", self.key), ("--ca", self.ca)):
            try:
                with open(path, "rb") as f:
                    contents.append(f.read())
            except OSError as e:
                raise ConfigError(f"{flag}: cannot read {path}: {e.strerror or e}") from e
        return contents[0], contents[1], contents[2]

    def stamp(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when a file is replaced (mtime, size, inode), cheap enough per handshake."""
        stamps = []
        for path in (self.cert, self.key, self.ca):
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)


class CertificateExpiry:
    """``podiam_tls_certificate_expiration_timestamp_seconds``: this side's certificate's notAfter."""

    def __init__(self, metrics: Metrics) -> None:
        self._gauge = Gauge("podiam_tls_certificate_expiration_timestamp_seconds",
                            "When this side's certificate (--cert, the chain's first) expires, in unix seconds, "
                            "as last loaded.", registry=metrics.registry)

    def record(self, chain: bytes) -> None:
        """Export the first certificate's notAfter; a chain that does not parse leaves the last value
        (the handshake reports that file, not this gauge)."""
        try:
            leaf = x509.load_pem_x509_certificate(chain)
        except ValueError:
            return
        self._gauge.set(leaf.not_valid_after_utc.timestamp())


def server_credentials(files: TlsFiles, expiry: CertificateExpiry | None = None) -> grpc.ServerCredentials:
    """Client certificates required and checked against the CA; the files reloaded on change.

    ``expiry``: exported at start and at each reload (the server and agent pass theirs; a test
    that only dials needs none)."""
    cert, key, ca = files.read()
    if expiry is not None:
        expiry.record(cert)
    seen = [files.stamp()]

    def config(cert: bytes, key: bytes, ca: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        stamp = files.stamp()
        if stamp == seen[0]:
            return None  # unchanged: gRPC keeps the current configuration
        try:
            new = files.read()
        except ConfigError:
            return None  # mid-replacement (a file missing for a moment): keep the current one
        seen[0] = stamp
        if expiry is not None:
            expiry.record(new[0])
        return config(*new)

    # gRPC's fetcher may answer None (keep the current configuration); the stubs say otherwise.
    return grpc.dynamic_ssl_server_credentials(config(cert, key, ca), fetch,  # type: ignore[arg-type]
                                               require_client_authentication=True)


def channel_credentials(files: TlsFiles, expiry: CertificateExpiry | None = None) -> grpc.ChannelCredentials:
    """The agent's side: its client certificate, and the CA the server's must be signed by."""
    cert, key, ca = files.read()
    if expiry is not None:
        expiry.record(cert)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


_USAGES = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}


def check_files(files: TlsFiles, side: Literal["client", "server"]) -> None:
    """What a handshake would find wrong with these files, as ConfigError: unreadable or not PEM,
    a key that is not the certificate's, a certificate without ``side``'s extended key usage
    (the other side refuses it), a CA file with no certificate. Reads the files, nothing else."""
    cert_pem, key_pem, ca_pem = files.read()
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise ConfigError(f"--cert: {files.cert} holds no PEM certificate: {e}") from e
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:  # TypeError: an encrypted key, which podiam cannot unlock
        raise ConfigError(f"--key: {files.key} holds no unencrypted PEM private key: {e}") from e
    if key.public_key() != chain[0].public_key():
        raise ConfigError(f"--key: {files.key} is not the private key of the certificate in {files.cert}")
    try:
        usage = chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = x509.ExtendedKeyUsage([])
    if _USAGES[side] not in usage:
        raise ConfigError(f"--cert: the certificate in {files.cert} lacks the {side}Auth extended key usage, "
                          f"so the other side refuses it (`podiam certs init` writes one per side)")
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as e:
        raise ConfigError(f"--ca: {files.ca} holds no PEM certificate: {e}") from e


def is_client_certificate(pem: bytes) -> bool:
    """Whether the certificate carries the clientAuth extended key usage."""
    try:
        usage = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage.value
