"""
What STS hands out and what the cache keys it by.

``Identity`` is the cache key: two pods share credentials only if they would make the same
AssumeRole call. ``Credentials`` never shows its secret parts in repr(), logs or errors.
The IMDS JSON rendering lives here, next to the data, so that the cache can keep the bytes
a metadata response needs and a cache hit costs a dict lookup and a write.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from functools import cached_property

IMDS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Identity:
    """One AssumeRole call's parameters: the cache key."""

    role_arn: str
    session_name: str
    external_id: str | None = None
    session_tags: tuple[tuple[str, str], ...] = ()
    """STS session tags (key, value); part of the key because they change the session."""

    @property
    def role_name(self) -> str:
        """The last segment of the ARN: what IMDS lists under security-credentials/."""
        return self.role_arn.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials from STS. Secret parts are kept out of repr()."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: dt.datetime
    """Timezone-aware UTC."""
    last_updated: dt.datetime
    """When STS issued them; timezone-aware UTC."""

    def remaining(self, now: dt.datetime) -> float:
        """Seconds of validity left at ``now``."""
        return (self.expiration - now).total_seconds()

    @cached_property
    def imds_json(self) -> bytes:
        """The body of GET .../security-credentials/ROLE, in IMDS's exact format.

        Rendered once per credential set; a cache hit serves these bytes as they are.
        """
        return json.dumps(
            {
                "Code": "Success",
                "LastUpdated": self.last_updated.astimezone(dt.UTC).strftime(IMDS_TIME_FORMAT),
                "Type": "AWS-HMAC",
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "Token": self.session_token,
                "Expiration": self.expiration.astimezone(dt.UTC).strftime(IMDS_TIME_FORMAT),
            },
            indent=2,
        ).encode()
