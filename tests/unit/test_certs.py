"""podiam certs init: what the certificates say (read back with cryptography), and what is written where."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from podiam.certs import CLOCK_SKEW, CertBundle, CertSpec, create
from podiam.cli import main
from podiam.errors import ConfigError

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
SERVICE_NAMES = ["podiam-server", "podiam-server.kube-system", "podiam-server.kube-system.svc",
                 "podiam-server.kube-system.svc.cluster.local"]
FILES = ["ca/tls.crt", "ca/tls.key", "server/tls.crt", "server/tls.key", "server/ca.crt", "agent/tls.crt",
         "agent/tls.key", "agent/ca.crt"]
KEYS = {"ca/tls.key", "server/tls.key", "agent/tls.key"}


@pytest.fixture(scope="module")
def bundle() -> CertBundle:
    return create(CertSpec(server_dns=("podiam.example.com",), server_ips=(ipaddress.ip_address("10.0.0.7"),)), NOW)


def _verifier(ca: x509.Certificate, at: dt.datetime = NOW) -> PolicyBuilder:
    return PolicyBuilder().store(Store([ca])).time(at)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_ca_is_a_self_signed_ca_that_signs_leaves_only(bundle: CertBundle) -> None:
    ca = bundle.ca.certificate
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    with pytest.raises(x509.ExtensionNotFound):
        ca.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_keys_are_ecdsa_p256(bundle: CertBundle) -> None:
    for issued in (bundle.ca, bundle.server, bundle.agent):
        public = issued.certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
        assert issued.key.public_key() == public


def test_the_server_certificate_is_for_servers_only_and_names_the_service(bundle: CertBundle) -> None:
    server = bundle.server.certificate
    assert _eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [*SERVICE_NAMES, "podiam.example.com"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    server.verify_directly_issued_by(bundle.ca.certificate)


def test_the_agent_certificate_is_for_clients_only(bundle: CertBundle) -> None:
    agent = bundle.agent.certificate
    assert _eku(agent) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert agent.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "podiam-agent"
    agent.verify_directly_issued_by(bundle.ca.certificate)


@pytest.mark.parametrize("name", [*SERVICE_NAMES, "podiam.example.com"])
def test_the_server_chain_verifies_for_each_name(bundle: CertBundle, name: str) -> None:
    chain = _verifier(bundle.ca.certificate).build_server_verifier(DNSName(name)).verify(bundle.server.certificate, [])
    assert chain[-1] == bundle.ca.certificate


def test_the_server_chain_verifies_for_its_ip_and_for_no_other_name(bundle: CertBundle) -> None:
    policy = _verifier(bundle.ca.certificate)
    policy.build_server_verifier(IPAddress(ipaddress.ip_address("10.0.0.7"))).verify(bundle.server.certificate, [])
    with pytest.raises(VerificationError):
        policy.build_server_verifier(DNSName("podiam-server.default.svc")).verify(bundle.server.certificate, [])


def test_the_agent_chain_verifies_as_a_client(bundle: CertBundle) -> None:
    verified = _verifier(bundle.ca.certificate).build_client_verifier().verify(bundle.agent.certificate, [])
    assert verified.chain[-1] == bundle.ca.certificate


def test_neither_leaf_passes_for_the_other(bundle: CertBundle) -> None:
    policy = _verifier(bundle.ca.certificate)
    with pytest.raises(VerificationError, match="EKU"):
        policy.build_server_verifier(DNSName("podiam-agent")).verify(bundle.agent.certificate, [])
    with pytest.raises(VerificationError, match="EKU"):
        policy.build_client_verifier().verify(bundle.server.certificate, [])


def test_another_ca_does_not_verify_these_leaves(bundle: CertBundle) -> None:
    other = create(CertSpec(), NOW)
    with pytest.raises(VerificationError):
        _verifier(other.ca.certificate).build_client_verifier().verify(bundle.agent.certificate, [])


def test_validity_windows() -> None:
    spec = CertSpec(days=30, ca_days=400)
    issued = create(spec, NOW)
    for leaf in (issued.server, issued.agent):
        assert leaf.certificate.not_valid_before_utc == NOW - CLOCK_SKEW
        assert leaf.certificate.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert issued.ca.certificate.not_valid_before_utc == NOW - CLOCK_SKEW
    assert issued.ca.certificate.not_valid_after_utc == NOW + dt.timedelta(days=400)
    server = issued.server.certificate
    policy = _verifier(issued.ca.certificate, NOW - CLOCK_SKEW / 2)
    policy.build_server_verifier(DNSName("podiam-server")).verify(server, [])  # a node's clock half an hour behind
    late = _verifier(issued.ca.certificate, NOW + dt.timedelta(days=31))
    with pytest.raises(VerificationError, match="not valid at validation time"):
        late.build_server_verifier(DNSName("podiam-server")).verify(server, [])


def test_defaults_are_a_year_for_leaves_and_ten_for_the_ca() -> None:
    issued = create(CertSpec(), NOW)
    assert issued.server.certificate.not_valid_after_utc == NOW + dt.timedelta(days=365)
    assert issued.ca.certificate.not_valid_after_utc == NOW + dt.timedelta(days=3650)


def test_the_namespace_is_in_the_service_names() -> None:
    sans = create(CertSpec(namespace="podiam"), NOW).server.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "podiam-server", "podiam-server.podiam", "podiam-server.podiam.svc", "podiam-server.podiam.svc.cluster.local"]


@pytest.mark.parametrize(("spec", "message"), [
    ({"days": 0}, "--days must be at least 1"),
    ({"days": 400, "ca_days": 365}, "cannot outlive"),
    ({"namespace": "Kube_System"}, "not a Kubernetes namespace"),
    ({"server_dns": ("10.0.0.1",)}, "give it as --server-ip"),
    ({"server_dns": ("*.example.com",)}, "not a DNS name"),
])
def test_bad_specs_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CertSpec(**spec)  # type: ignore[arg-type]


def test_nothing_that_holds_a_key_prints_it(bundle: CertBundle) -> None:
    secret_text = [bundle.ca.key_pem(), bundle.server.key_pem(), bundle.agent.key_pem()]
    printed = [repr(bundle), repr(bundle.server), *map(repr, bundle.files()), *map(repr, bundle.secrets("x"))]
    for text in printed:
        assert "PRIVATE KEY" not in text
        for key in secret_text:
            assert key.decode() not in text
            assert base64.b64encode(key).decode() not in text


def test_the_secrets_hold_what_the_files_hold(bundle: CertBundle) -> None:
    files = {str(f.path): f.content for f in bundle.files()}
    secrets = {str(f.path): json.loads(f.content) for f in bundle.secrets("podiam")}
    assert set(secrets) == {"podiam-server-tls.json", "podiam-agent-tls.json", "ca/podiam-ca.json"}
    for path, component in (("podiam-server-tls.json", "server"), ("podiam-agent-tls.json", "agent")):
        data = {k: base64.b64decode(v) for k, v in secrets[path]["data"].items()}
        assert data == {key: files[f"{component}/{key}"] for key in ("tls.crt", "tls.key", "ca.crt")}
    ca_data = {k: base64.b64decode(v) for k, v in secrets["ca/podiam-ca.json"]["data"].items()}
    assert ca_data["tls.crt"] == files["ca/tls.crt"] and ca_data["tls.key"] == files["ca/tls.key"]


# The command, through click, onto a real directory.

def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["certs", "init", *args], env=env or {})
    return result.exit_code, result.output


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_written_with_private_modes(tmp_path: Path) -> None:
    out = tmp_path / "new" / "certs"
    code, output = run("--out", str(out))
    assert code == 0, output
    assert sorted(output.split()) == sorted(str(out / f) for f in FILES)
    assert "PRIVATE KEY" not in output
    for name in FILES:
        assert _mode(out / name) == (0o600 if name in KEYS else 0o644), name
    for directory in (tmp_path / "new", out, out / "ca", out / "server", out / "agent"):
        assert _mode(directory) == 0o700, directory
    ca = (out / "ca" / "tls.crt").read_bytes()
    assert (out / "server" / "ca.crt").read_bytes() == ca == (out / "agent" / "ca.crt").read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca)
    x509.load_pem_x509_certificate((out / "agent" / "tls.crt").read_bytes()).verify_directly_issued_by(ca_cert)


def test_existing_files_are_refused_by_name_and_left_alone(tmp_path: Path) -> None:
    assert run("--out", str(tmp_path))[0] == 0
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    (tmp_path / "ca" / "tls.crt").unlink()  # the first missing file is not the one named
    code, output = run("--out", str(tmp_path))
    assert code == 2
    assert f"{tmp_path / 'ca' / 'tls.key'} exists" in output and "--force" in output
    assert not (tmp_path / "ca" / "tls.crt").exists()
    assert {name: (tmp_path / name).read_bytes() for name in FILES if name != "ca/tls.crt"} == {
        name: content for name, content in before.items() if name != "ca/tls.crt"}


def test_force_replaces_every_file_and_keys_stay_private(tmp_path: Path) -> None:
    assert run("--out", str(tmp_path))[0] == 0
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    (tmp_path / "server" / "tls.key").chmod(0o644)  # a loose old file must not lend the new key its mode
    code, output = run("--out", str(tmp_path), "--force")
    assert code == 0, output
    for name in FILES:
        assert (tmp_path / name).read_bytes() != before[name], name
        assert _mode(tmp_path / name) == (0o600 if name in KEYS else 0o644), name
    assert sorted(p.name for p in (tmp_path / "server").iterdir()) == ["ca.crt", "tls.crt", "tls.key"]


def test_kubernetes_secrets(tmp_path: Path) -> None:
    code, output = run("--out", str(tmp_path), "--format", "kubernetes", "--namespace", "podiam")
    assert code == 0, output
    paths = ["podiam-server-tls.json", "podiam-agent-tls.json", "ca/podiam-ca.json"]
    assert sorted(output.split()) == sorted(str(tmp_path / p) for p in paths)
    manifests = {}
    for path in paths:
        assert _mode(tmp_path / path) == 0o600
        manifest = json.loads((tmp_path / path).read_text())
        assert manifest["kind"] == "Secret" and manifest["apiVersion"] == "v1"
        assert manifest["type"] == "kubernetes.io/tls"
        assert manifest["metadata"]["namespace"] == "podiam"
        assert set(manifest["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        manifests[manifest["metadata"]["name"]] = {k: base64.b64decode(v) for k, v in manifest["data"].items()}
    assert _mode(tmp_path / "ca") == 0o700
    ca = manifests["podiam-ca"]["tls.crt"]
    assert manifests["podiam-server-tls"]["ca.crt"] == ca == manifests["podiam-agent-tls"]["ca.crt"]
    server = x509.load_pem_x509_certificate(manifests["podiam-server-tls"]["tls.crt"])
    _verifier(x509.load_pem_x509_certificate(ca), dt.datetime.now(dt.UTC)).build_server_verifier(
        DNSName("podiam-server.podiam.svc")).verify(server, [])


def test_the_json_manifests_read_as_yaml_too(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")  # kubectl decodes manifests as YAML, of which JSON is a subset
    assert run("--out", str(tmp_path), "--format", "kubernetes")[0] == 0
    text = (tmp_path / "podiam-agent-tls.json").read_text()
    assert yaml.safe_load(text) == json.loads(text)


def test_flags_come_from_the_environment_too(tmp_path: Path) -> None:
    code, output = run(env={"PODIAM_CERTS_OUT": str(tmp_path), "PODIAM_CERTS_DAYS": "30",
                            "PODIAM_CERTS_SERVER_DNS": "a.example b.example", "PODIAM_CERTS_SERVER_IP": "10.1.2.3"})
    assert code == 0, output
    server = x509.load_pem_x509_certificate((tmp_path / "server" / "tls.crt").read_bytes())
    assert server.not_valid_after_utc - server.not_valid_before_utc == dt.timedelta(days=30) + CLOCK_SKEW
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName)[-2:] == ["a.example", "b.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


@pytest.mark.parametrize(("args", "message"), [
    (["--days", "0"], "--days must be at least 1"),
    (["--days", "-5"], "--days must be at least 1"),
    (["--days", "soon"], "'soon' is not a valid integer"),
    (["--ca-days", "30"], "--ca-days (30) must be at least --days (365)"),
    (["--namespace", "kube_system"], "not a Kubernetes namespace name"),
    (["--server-dns", "not a name"], "is not a DNS name"),
    (["--server-dns", "10.0.0.1"], "give it as --server-ip"),
    (["--server-ip", "podiam.local"], "is not an IPv4 or IPv6 address"),
    (["--format", "yaml"], "'yaml' is not one of 'files', 'kubernetes'"),
])
def test_bad_flags_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = run("--out", str(tmp_path / "out"), *args)
    assert code == 2
    assert message in output
    assert not (tmp_path / "out").exists()


def test_out_is_required_and_must_be_a_directory(tmp_path: Path) -> None:
    code, output = run()
    assert code == 2 and "Missing option '--out'" in output
    (tmp_path / "file").write_text("")
    code, output = run("--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in output
    code, output = run("--out", str(tmp_path / "file" / "below"))
    assert code == 2 and "exists and is not a directory" in output


def test_help_explains_rotation() -> None:
    result = CliRunner().invoke(main, ["certs", "init", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "old and the new CA" in text and "then replace the leaves" in text and "drop the old CA" in text
    assert "PODIAM_CERTS_OUT" in text
