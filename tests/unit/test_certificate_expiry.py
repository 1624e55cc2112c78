"""podiam_tls_certificate_expiration_timestamp_seconds: the first certificate of this side's chain, as loaded."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from podiam.observability.metrics import Metrics
from podiam.remote.tls import CertificateExpiry, TlsFiles, certificate_not_after, channel_credentials

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


_KEY = ec.generate_private_key(ec.SECP256R1())


def self_signed(not_after: dt.datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(dt.datetime(1950, 1, 1, tzinfo=dt.UTC)).not_valid_after(not_after))
    return builder.sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@given(st.datetimes(min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59),
                    timezones=st.just(dt.UTC)).map(lambda d: d.replace(microsecond=0)))
@settings(max_examples=200, deadline=None)
def test_the_der_reader_agrees_with_cryptography(not_after: dt.datetime) -> None:
    # UTCTime up to 2049, GeneralizedTime from 2050 (RFC 5280): both encodings, both centuries of UTCTime.
    pem = self_signed(not_after)
    assert certificate_not_after(pem) == x509.load_pem_x509_certificate(pem).not_valid_after_utc == not_after


def test_the_first_certificate_of_a_chain_after_other_text_is_read() -> None:
    _, leaf = chain_from_an_intermediate()
    chain = b"".join(pem.bytes() for pem in leaf.cert_chain_pems).replace(b"\n", b"\r\n")
    assert certificate_not_after(b"subject=CN=agent\r\n" + chain) == LEAF_EXPIRES


@pytest.mark.parametrize("cut", [0, 1, 2, 10, 100, 200, -60, -1])
def test_a_truncated_certificate_reads_as_none(cut: int) -> None:
    der = x509.load_pem_x509_certificate(self_signed(LEAF_EXPIRES)).public_bytes(serialization.Encoding.DER)
    body = base64.encodebytes(der[:cut]).decode()
    assert certificate_not_after(f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()) is None


@given(st.binary(max_size=600))
def test_any_bytes_in_a_pem_block_read_as_a_date_or_none(der: bytes) -> None:
    body = base64.encodebytes(der).decode()
    result = certificate_not_after(f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode())
    assert result is None or result.tzinfo is dt.UTC
