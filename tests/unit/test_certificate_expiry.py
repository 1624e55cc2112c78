"""podiam_tls_certificate_expiration_timestamp_seconds: the first certificate of this side's chain, as loaded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import trustme

from podiam.observability.metrics import Metrics
from podiam.remote.tls import CertificateExpiry, TlsFiles, channel_credentials

NAME = "podiam_tls_certificate_expiration_timestamp_seconds"
LEAF_EXPIRES = dt.datetime(2031, 3, 4, 5, 6, 7, tzinfo=dt.UTC)


def chain_from_an_intermediate() -> tuple[trustme.CA, trustme.LeafCert]:
    # The intermediate expires after the leaf, so only the leaf's date is right.
    root = trustme.CA()
    intermediate = root.create_child_ca()
    return root, intermediate.issue_cert("agent", not_after=LEAF_EXPIRES)


def test_the_gauge_is_the_first_certificates_not_after() -> None:
    metrics = Metrics()
    _, leaf = chain_from_an_intermediate()
    CertificateExpiry(metrics).record(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    assert metrics.registry.get_sample_value(NAME) == LEAF_EXPIRES.timestamp()


def test_a_chain_that_does_not_parse_keeps_the_last_value() -> None:
    metrics = Metrics()
    expiry = CertificateExpiry(metrics)
    _, leaf = chain_from_an_intermediate()
    expiry.record(leaf.cert_chain_pems[0].bytes())
    expiry.record(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert metrics.registry.get_sample_value(NAME) == LEAF_EXPIRES.timestamp()


def test_the_agent_records_its_certificate_each_time_it_loads_the_files(tmp_path: Path) -> None:
    metrics = Metrics()
    expiry = CertificateExpiry(metrics)
    root, leaf = chain_from_an_intermediate()
    files = TlsFiles(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt"))
    leaf.private_key_pem.write_to_path(files.key)
    root.cert_pem.write_to_path(files.ca)
    Path(files.cert).write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    channel_credentials(files, expiry)
    assert metrics.registry.get_sample_value(NAME) == LEAF_EXPIRES.timestamp()

    renewed = dt.datetime(2032, 1, 1, tzinfo=dt.UTC)
    Path(files.cert).write_bytes(root.issue_cert("agent", not_after=renewed).cert_chain_pems[0].bytes())
    channel_credentials(files, expiry)
    assert metrics.registry.get_sample_value(NAME) == renewed.timestamp()
