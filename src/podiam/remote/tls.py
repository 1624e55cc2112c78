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
alert (deploy/monitoring/) before handshakes fail. That one date is read from the DER here,
so that the agent never imports cryptography (about 9 MiB resident): only the server's
clientAuth check and ``--check-config`` parse certificates with it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import Literal

import grpc
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
        not_after = certificate_not_after(chain)
        if not_after is not None:
            self._gauge.set(not_after.timestamp())


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL)
_SEQUENCE, _EXPLICIT_0, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0xA0, 0x17, 0x18


def certificate_not_after(chain: bytes) -> dt.datetime | None:
    """notAfter of the first certificate of a PEM chain; None if it does not parse.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
    signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... } (RFC 5280 4.1).
    For a gauge of this side's own files: nothing is trusted or refused on what this reads.
    """
    match = _PEM_CERTIFICATE.search(chain)
    if match is None:
        return None
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        tag, start, _ = _der_item(der, 0)
        tag_tbs, pos, tbs_end = _der_item(der, start)
        if tag != _SEQUENCE or tag_tbs != _SEQUENCE:
            return None
        if der[pos] == _EXPLICIT_0:  # version
            pos = _der_item(der, pos)[2]
        for _ in range(3):  # serialNumber, signature, issuer
            pos = _der_item(der, pos)[2]
        tag, pos, validity_end = _der_item(der, pos)
        if tag != _SEQUENCE or validity_end > tbs_end:
            return None
        pos = _der_item(der, pos)[2]  # notBefore
        tag, start, end = _der_item(der, pos)
        text = der[start:end].decode("ascii")
    except (binascii.Error, IndexError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if tag == _UTC_TIME and len(text) == 13:  # YYMMDDHHMMSSZ; YY >= 50 means 19YY (RFC 5280 4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != _GENERALIZED_TIME or len(text) != 15:  # YYYYMMDDHHMMSSZ
        return None
    try:
        return dt.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def _der_item(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER item at ``pos``; IndexError or
    ValueError when it runs past the end of ``der``."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:  # long form: the next (length & 0x7F) bytes hold the length
        size = length & 0x7F
        if not 0 < size <= 4 or pos + size > len(der):
            raise ValueError("bad DER length")
        length, pos = int.from_bytes(der[pos:pos + size], "big"), pos + size
    if pos + length > len(der):
        raise ValueError("DER item runs past the end")
    return tag, pos, pos + length


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


def check_files(files: TlsFiles, side: Literal["client", "server"]) -> None:
    """What a handshake would find wrong with these files, as ConfigError: unreadable or not PEM,
    a key that is not the certificate's, a certificate without ``side``'s extended key usage
    (the other side refuses it), a CA file with no certificate. Reads the files, nothing else."""
    from cryptography import x509  # noqa: PLC0415 - see the module docstring
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

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
    wanted = ExtendedKeyUsageOID.CLIENT_AUTH if side == "client" else ExtendedKeyUsageOID.SERVER_AUTH
    if wanted not in usage:
        raise ConfigError(f"--cert: the certificate in {files.cert} lacks the {side}Auth extended key usage, "
                          f"so the other side refuses it (`podiam certs init` writes one per side)")
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError as e:
        raise ConfigError(f"--ca: {files.ca} holds no PEM certificate: {e}") from e


def is_client_certificate(pem: bytes) -> bool:
    """Whether the certificate carries the clientAuth extended key usage."""
    from cryptography import x509  # noqa: PLC0415 - see the module docstring
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

    try:
        usage = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage.value
