"""
``podiam agent`` on an accelerated clock, for the simulated hour of the STS-economy scenario.

    python benchmarks/scaled_agent.py K agent [podiam agent flags...]

The flags are parsed and validated by podiam's own CLI exactly as given; then the session
duration and refresh time of the resulting settings are divided by K before the agent
starts. ``--session-duration 1h --session-refresh 30m`` with K=20 behaves like an hour
compressed into 3 minutes: sessions of 180 s, refreshed when 90 s remain (minus the cache's
jitter of up to 10% of that). The fixed 60 s expiry margin of the cache is not scaled,
which bounds K (duration/K must exceed refresh/K + 60 s: K < 30 for the defaults). moto's
STS accepts any DurationSeconds; real STS refuses less than 900.

This wraps ``podiam.cli.agent_settings`` (the one function that turns flags into settings);
podiam has no clock or time-scale option of its own. The wrapper is the only way this
suite reaches inside podiam, and it fails loudly if that function is renamed.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


def main() -> None:
    scale = float(sys.argv[1])
    from podiam import cli  # noqa: PLC0415 - after argv checks

    real = getattr(cli, "agent_settings", None)
    if real is None:
        raise SystemExit("podiam.cli.agent_settings is gone: update benchmarks/scaled_agent.py")

    def scaled(flags: dict[str, Any], environ: Any) -> Any:
        settings = real(flags, environ)
        sts = dataclasses.replace(settings.sts, session_duration=settings.sts.session_duration / scale,
                                  session_refresh=settings.sts.session_refresh / scale)
        return dataclasses.replace(settings, sts=sts)

    cli.agent_settings = scaled
    cli.main(sys.argv[2:], prog_name="podiam")


if __name__ == "__main__":
    main()
