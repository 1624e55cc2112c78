"""
`podiam agent|server ... --check-config` as a process: one OK line and exit 0 for what a start
accepts, exit 2 and the error for what it refuses (the same errors), split mode's certificate
files read and judged, and nothing touched: no connection to the API or IMDS it is pointed at,
no iptables run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ACCOUNT_BASE = "arn:aws:iam::123456789012:role/"


def podiam(*args: str, env: dict[str, str] | None = None, path: str = "/usr/bin:/bin") -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "podiam", *args],
        env={"PATH": path, "LANG": "C.UTF-8", **(env or {})}, capture_output=True, text=True, timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def check(*args: str, env: dict[str, str] | None = None, path: str = "/usr/bin:/bin") -> tuple[int, str, str]:
    return podiam(*args, "--check-config", env=env, path=path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs") / "tls"
    code, _, err = podiam("certs", "init", "--out", str(out))
    assert code == 0, err
    return out


def tls(certs: Path, side: str, *, key_of: str | None = None, ca_of: str | None = None) -> list[str]:
    return ["--cert", str(certs / side / "tls.crt"), "--key", str(certs / (key_of or side) / "tls.key"),
            "--ca", str(certs / (ca_of or side) / "ca.crt")]


def test_an_agent_mode_configuration_is_ok() -> None:
    code, out, err = check("agent", "--node", "node-1", "--iptables", "--host-ip", "10.0.0.7",
                           "--host-interface", "eni+", "--base-role-arn", ACCOUNT_BASE, "--namespace-restrictions")
    assert (code, err) == (0, "")
    assert out == "podiam agent: configuration OK (agent mode, node node-1, DNAT rule on eni+)\n"


def test_variables_count_as_flags() -> None:
    code, out, _ = check("agent", env={"NODE_NAME": "node-9", "PODIAM_IPTABLES": "true", "HOST_IP": "10.0.0.7",
                                       "PODIAM_HOST_INTERFACE": "cali+"})
    assert code == 0
    assert out == "podiam agent: configuration OK (agent mode, node node-9, DNAT rule on cali+)\n"


@pytest.mark.parametrize(("args", "env", "error"), [
    ((), {}, "--node (or NODE_NAME) is required"),
    (("--node", "n", "--iptables"), {}, "set --host-ip"),
    (("--node", "n", "--iptables", "--host-ip", "fe80::1"), {}, "host IP"),
    (("--node", "n", "--iptables", "--host-ip", "10.0.0.7", "--host-interface", "eth0 lo"), {}, "interface"),
    (("--node", "n", "--default-role", "app"), {}, "has no base ARN"),
    (("--node", "n", "--base-role-arn", "arn:aws:iam::1:role/"), {}, "base role ARN"),
    (("--node", "n", "--session-duration", "10m", "--session-refresh", "5m"), {}, "between 15m and 12h"),
    (("--node", "n", "--pod-wait", "soon"), {}, "is not a duration"),
    (("--node", "n"), {"PODIAM_APP_PORT": "0"}, "0 is not in the range"),
    (("--node", "n", "--server-address", "dns:///s:9610", "--namespace-restrictions"), {},
     "the policy is the server's: give --namespace-restrictions"),
    (("--node", "n", "--server-address", "dns:///s:9610"), {}, "needs --cert, --key, --ca"),
])
def test_what_a_start_refuses_exits_2_with_its_error(args: tuple[str, ...], env: dict[str, str], error: str) -> None:
    code, out, err = check("agent", *args, env=env)
    assert code == 2 and out == ""
    assert error in err


def test_role_names_are_checked_against_a_discovered_base_arn_too() -> None:
    code, out, _ = check("agent", "--node", "n", "--auto-discover-base-arn", "--default-role", "apps/reader")
    assert code == 0, out
    code, _, err = check("agent", "--node", "n", "--auto-discover-base-arn", "--default-role", "no spaces")
    assert code == 2 and "'no spaces' is not a valid IAM role name" in err


def test_a_split_agent_with_its_own_certificate_is_ok(certs: Path) -> None:
    code, out, err = check("agent", "--node", "n", "--server-address", "dns:///podiam-server.kube-system.svc:9610",
                           *tls(certs, "agent"))
    assert (code, err) == (0, "")
    assert out == ("podiam agent: configuration OK (split mode, node n, servers "
                   "dns:///podiam-server.kube-system.svc:9610, no DNAT rule)\n")


@pytest.mark.parametrize(("side", "files", "error"), [
    ("agent", {"side": "server"}, "lacks the clientAuth extended key usage"),
    ("agent", {"side": "agent", "key_of": "server"}, "is not the private key of the certificate"),
    ("server", {"side": "agent"}, "lacks the serverAuth extended key usage"),
    ("server", {"side": "server", "key_of": "agent"}, "is not the private key of the certificate"),
])
def test_certificates_for_the_wrong_side_or_key_are_refused(certs: Path, side: str, files: dict[str, str],
                                                             error: str) -> None:
    given = tls(certs, files["side"], key_of=files.get("key_of"))
    args = ["agent", "--node", "n", "--server-address", "s:9610"] if side == "agent" else ["server"]
    code, _, err = check(*args, *given)
    assert code == 2
    assert error in err


def test_unreadable_or_non_pem_files_are_named(certs: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    args = ["--cert", str(certs / "server/tls.crt"), "--key", str(certs / "server/tls.key")]
    code, _, err = check("server", *args, "--ca", str(tmp_path / "absent.crt"))
    assert code == 2 and f"--ca: cannot read {tmp_path / 'absent.crt'}" in err
    code, _, err = check("server", *args, "--ca", str(tmp_path / "ca.crt"))
    assert code == 2 and f"--ca: {tmp_path / 'ca.crt'} holds no PEM certificate" in err


def test_a_server_configuration_is_ok(certs: Path) -> None:
    code, out, err = check("server", *tls(certs, "server"), "--bind", "0.0.0.0:9610", "--metrics-port", "9620",
                           "--auto-discover-base-arn", "--namespace-restrictions", "--fetchers", "4")
    assert (code, err) == (0, "")
    assert out == "podiam server: configuration OK (gRPC on 0.0.0.0:9610, metrics on port 9620)\n"


@pytest.mark.parametrize(("args", "error"), [
    (("--bind", "9610"), "--bind: '9610' is not host:port"),
    (("--assume-role-arn", "arn:aws:iam::123456789012:role/chain", "--session-duration", "2h"),
     "at most 1h with --assume-role-arn"),
    (("--host-network-role", "node"), "has no base ARN"),
])
def test_what_a_server_start_refuses_exits_2(certs: Path, args: tuple[str, ...], error: str) -> None:
    code, _, err = check("server", *tls(certs, "server"), *args)
    assert code == 2
    assert error in err


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A TCP port that accepts (and so would see) any connection, and its address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        yield sock, f"127.0.0.1:{sock.getsockname()[1]}"


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_nothing_is_touched(listener: tuple[socket.socket, str], tmp_path: Path) -> None:
    """The API, the node's IMDS and iptables as a start would reach them: none is reached."""
    sock, address = listener
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://{address}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "iptables-ran"
    for tool in ("iptables", "iptables-legacy", "iptables-nft", "iptables-save", "ip6tables"):
        sentinel = bin_dir / tool  # not a stand-in for podiam's code: a trap that records being run
        sentinel.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {ran}\nexit 1\n")
        sentinel.chmod(0o755)
    code, out, err = check("agent", "--node", "n", "--kubeconfig", str(kubeconfig), "--metadata-addr", address,
                           "--auto-discover-base-arn", "--iptables", "--host-ip", "10.0.0.7",
                           path=f"{bin_dir}:/usr/bin:/bin")
    assert (code, err) == (0, ""), err
    assert out.startswith("podiam agent: configuration OK")
    assert _connections(sock) == 0
    assert not ran.exists()


def test_check_config_has_no_environment_variable() -> None:
    """A PODIAM_CHECK_CONFIG left in a manifest must not turn every start into a no-op."""
    code, out, err = podiam("agent", env={"PODIAM_CHECK_CONFIG": "true"})
    # The variable is ignored: this is a real start, refused for its missing --node.
    assert (code, out) == (2, "")
    assert "--node (or NODE_NAME) is required" in err
