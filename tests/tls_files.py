"""Mutual-TLS files for the split-mode tests, from trustme's certificates (tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import trustme

from podiam.remote.tls import TlsFiles


def write(tmp: Path, name: str, blob: trustme.Blob | bytes) -> str:
    path = tmp / name
    path.write_bytes(blob if isinstance(blob, bytes) else blob.bytes())
    return str(path)


def leaf_files(tmp: Path, prefix: str, cert: trustme.LeafCert, trust: trustme.CA) -> TlsFiles:
    """``cert`` as ``prefix``.crt and .key, and ``trust``'s certificate as the CA the other side must be signed by."""
    return TlsFiles(write(tmp, f"{prefix}.crt", cert.cert_chain_pems[0]),
                    write(tmp, f"{prefix}.key", cert.private_key_pem), write(tmp, f"{prefix}-ca.crt", trust.cert_pem))
