"""The DNAT rule's validation, its iptables arguments, and the command boundary (with fake binaries)."""

from __future__ import annotations

import shlex
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podiam.errors import ConfigError, IptablesError
from podiam.node.iptables import RULE_COMMENT, DnatRule, ensure_rule, remove_rule, rule_count
from podiam.settings import NodeSettings

NAME_CHARS = string.ascii_letters + string.digits + "_.@-"


def rule(interface: str = "docker0", host_ip: str = "10.0.0.5") -> DnatRule:
    return DnatRule(interface=interface, host_ip=host_ip, host_port=8181)


def test_spec_plain_interface() -> None:
    assert rule("docker0").spec() == [
        "-p", "tcp", "-d", "169.254.169.254", "--dport", "80",
        "-i", "docker0",
        "-m", "comment", "--comment", RULE_COMMENT,
        "-j", "DNAT", "--to-destination", "10.0.0.5:8181",
    ]  # fmt: skip


def test_spec_negated_interface() -> None:
    r = rule("!eth0")
    assert r.negated
    assert r.interface_name == "eth0"
    spec = r.spec()
    i = spec.index("-i")
    assert spec[i - 1 : i + 2] == ["!", "-i", "eth0"]


def test_spec_wildcard_interface() -> None:
    r = rule("cali+")
    assert not r.negated
    assert r.spec()[r.spec().index("-i") + 1] == "cali+"


def test_comment_identifies_podiam() -> None:
    assert RULE_COMMENT.startswith("podiam")


# What `iptables -t nat -S PREROUTING` prints for the rules (nf_tables backend, 1.8.9).
PRINTED = (
    "-A PREROUTING -d 169.254.169.254/32 -i docker0 -p tcp -m tcp --dport 80 -m comment "
    '--comment "podiam: pod metadata to the agent" -j DNAT --to-destination 10.0.0.5:8181'
)
PRINTED_NEGATED_WILDCARD = (
    "-A PREROUTING -d 169.254.169.254/32 ! -i cali+ -p tcp -m tcp --dport 80 -m comment "
    '--comment "podiam: pod metadata to the agent" -j DNAT --to-destination 10.0.0.5:8181'
)


def test_matches_what_iptables_prints() -> None:
    assert rule("docker0").matches(PRINTED)
    assert rule("!cali+").matches(PRINTED_NEGATED_WILDCARD)


def test_matches_own_spec_in_any_order() -> None:
    r = rule("!cali+")
    assert r.matches("-A PREROUTING " + shlex.join(r.spec()))
    assert r.matches("-A PREROUTING " + shlex.join(reversed_pairs(r.spec())))


def reversed_pairs(spec: list[str]) -> list[str]:
    # -j's arguments stay together; only the order of the matches changes.
    j = spec.index("-j")
    return ["-m", "comment", "--comment", RULE_COMMENT, "!", "-i", "cali+", "-d", "169.254.169.254",
            "-p", "tcp", "--dport", "80", *spec[j:]]  # fmt: skip


@pytest.mark.parametrize(
    ("other", "line"),
    [
        pytest.param(rule("!docker0"), PRINTED, id="negation differs"),
        pytest.param(rule("docker0+"), PRINTED, id="wildcard differs"),
        pytest.param(rule("docker0", host_ip="10.0.0.6"), PRINTED, id="target differs"),
        pytest.param(rule("docker0"), PRINTED.replace("--dport 80", "--dport 81"), id="port differs"),
        pytest.param(rule("docker0"), PRINTED.replace("-d 169", "-s 10.1.0.0/16 -d 169"), id="extra match"),
        pytest.param(
            rule("docker0"), PRINTED.replace('"podiam: pod metadata to the agent"', "other"), id="comment"
        ),
        pytest.param(rule("docker0"), PRINTED.replace("-A PREROUTING", "-A OUTPUT"), id="chain"),
        pytest.param(rule("docker0"), "-P PREROUTING ACCEPT", id="policy line"),
        pytest.param(rule("docker0"), '-A PREROUTING --comment "unterminated', id="unparseable"),
    ],
)
def test_matches_rejects_other_rules(other: DnatRule, line: str) -> None:
    assert not other.matches(line)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("!", "empty"),
        ("eth 0", "no spaces"),
        ("eth/0", "no spaces or '/'"),
        ("a" * 16, "at most 15"),
        ("!" + "a" * 15 + "+", "at most 15"),
        ("!!eth0", "only letters"),
        ("ca+li", "only letters"),
        ("eth0:1", "only letters"),
        ("..", "'.' and '..'"),
        (".+", "'.' and '..'"),
    ],
)
def test_bad_interface_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(ConfigError, match="not a valid interface pattern") as e:
        rule(pattern)
    assert reason in str(e.value)
    assert "cali+" in str(e.value)  # the message shows what is expected


@given(
    name=st.text(alphabet=NAME_CHARS, min_size=1, max_size=14).filter(lambda n: n not in (".", "..")),
    wildcard=st.booleans(),
    negated=st.booleans(),
)
def test_valid_patterns_accepted(name: str, wildcard: bool, negated: bool) -> None:
    pattern = ("!" if negated else "") + name + ("+" if wildcard else "")
    r = rule(pattern)
    assert r.negated is negated
    assert r.interface_name == name + ("+" if wildcard else "")
    assert r.matches("-A PREROUTING " + shlex.join(r.spec()))


@given(
    prefix=st.text(alphabet=NAME_CHARS, min_size=1, max_size=7),  # a leading '!' negates
    bad=st.sampled_from([" ", "/", "\t", "\n", ":", "!", '"', "'", "\\", "é"]),
    suffix=st.text(alphabet=NAME_CHARS, max_size=7),
)
def test_names_with_forbidden_characters_rejected(prefix: str, bad: str, suffix: str) -> None:
    with pytest.raises(ConfigError):
        rule(prefix + bad + suffix)


@given(name=st.text(alphabet=NAME_CHARS, min_size=16, max_size=40))
def test_long_names_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="at most 15"):
        rule(name)


@pytest.mark.parametrize(
    ("host_ip", "message"),
    [
        ("fd00::1", "IPv4 only"),
        ("node.local", "not an IPv4 address"),
        ("10.0.0.256", "not an IPv4 address"),
        ("", "not an IPv4 address"),
        ("0.0.0.0", "cannot be a destination"),
        ("224.0.0.1", "cannot be a destination"),
    ],
)
def test_bad_host_ip(host_ip: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        rule(host_ip=host_ip)


def test_bad_metadata_ip() -> None:
    with pytest.raises(ConfigError, match="metadata IP"):
        DnatRule(interface="docker0", host_ip="10.0.0.5", host_port=8181, metadata_ip="fd00:ec2::254")


@pytest.mark.parametrize("port", [0, -1, 65536, True])
def test_bad_ports(port: int) -> None:
    with pytest.raises(ConfigError, match="host port"):
        DnatRule(interface="docker0", host_ip="10.0.0.5", host_port=port)
    with pytest.raises(ConfigError, match="metadata port"):
        DnatRule(interface="docker0", host_ip="10.0.0.5", host_port=8181, metadata_port=port)


def test_from_settings() -> None:
    r = DnatRule.from_settings(NodeSettings(host_ip="10.0.0.7", host_interface="!eth0"), 8181)
    assert r == DnatRule(interface="!eth0", host_ip="10.0.0.7", host_port=8181)


def test_from_settings_needs_host_ip() -> None:
    with pytest.raises(ConfigError, match="--host-ip"):
        DnatRule.from_settings(NodeSettings(), 8181)


# The command boundary, with stand-ins for the iptables binary: no root needed.


def fake_iptables(tmp_path: Path, body: str) -> str:
    """An executable that logs its argv to calls.log, then runs ``body`` (sh)."""
    path = tmp_path / "iptables"
    path.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/calls.log\n{body}\n')
    path.chmod(0o755)
    return str(path)


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


ABSENT = 'echo "iptables: Bad rule (does a matching rule exist in that chain?)." >&2; exit 1'


async def test_ensure_checks_then_inserts_at_position_one(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, f'case "$*" in *" -C "*) {ABSENT};; esac; exit 0')
    assert await ensure_rule(rule(), binary=binary, call_timeout=5) is True
    check, insert = calls(tmp_path)
    assert check.startswith("-w 2 -t nat -C PREROUTING -p tcp")
    assert insert.startswith("-w 2 -t nat -I PREROUTING 1 -p tcp")


async def test_ensure_present_does_not_insert(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, "exit 0")
    assert await ensure_rule(rule(), binary=binary) is False
    assert len(calls(tmp_path)) == 1


async def test_remove_absent_is_zero(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, ABSENT)
    assert await remove_rule(rule(), binary=binary) == 0


# iptables-legacy's answer to -C and -D for an absent rule with a DNAT target (1.8.9, seen in
# tests/integration/test_iptables_backend.py): not iptables-nft's "Bad rule".
LEGACY_ABSENT = 'echo "iptables: No chain/target/match by that name." >&2; exit 1'


async def test_legacys_absent_answer_is_absent(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, f'case "$*" in *" -C "*|*" -D "*) {LEGACY_ABSENT};; esac; exit 0')
    assert await ensure_rule(rule(), binary=binary) is True
    assert await remove_rule(rule(), binary=binary) == 0


async def test_no_such_chain_on_an_insert_is_a_failure(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, f'case "$*" in *" -C "*) {ABSENT};; *) {LEGACY_ABSENT};; esac')
    with pytest.raises(IptablesError, match=r"-I PREROUTING 1 .* No chain/target/match by that name"):
        await ensure_rule(rule(), binary=binary)


async def test_failure_carries_stderr(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, "echo \"Couldn't load match 'comment'\" >&2; exit 2")
    with pytest.raises(IptablesError, match=r"exit status 2: Couldn't load match 'comment'") as e:
        await ensure_rule(rule(), binary=binary)
    assert "-t nat -C PREROUTING" in str(e.value)


async def test_permission_failure_says_what_to_do(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, 'echo "Permission denied (you must be root)" >&2; exit 4')
    with pytest.raises(IptablesError, match="root or CAP_NET_ADMIN"):
        await rule_count(rule(), binary=binary)


async def test_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(IptablesError, match="not found"):
        await rule_count(rule(), binary=str(tmp_path / "no-iptables"))


async def test_deadline_kills_the_command(tmp_path: Path) -> None:
    binary = fake_iptables(tmp_path, f"echo $$ > {tmp_path}/pid; exec sleep 30")
    with pytest.raises(IptablesError, match=r"did not finish within 0\.3 s"):
        await rule_count(rule(), binary=binary, call_timeout=0.3)
    assert not process_exists(int((tmp_path / "pid").read_text()))  # killed and reaped


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_rule_count_parses_listing(tmp_path: Path) -> None:
    listing = "\n".join(["-P PREROUTING ACCEPT", PRINTED, PRINTED_NEGATED_WILDCARD, PRINTED])
    (tmp_path / "listing").write_text(listing + "\n")
    binary = fake_iptables(tmp_path, f"cat {tmp_path}/listing")
    assert await rule_count(rule("docker0"), binary=binary) == 2
    assert await rule_count(rule("!cali+"), binary=binary) == 1
    assert await rule_count(rule("eth0"), binary=binary) == 0
