"""
The DNAT rule that sends pods' metadata traffic (169.254.169.254:80) to podiam.

The rule lives in ``-t nat PREROUTING`` and carries a fixed comment so that people (and
``rule_count``) can recognise it. Its lifecycle is idempotent: ``ensure_rule`` adds it only
when ``iptables -C`` does not find it, so a restarted agent never stacks copies, and
``remove_rule`` deletes every copy, so an uninstall never leaves pods cut off from IMDS
(kube2iam's rule was never removed).

iptables runs as a subprocess (no shell) with ``-w`` and a deadline on every call; every
failure becomes an IptablesError carrying the command and its stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shlex
import signal
from dataclasses import dataclass

from podiam.errors import ConfigError, IptablesError
from podiam.settings import NodeSettings

RULE_COMMENT = "podiam: pod metadata to the agent"
"""Comment on the rule: how people and ``rule_count`` recognise podiam's rule."""

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80

TABLE = "nat"
CHAIN = "PREROUTING"

_IFNAMSIZ = 16  # the kernel's buffer, NUL included: names have at most 15 characters
# Stricter than the kernel (which only forbids '/', ':' and whitespace): every real pod
# interface naming scheme (docker0, cali*, eni*, veth*, cni0, flannel.1, br-xxx, eth0.100)
# fits, and characters such as '!', '+' or quotes inside a name would be misread by iptables.
_IFACE_NAME = re.compile(r"[A-Za-z0-9_.@-]+")
# iptables' "does not exist" answers to -C and -D (exit status 1, as for other errors):
# iptables-nft's "Bad rule (does a matching rule exist in that chain?)", and iptables-legacy's
# for a rule with a target such as DNAT, "No chain/target/match by that name" (nat PREROUTING
# always exists, and a match or target the kernel lacks makes the -I fail, with its own error).
_ABSENT_MARKERS = ("does a matching rule exist", "No chain/target/match by that name")


@dataclass(frozen=True)
class DnatRule:
    """One DNAT rule: metadata traffic arriving on ``interface`` goes to host_ip:host_port."""

    interface: str
    """Pod-facing interface pattern: ``docker0``, ``cali+`` (wildcard) or ``!eth0`` (negated)."""

    host_ip: str
    """IPv4 address podiam listens on (the node's IP); the rule's --to-destination."""

    host_port: int
    """TCP port podiam's metadata endpoint listens on."""

    metadata_ip: str = METADATA_IP
    """Destination the pods' SDKs use; only this traffic is redirected."""

    metadata_port: int = METADATA_PORT

    def __post_init__(self) -> None:
        _check_interface(self.interface)
        _check_ipv4(self.host_ip, "host IP", destination=True)
        _check_ipv4(self.metadata_ip, "metadata IP", destination=True)
        _check_port(self.host_port, "host port")
        _check_port(self.metadata_port, "metadata port")

    @classmethod
    def from_settings(cls, node: NodeSettings, app_port: int) -> DnatRule:
        """The rule for an agent configured with ``node`` and listening on ``app_port``."""
        if node.host_ip is None:
            raise ConfigError(
                "installing the iptables rule needs the node's IP as its DNAT target: "
                "set --host-ip (in a DaemonSet, from status.hostIP through the downward API)"
            )
        return cls(interface=node.host_interface, host_ip=node.host_ip, host_port=app_port)

    @property
    def negated(self) -> bool:
        """True when the rule matches traffic arriving on any interface but this one."""
        return self.interface.startswith("!")

    @property
    def interface_name(self) -> str:
        """The interface pattern without its ``!``."""
        return self.interface.removeprefix("!")

    @property
    def destination(self) -> str:
        return f"{self.host_ip}:{self.host_port}"

    def spec(self) -> list[str]:
        """The rule's iptables arguments after ``-t nat -X PREROUTING``."""
        iface = ["!", "-i", self.interface_name] if self.negated else ["-i", self.interface_name]
        return [
            "-p", "tcp",
            "-d", self.metadata_ip,
            "--dport", str(self.metadata_port),
            *iface,
            "-m", "comment", "--comment", RULE_COMMENT,
            "-j", "DNAT", "--to-destination", self.destination,
        ]  # fmt: skip

    def matches(self, line: str) -> bool:
        """Whether one line of ``iptables -t nat -S PREROUTING`` is exactly this rule.

        Compares options, not text, because iptables prints them in its own order and
        normalised (``/32`` on addresses, an explicit ``-m tcp``); any extra match such as
        ``-s`` makes it a different rule, as it does for ``iptables -C``.
        """
        try:
            tokens = shlex.split(line)
        except ValueError:
            return False
        if tokens[:2] != ["-A", CHAIN]:
            return False
        return _options(tokens[2:]) == _options(self.spec())


def _options(tokens: list[str]) -> set[tuple[bool, str, str]]:
    """(negated, option, value) triples; ``-m`` module loads are implied by their options."""
    found: set[tuple[bool, str, str]] = set()
    negate = False
    i = 0
    while i < len(tokens):
        arg = tokens[i]
        if arg == "!":
            negate = True
            i += 1
            continue
        value = tokens[i + 1] if i + 1 < len(tokens) else ""
        i += 2
        if arg == "-m":
            continue
        if arg == "-d":
            value = value.removesuffix("/32")
        found.add((negate, arg, value))
        negate = False
    return found


def _check_interface(pattern: str) -> None:
    name = pattern.removeprefix("!")
    base = name.removesuffix("+")
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) >= _IFNAMSIZ:
        problem = f"it has {len(name)} characters and Linux interface names have at most {_IFNAMSIZ - 1}"
    elif base in (".", ".."):
        problem = "'.' and '..' are not interface names"
    elif base and not _IFACE_NAME.fullmatch(base):
        problem = "only letters, digits and '_', '.', '@', '-' are allowed (no spaces or '/')"
    if problem:
        raise ConfigError(
            f"host interface {pattern!r} is not a valid interface pattern: {problem}. "
            "Expected a name such as docker0, a wildcard ending in '+' such as cali+, "
            "or either prefixed with '!' to match every other interface, such as !eth0"
        )


def _check_ipv4(value: str, what: str, *, destination: bool) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not an IPv4 address") from None
    if address.version != 4:
        raise ConfigError(f"{what} {value!r} is IPv6; the iptables rule supports IPv4 only for now")
    if str(address) != value:
        # iptables would accept other spellings and print the canonical one, so rule_count
        # and matches() compare against what iptables prints.
        raise ConfigError(f"{what} {value!r} is not in canonical form; write it as {address}")
    if destination and (address.is_unspecified or address.is_multicast or value == "255.255.255.255"):
        raise ConfigError(f"{what} {value!r} cannot be a destination of a TCP connection")


def _check_port(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ConfigError(f"{what} {value!r} is not a TCP port (an integer from 1 to 65535)")


async def ensure_rule(
    rule: DnatRule, *, call_timeout: float = NodeSettings.iptables_timeout, binary: str = "iptables"
) -> bool:
    """Install ``rule`` unless it is there already; return whether it was added.

    Inserted at position 1 so that no earlier PREROUTING rule (a CNI's, another agent's)
    can accept or redirect metadata traffic before it.
    """
    if await rule_present(rule, call_timeout=call_timeout, binary=binary):
        return False
    await _iptables(["-I", CHAIN, "1", *rule.spec()], call_timeout=call_timeout, binary=binary)
    return True


async def remove_rule(
    rule: DnatRule, *, call_timeout: float = NodeSettings.iptables_timeout, binary: str = "iptables"
) -> int:
    """Delete every copy of ``rule``; return how many were deleted (0 when absent)."""
    removed = 0
    # Each -D deletes one copy; stop at iptables' "no such rule", which also makes a
    # concurrent removal (another agent's shutdown) harmless. Bounded so that a rule
    # iptables keeps re-reporting can never spin forever.
    for _ in range(1000):
        try:
            await _iptables(["-D", CHAIN, *rule.spec()], call_timeout=call_timeout, binary=binary)
        except _RuleAbsent:
            return removed
        removed += 1
    raise IptablesError(
        f"gave up removing the podiam DNAT rule after {removed} copies; inspect the nat table"
    )


async def rule_count(
    rule: DnatRule, *, call_timeout: float = NodeSettings.iptables_timeout, binary: str = "iptables"
) -> int:
    """How many copies of ``rule`` are in the nat PREROUTING chain."""
    listing = await _iptables(["-S", CHAIN], call_timeout=call_timeout, binary=binary)
    return sum(1 for line in listing.splitlines() if rule.matches(line))


class _RuleAbsent(IptablesError):
    """iptables -C or -D did not find the rule: an answer, not a failure, for our callers."""


async def rule_present(
    rule: DnatRule, *, call_timeout: float = NodeSettings.iptables_timeout, binary: str = "iptables"
) -> bool:
    """Whether ``rule`` is in the nat PREROUTING chain (``iptables -C``)."""
    try:
        await _iptables(["-C", CHAIN, *rule.spec()], call_timeout=call_timeout, binary=binary)
    except _RuleAbsent:
        return False
    return True


async def _iptables(args: list[str], *, call_timeout: float, binary: str) -> str:
    """Run one iptables command on the nat table and return its stdout."""
    # Wait for the xtables lock for at most half the deadline, so that a held lock is
    # reported as such by iptables rather than as our timeout.
    lock_wait = str(max(1, int(call_timeout / 2)))
    argv = [binary, "-w", lock_wait, "-t", TABLE, *args]
    command = shlex.join(argv)
    returncode, stdout, err = await run_tool(argv, call_timeout=call_timeout)
    if returncode == 0:
        return stdout
    message = f"{command} failed with exit status {returncode}"
    if returncode == 1 and args[0] in ("-C", "-D") and any(marker in err for marker in _ABSENT_MARKERS):
        raise _RuleAbsent(f"{message}: {err}")
    hint = " (podiam needs root or CAP_NET_ADMIN for --iptables)" if returncode == 4 else ""
    raise IptablesError(f"{message}{hint}: {err or '(no stderr)'}")


async def run_tool(argv: list[str], *, call_timeout: float) -> tuple[int, str, str]:
    """Run an iptables tool (no shell) within ``call_timeout``: (exit status, stdout, stripped stderr).

    IptablesError when it cannot be run or does not finish in time; it is then killed, with
    anything it started, so no iptables process outlives the call.
    """
    binary, command = argv[0], shlex.join(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        raise IptablesError(
            f"cannot run {binary!r}: not found; install iptables on the node or run without --iptables"
        ) from e
    except OSError as e:
        raise IptablesError(f"cannot run {command}: {e}") from e
    try:
        async with asyncio.timeout(call_timeout):
            stdout, stderr = await proc.communicate()
    except TimeoutError:
        raise IptablesError(
            f"{command} did not finish within {call_timeout:g} s; "
            "is another process holding the xtables lock?"
        ) from None
    finally:
        if proc.returncode is None:  # timed out or cancelled: never leave iptables running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace").strip()
