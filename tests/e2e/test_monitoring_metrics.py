"""
The monitoring bundle (deploy/monitoring/) against what podiam really exports: an agent-mode
agent, and a split agent with its server, are started as the other end-to-end tests start
them, serve a pod, and are scraped; every series and label the dashboard and the alerts use
must be on one of those /metrics pages. The labels of a family no event has touched yet come
from podiam's metric classes, which must agree with the samples the scrape does show.
"""

from __future__ import annotations

import pytest
from cli_flags import flag_route

from podiam_sandbox.world import MODES, World
from promql_bundle import all_uses, every_process_metrics, missing, scraped_series

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def scrape_every_process() -> dict[str, str]:
    pages = {}
    for mode in MODES:
        async with World(mode=mode, flag_route=flag_route() if mode == "split" else None) as world:
            agent = await world.start_agent()
            try:
                pod = await world.add_pod("web", "team-a", role="app")
                await pod.boto3_caller_arn()  # requests, a cache hit or miss, an STS call: samples with labels
                pages[f"{mode} agent"] = await agent.metrics()
                if agent.server is not None:
                    pages["server"] = await agent.server.metrics()
            finally:
                assert await agent.stop() == 0
    return pages


async def test_every_metric_and_label_the_bundle_uses_is_exported() -> None:
    pages = await scrape_every_process()
    registered = every_process_metrics()
    exported: dict[str, frozenset[str]] = {}
    for process, page in pages.items():
        for series, seen in scraped_series(page).items():
            assert series in registered, f"{process} exports {series}, which no metric class registers"
            assert seen is None or seen == registered[series], (process, series, seen, registered[series])
            exported[series] = registered[series]
    assert {"podiam_server_streams", "podiam_remote_connected",
            "podiam_tls_certificate_expiration_timestamp_seconds"} <= set(exported)
    assert missing(all_uses(), exported) == []
