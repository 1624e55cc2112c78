"""
`podiam certs init`: the CA, server certificate and agent certificate of split mode's
mutual TLS, as PEM files named like cert-manager's or as Kubernetes Secrets holding the
same keys (``tls.crt``, ``tls.key``, ``ca.crt``), so the server and agent read either.

Everything here is pure (certificates and bytes in memory) except ``write_tree``, the one
function that touches the file system.

Choices, and why:

- Keys are ECDSA P-256: 128-bit security (as RSA-3072) with 32-byte keys and 64-byte
  signatures, so handshakes and Secrets stay small and signing is fast; every TLS stack
  the split mode meets (gRPC's BoringSSL, OpenSSL, Go's crypto/tls, cert-manager's
  ``algorithm: ECDSA, size: 256``) supports it, which Ed25519 certificates cannot claim.
- The CA lives longer than the leaves (``ca_days``, 10 years, against ``days``, 1 year):
  replacing a CA means distributing a new bundle to every agent and server first, while a
  leaf is replaced in one Secret. A leaf never outlives its CA (``CertSpec`` refuses it).
- ``notBefore`` is backdated by ``CLOCK_SKEW`` (1 h): a certificate made on a laptop whose
  clock runs ahead of a node's is not "not yet valid" there.
- The server certificate carries serverAuth only and the agent certificate clientAuth
  only, so neither can stand in for the other; the CA is limited to path length 0 (it signs
  leaves, never another CA).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podiam.errors import ConfigError
from podiam.settings import DEFAULT_CA_DAYS, DEFAULT_DAYS, DEFAULT_NAMESPACE

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SERVICE_NAME = "podiam-server"
"""The in-cluster Service the server certificate names by default, in every DNS form."""
AGENT_NAME = "podiam-agent"
"""The agent certificate's common name and its one DNS SAN (for logs; it is a client name)."""
CA_NAME = "podiam CA"
CLOCK_SKEW = dt.timedelta(hours=1)
"""How far notBefore is backdated, so that a node whose clock is behind accepts new certificates."""

# Secret object names (not passwords), as a Helm chart or kustomization refers to them.
CA_SECRET = "podiam-ca"  # noqa: S105
SERVER_SECRET = "podiam-server-tls"  # noqa: S105
AGENT_SECRET = "podiam-agent-tls"  # noqa: S105

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _is_dns_name(name: str) -> bool:
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


@dataclass(frozen=True)
class CertSpec:
    """What `podiam certs init` is asked for; invalid values raise ConfigError."""

    server_dns: tuple[str, ...] = ()
    """Extra DNS names for the server certificate, besides the Service's in-cluster names."""
    server_ips: tuple[IpAddress, ...] = ()
    """IP addresses for the server certificate (IP SANs), for agents that dial an IP."""
    namespace: str = DEFAULT_NAMESPACE
    """The server's namespace: its Service names, and where the Secrets go."""
    days: int = DEFAULT_DAYS
    """Validity of the server and agent certificates, in days."""
    ca_days: int = DEFAULT_CA_DAYS
    """Validity of the CA, in days: at least ``days``, so that no leaf outlives its CA."""

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ConfigError("--days must be at least 1")
        if self.ca_days < self.days:
            raise ConfigError(f"--ca-days ({self.ca_days}) must be at least --days ({self.days}): "
                              "a certificate cannot outlive the CA that signed it")
        if len(self.namespace) > 63 or not _DNS_LABEL.fullmatch(self.namespace):
            raise ConfigError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name "
                              "(lower-case letters, digits and '-', at most 63)")
        for name in self.server_dns:
            if _is_ip(name):
                raise ConfigError(f"--server-dns {name!r} is an IP address: give it as --server-ip")
            if not _is_dns_name(name):
                raise ConfigError(f"--server-dns {name!r} is not a DNS name (lower-case labels of letters, "
                                  "digits and '-', no wildcards)")

    def server_names(self) -> tuple[str, ...]:
        """The server certificate's DNS SANs: the Service in every form a pod resolves, then the extra names."""
        service = (f"{SERVICE_NAME}", f"{SERVICE_NAME}.{self.namespace}", f"{SERVICE_NAME}.{self.namespace}.svc",
                   f"{SERVICE_NAME}.{self.namespace}.svc.cluster.local")
        return tuple(dict.fromkeys([*service, *self.server_dns]))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key; the key never appears in repr(), only in ``key_pem()``."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def __repr__(self) -> str:
        return (f"Issued(subject={self.certificate.subject.rfc4514_string()!r}, "
                f"not_after={self.certificate.not_valid_after_utc.isoformat()!r})")

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """The key, unencrypted PKCS#8 PEM (what cert-manager, gRPC and OpenSSL all read)."""
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


@dataclass(frozen=True)
class OutputFile:
    """One file to write, relative to the output directory; ``secret`` files are created 0600."""

    path: PurePosixPath
    content: bytes = field(repr=False)
    secret: bool


@dataclass(frozen=True)
class CertBundle:
    """The CA and the two leaves it signed."""

    ca: Issued
    server: Issued
    agent: Issued

    def files(self) -> list[OutputFile]:
        """cert-manager's layout: ``ca/{tls.crt,tls.key}``, ``server/`` and ``agent/`` with ``ca.crt`` too."""
        out = [OutputFile(PurePosixPath("ca/tls.crt"), self.ca.cert_pem(), secret=False),
               OutputFile(PurePosixPath("ca/tls.key"), self.ca.key_pem(), secret=True)]
        for name, leaf in (("server", self.server), ("agent", self.agent)):
            out += [OutputFile(PurePosixPath(name, key), content, secret=(key == "tls.key"))
                    for key, content in _tls_data(leaf, self.ca).items()]
        return out

    def secrets(self, namespace: str) -> list[OutputFile]:
        """One Secret manifest (JSON, which kubectl reads as YAML) per file; the CA's in ``ca/``.

        The CA's Secret is kept apart so that ``kubectl apply -f DIR/`` applies the two leaves
        only: the CA key lets its holder mint agent and server identities, so it goes into the
        cluster only on purpose (for a cert-manager CA Issuer, which reads exactly this Secret).
        """
        manifests = [(PurePosixPath(f"{SERVER_SECRET}.json"), _secret(SERVER_SECRET, namespace, "server",
                                                                       _tls_data(self.server, self.ca))),
                     (PurePosixPath(f"{AGENT_SECRET}.json"), _secret(AGENT_SECRET, namespace, "agent",
                                                                      _tls_data(self.agent, self.ca))),
                     (PurePosixPath("ca", f"{CA_SECRET}.json"), _secret(CA_SECRET, namespace, "ca",
                                                                         _tls_data(self.ca, self.ca)))]
        return [OutputFile(path, (json.dumps(manifest, indent=2) + "\n").encode(), secret=True)
                for path, manifest in manifests]


def _tls_data(leaf: Issued, ca: Issued) -> dict[str, bytes]:
    return {"tls.crt": leaf.cert_pem(), "tls.key": leaf.key_pem(), "ca.crt": ca.cert_pem()}


def _secret(name: str, namespace: str, component: str, data: dict[str, bytes]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "podiam", "app.kubernetes.io/component": component}},
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: dt.datetime,
             days: int) -> x509.CertificateBuilder:
    public = key.public_key()
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "podiam"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=signs_certificates,
                         crl_sign=signs_certificates, encipher_only=False, decipher_only=False)


def new_ca(now: dt.datetime, days: int) -> Issued:
    """A self-signed CA that may sign leaves (keyCertSign) but no other CA (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (_builder(_name(CA_NAME), _name(CA_NAME), key, now, days)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(_key_usage(signs_certificates=True), critical=True)
                   .sign(key, hashes.SHA256()))
    return Issued(certificate, key)


def issue_leaf(ca: Issued, common_name: str, *, sans: Sequence[x509.GeneralName], usage: x509.ObjectIdentifier,
               now: dt.datetime, days: int) -> Issued:
    """A certificate signed by ``ca`` for one purpose (serverAuth or clientAuth), with these SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (_builder(_name(common_name), ca.certificate.subject, key, now, days)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_key_usage(signs_certificates=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                                  critical=False)
                   .sign(ca.key, hashes.SHA256()))
    return Issued(certificate, key)


def create(spec: CertSpec, now: dt.datetime) -> CertBundle:
    """A new CA, and the server and agent certificates it signs, valid from ``now`` (UTC)."""
    ca = new_ca(now, spec.ca_days)
    server_sans: list[x509.GeneralName] = [x509.DNSName(name) for name in spec.server_names()]
    server_sans += [x509.IPAddress(ip) for ip in dict.fromkeys(spec.server_ips)]
    server = issue_leaf(ca, SERVICE_NAME, sans=server_sans, usage=ExtendedKeyUsageOID.SERVER_AUTH, now=now,
                        days=spec.days)
    agent = issue_leaf(ca, AGENT_NAME, sans=[x509.DNSName(AGENT_NAME)], usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                       now=now, days=spec.days)
    return CertBundle(ca, server, agent)


def write_tree(out: Path, files: Iterable[OutputFile], *, force: bool) -> list[Path]:
    """Write ``files`` below ``out``; new directories 0700, secret files 0600 from their creation.

    Without ``force`` nothing is written if any file exists (ConfigError naming it). With it,
    each file is written to a new file beside it and renamed over the old one, so a key never
    sits in a file with the old file's looser mode, and a reader never sees half a file.
    """
    files = list(files)
    targets = [out.joinpath(*f.path.parts) for f in files]
    if not force:
        for target in targets:
            if target.exists() or target.is_symlink():
                raise ConfigError(f"{target} exists; remove it or pass --force to replace it")
    for target, file in zip(targets, files, strict=True):
        _mkdirs(target.parent)
        if force:
            temporary = target.with_name(f".{target.name}.new")
            temporary.unlink(missing_ok=True)
            _create(temporary, file)
            temporary.replace(target)
        else:
            _create(target, file)
    return targets


def _mkdirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each 0700 (``mkdir -p`` gives parents the umask's mode)."""
    missing = [d for d in (directory, *directory.parents) if not d.is_dir()]
    for each in reversed(missing):
        try:
            each.mkdir(mode=0o700)
        except FileExistsError:
            raise ConfigError(f"{each} exists and is not a directory") from None
        except OSError as e:
            raise ConfigError(f"cannot create {each}: {e.strerror}") from e


def _create(path: Path, file: OutputFile) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600 if file.secret else 0o644)
    except FileExistsError:
        raise ConfigError(f"{path} exists; remove it or pass --force to replace it") from None
    except OSError as e:
        raise ConfigError(f"cannot create {path}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as stream:
        stream.write(file.content)
