"""
Which iptables backend the DNAT rule is written with: iptables-nft or iptables-legacy.

A node's kube-proxy, CNI and kubelet use one of the two. Both feed the same kernel hooks,
but a rule written with the other one is invisible to the node's own tools (``iptables -S``,
kube-proxy's resyncs, an operator's ``iptables -t nat -F``) and is evaluated in an order
nobody chose. ``--iptables-mode nft|legacy`` names the backend; ``auto`` (the default)
picks the one that already holds the node's rules, exactly as Kubernetes' iptables-wrapper
(kubernetes-sigs/iptables-wrappers) decides it:

1. kubelet's marker chains (``KUBE-IPTABLES-HINT``, ``KUBE-KUBELET-CANARY``, Kubernetes 1.17
   and later) in iptables-nft's mangle table, IPv4 then IPv6: nft;
2. the same chains anywhere in iptables-legacy's tables (every table is dumped: naming
   ``-t mangle`` would make the legacy kernel module create that table): legacy;
3. otherwise the backend with more rules (``-A`` lines) over IPv4 and IPv6: legacy only when
   it has strictly more, so an empty node (or a tie) gets nft, as the wrapper's default.

A dump that fails or is not installed counts as empty, as in the wrapper. The choice is made
once, at start, and logged with its reason; every iptables call of the agent then uses that
binary (the rule's install, its guard, its removal).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from podiam.errors import ConfigError, IptablesError
from podiam.node.iptables import run_tool
from podiam.settings import NodeSettings

BINARIES = {"nft": "iptables-nft", "legacy": "iptables-legacy"}
"""The backend's iptables command, per mode."""

KUBELET_CHAINS = re.compile(r"^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)\b", re.MULTILINE)
"""Chains kubelet creates in the backend it uses (the wrapper's first test)."""

_RULE_LINE = re.compile(r"^-", re.MULTILINE)
"""A rule in iptables-save's output (``-A CHAIN ...``); chains and policies start with ``:``."""

FALLBACK_PATH = "/usr/sbin:/sbin"
"""Searched after $PATH: the backends live in sbin, which a container's PATH may lack."""


@dataclass(frozen=True)
class Dumps:
    """What the detection reads: iptables-save output per backend (empty when it failed)."""

    nft_mangle: str = ""
    """``iptables-nft-save -t mangle`` and ``ip6tables-nft-save -t mangle``."""
    legacy: str = ""
    """``iptables-legacy-save`` and ``ip6tables-legacy-save``, every table."""
    nft: str = ""
    """``iptables-nft-save`` and ``ip6tables-nft-save``, every table."""


def decide(dumps: Dumps) -> tuple[str, str]:
    """The backend ``auto`` picks for these dumps, and why (for the start-up log)."""
    if KUBELET_CHAINS.search(dumps.nft_mangle):
        return "nft", "kubelet's marker chain is in iptables-nft's mangle table"
    if KUBELET_CHAINS.search(dumps.legacy):
        return "legacy", "kubelet's marker chain is in iptables-legacy's tables"
    legacy, nft = len(_RULE_LINE.findall(dumps.legacy)), len(_RULE_LINE.findall(dumps.nft))
    counts = f"iptables-legacy holds {legacy} rules, iptables-nft {nft}"
    if legacy > nft:
        return "legacy", f"no kubelet marker chain; {counts}"
    return "nft", f"no kubelet marker chain; {counts} (nft unless legacy has more)"


@dataclass(frozen=True)
class Backend:
    """The chosen backend: its mode, the iptables binary every call uses, and why."""

    mode: str
    """``nft`` or ``legacy``."""
    binary: str
    """Absolute path of iptables-nft or iptables-legacy."""
    reason: str
    """Why this one: the flag, or auto's finding."""


Which = Callable[[str], str | None]
"""Finds a command's absolute path (``shutil.which`` over $PATH and sbin), None if absent."""


def find(command: str) -> str | None:
    """``command`` on $PATH, else in /usr/sbin or /sbin."""
    path = os.pathsep.join(p for p in (os.environ.get("PATH", ""), FALLBACK_PATH) if p)
    return shutil.which(command, path=path)


async def choose_backend(requested: str, *, call_timeout: float = NodeSettings.iptables_timeout,
                         which: Which = find) -> Backend:
    """The backend for ``--iptables-mode requested``; ConfigError when its binary is not installed.

    With ``auto`` and only one backend installed, that one (and the reason says so).
    """
    if requested in BINARIES:
        binary = which(BINARIES[requested])
        if binary is None:
            other = "legacy" if requested == "nft" else "nft"
            raise ConfigError(
                f"--iptables-mode {requested}: {BINARIES[requested]} is not installed (searched $PATH and "
                f"{FALLBACK_PATH}); install it, or use --iptables-mode {other} or auto if the node uses the other"
            )
        return Backend(requested, binary, "--iptables-mode " + requested)
    if requested != "auto":  # NodeSettings admits only IPTABLES_MODES
        raise ValueError(f"unknown iptables mode {requested!r}")
    found = {mode: which(command) for mode, command in BINARIES.items()}
    installed = [mode for mode, path in found.items() if path is not None]
    if not installed:
        raise ConfigError(
            f"--iptables needs iptables-nft or iptables-legacy, and neither is installed (searched $PATH and "
            f"{FALLBACK_PATH})"
        )
    if len(installed) == 1:
        (mode,) = installed
        return Backend(mode, str(found[mode]), f"only {BINARIES[mode]} is installed")
    mode, reason = decide(await read_dumps(which, call_timeout=call_timeout))
    return Backend(mode, str(found[mode]), reason)


async def read_dumps(which: Which, *, call_timeout: float) -> Dumps:
    """The dumps ``decide`` reads; a dump that cannot be made is empty (the wrapper ignores errors too).

    The nft mangle dumps come first: when kubelet's chain is there, nothing else is read.
    """
    nft_mangle = await _save(which, ("iptables-nft-save", "ip6tables-nft-save"), ["-t", "mangle"], call_timeout)
    if KUBELET_CHAINS.search(nft_mangle):
        return Dumps(nft_mangle=nft_mangle)
    legacy = await _save(which, ("iptables-legacy-save", "ip6tables-legacy-save"), [], call_timeout)
    nft = await _save(which, ("iptables-nft-save", "ip6tables-nft-save"), [], call_timeout)
    return Dumps(nft_mangle=nft_mangle, legacy=legacy, nft=nft)


async def _save(which: Which, commands: tuple[str, ...], args: list[str], call_timeout: float) -> str:
    out = []
    for command in commands:
        binary = which(command)
        if binary is None:
            continue
        try:
            returncode, stdout, _ = await run_tool([binary, *args], call_timeout=call_timeout)
        except IptablesError:
            continue
        if returncode == 0:
            out.append(stdout)
    return "".join(out)
