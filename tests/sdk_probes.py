"""
The SDK programs run inside test pods besides boto3 and the AWS CLI (which the test world
runs itself): each prints the caller identity from STS GetCallerIdentity, with credentials
from its SDK's own default chain, which in a pod finds only the instance metadata service.
scripts/setup installs them (the JS SDK from npm, the Go SDKs and Ruby's from Debian) and
builds the Go programs.
"""

from __future__ import annotations

import json
from pathlib import Path

from podiam_sandbox.world import WorldPod

_TESTS = Path(__file__).parent

PROBES: dict[str, tuple[str, ...]] = {
    "js-v3": ("node", str(_TESTS / "sdk-js" / "whoami.mjs")),
    "go-v1": (str(_TESTS / "sdk-go" / ".build" / "whoami-v1"),),
    "go-v2": (str(_TESTS / "sdk-go" / ".build" / "whoami-v2"),),
    "ruby": ("ruby", str(_TESTS / "sdk-ruby" / "whoami.rb")),
}


async def probe_caller_arn(pod: WorldPod, sdk: str) -> str:
    """The ARN the ``sdk``'s program prints in ``pod``."""
    result = await pod.run(PROBES[sdk])
    assert result.returncode == 0, f"{sdk} in {pod.ref} (installed and built by scripts/setup): {result.stderr}"
    return str(json.loads(result.stdout)["Arn"])
