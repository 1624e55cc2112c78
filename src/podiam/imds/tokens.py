"""
IMDSv2 session tokens, issued by podiam and bound to the pod IP that asked for them.

Tokens are self-contained (expiry and IP under an HMAC with a per-process random key), so
validating one costs a hash and no state grows with the number of tokens a pod asks for.
A token stolen by another pod is useless: it only validates from the IP it was issued to.
Tokens do not survive a restart of the agent; SDKs then get 401 and fetch a new one, as
they do when real IMDS tokens expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Callable

from podiam.settings import ImdsSettings

MIN_TTL = 1
MAX_TTL = 21600
_MAC_LEN = 16
_EXPIRY = struct.Struct(">I")


class TokenIssuer:
    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time,
                 max_remembered: int = ImdsSettings.tokens_remembered) -> None:
        """max_remembered: verified tokens kept (ImdsSettings.tokens_remembered says why)."""
        self._key = key or os.urandom(32)
        self._clock = clock
        self._max_remembered = max_remembered
        self._valid: dict[str, tuple[str, int]] = {}
        """token -> (IP, expiry) of tokens whose MAC was checked: the hot path skips the HMAC."""

    def issue(self, ip: str, ttl: int) -> str:
        """A token valid for ``ttl`` seconds, from ``ip`` only. ``ttl`` must be in 1..21600."""
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ValueError(f"TTL {ttl} is outside {MIN_TTL}..{MAX_TTL}")
        body = _EXPIRY.pack(int(self._clock()) + ttl) + _packed(ip)
        return base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    def valid(self, token: str, ip: str) -> bool:
        """Whether ``token`` was issued by this process to ``ip`` and has not expired."""
        return self.seconds_left(token, ip) > 0

    def seconds_left(self, token: str, ip: str) -> float:
        """Seconds until ``token`` expires if this process issued it to ``ip``; <= 0 if it is not valid."""
        return self._expiry(token, ip) - self._clock()

    def _expiry(self, token: str, ip: str) -> int:
        """When ``token`` expires (the clock's seconds) if this process issued it to ``ip``; else 0."""
        known = self._valid.get(token)
        if known is not None:
            return known[1] if known[0] == ip else 0
        expiry = self._verify(token, ip)
        if expiry is None:
            return 0
        if len(self._valid) >= self._max_remembered:
            self._valid.clear()  # mostly expired or abandoned tokens; live ones re-verify once
        self._valid[token] = (ip, expiry)
        return expiry

    def _verify(self, token: str, ip: str) -> int | None:
        """The expiry sealed in ``token`` if its MAC is ours and it names ``ip``; else None."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            packed_ip = _packed(ip)
        except (ValueError, OSError):  # not base64; not an address (inet_pton's OSError)
            return None
        body, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        if len(body) != _EXPIRY.size + len(packed_ip) or not hmac.compare_digest(mac, self._mac(body)):
            return None
        if body[_EXPIRY.size:] != packed_ip:
            return None
        (expiry,) = _EXPIRY.unpack_from(body)
        return int(expiry)

    def _mac(self, body: bytes) -> bytes:
        # The one-shot form: OpenSSL's HMAC in one C call, not an hmac object per token.
        return hmac.digest(self._key, body, hashlib.sha256)[:_MAC_LEN]


def _packed(ip: str) -> bytes:
    """The address's bytes, as ipaddress would give them, in one C call: a token is issued on
    every SDK refresh, and each new connection's first request verifies one."""
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def parse_ttl(header: str | None) -> int | None:
    """The TTL of a token request header, or None when missing or invalid (answer 400)."""
    if header is None or not header.strip().isdigit() or not header.strip().isascii():
        return None
    ttl = int(header.strip())
    return ttl if MIN_TTL <= ttl <= MAX_TTL else None
