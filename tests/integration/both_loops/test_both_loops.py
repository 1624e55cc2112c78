"""The guard of this folder's promise: every test here runs on both loops, really.

The uvloop half comes from pytest-asyncio's pytest_asyncio_loop_factories hook (1.4+). With an
older pytest-asyncio the hook is never called and the folder silently runs on asyncio alone;
these tests then fail instead.
"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

EXPECTED_LOOP = {"asyncio": asyncio.BaseEventLoop, "uvloop": uvloop.Loop}


async def test_each_variant_runs_on_the_loop_it_is_named_for(request: pytest.FixtureRequest) -> None:
    variant = request.node.callspec.id if hasattr(request.node, "callspec") else None
    assert variant in EXPECTED_LOOP, f"not parametrised by loop: {request.node.name}"
    assert variant is not None
    loop = asyncio.get_running_loop()
    assert isinstance(loop, EXPECTED_LOOP[variant])
    assert not (variant == "asyncio" and isinstance(loop, uvloop.Loop))


def test_every_async_test_here_has_both_variants(request: pytest.FixtureRequest) -> None:
    here = request.node.path.parent
    variants: dict[str, set[str]] = {}
    for item in request.session.items:
        if item.path.parent == here and asyncio.iscoroutinefunction(getattr(item, "obj", None)):
            name, _, ids = item.name.partition("[")
            loops = set(ids.rstrip("]").split("-")) & set(EXPECTED_LOOP)  # beside other parameters' ids
            variants.setdefault(f"{item.path.name}::{name}", set()).update(loops)
    assert variants, "no async tests collected here"
    lacking = sorted(name for name, found in variants.items() if not {"asyncio", "uvloop"} <= found)
    assert not lacking, f"not run on both loops (pytest-asyncio >= 1.4 needed): {lacking}"
