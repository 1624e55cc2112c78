"""
``podiam agent`` on an accelerated clock, for the simulated hour of the STS-economy scenario.

    python benchmarks/scaled_agent.py K agent [podiam agent flags...]

The flags are parsed and validated by podiam's own CLI exactly as given; then the session
duration, the refresh time and the expiry margin of the resulting settings are divided by K
before the agent starts. ``--session-duration 1h --session-refresh 30m`` with K=20 behaves
like an hour compressed into 3 minutes: sessions of 180 s, refreshed when 90 s remain (minus
the cache's jitter of up to 10% of that), never served with less than 3 s left. moto's STS
accepts any DurationSeconds; real STS refuses less than 900.

It replaces nothing inside podiam: click parses the flags with podiam's own ``agent``
command, ``podiam.cli.agent_settings`` builds and validates the settings, and the same
``Agent`` runs them; only three durations of the settings are divided, as plain
configuration (StsSettings checks them again). podiam has no clock or time-scale option of
its own.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import uvloop

from podiam import cli
from podiam.observability import logging as podiam_logging
from podiam.runner import Agent


def main() -> None:
    scale = float(sys.argv[1])
    if sys.argv[2:3] != ["agent"]:
        raise SystemExit("usage: scaled_agent.py K agent [podiam agent flags...]")
    with cli.agent.make_context("podiam agent", sys.argv[3:]) as ctx:
        settings = cli.agent_settings(ctx.params, os.environ)  # podiam's own validation, unscaled
    sts = dataclasses.replace(settings.sts, session_duration=settings.sts.session_duration / scale,
                              session_refresh=settings.sts.session_refresh / scale,
                              expiry_margin=settings.sts.expiry_margin / scale)
    settings = dataclasses.replace(settings, sts=sts)
    podiam_logging.configure(settings.log)
    uvloop.run(Agent(settings).run())


if __name__ == "__main__":
    main()
