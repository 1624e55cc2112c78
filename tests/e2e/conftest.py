"""End-to-end fixtures: one sandboxed node (API emulator, moto STS, pods as network
namespaces behind the real DNAT rule) per test module, with a podiam agent on it.

Modes: a module marked ``pytest.mark.modes("agent", "split")`` runs each of its tests in
both of podiam's modes, a World per mode (agent mode: the agent calls STS and watches the API;
split mode: ``podiam server`` does, and the agent streams from it). A test that narrows this
with ``pytest.mark.modes("agent", why="...")`` says why; ``split_gap="..."`` marks the split
variant as a known gap of split mode (strict xfail: it fails once the gap is closed, so the
mark goes). Unmarked modules run in agent mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from cli_flags import flag_route

from podiam_sandbox.world import MODES, Mode, World


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers",
                            "modes(*modes, why=None, split_gap=None): the podiam modes a test runs in (agent, split)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "mode" not in metafunc.fixturenames:
        return
    module = metafunc.module.__dict__.get("pytestmark", [])
    module_modes = next((m.args for m in (module if isinstance(module, list) else [module]) if m.name == "modes"),
                        ("agent",))
    own = metafunc.definition.get_closest_marker("modes")
    modes = own.args if own is not None else module_modes
    if own is not None and set(modes) < set(module_modes) and not own.kwargs.get("why"):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: say why it runs in {modes} only (why=...)")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown modes {sorted(unknown)}")
    gap = own.kwargs.get("split_gap") if own is not None else None
    params = [pytest.param(m, marks=pytest.mark.xfail(reason=gap, strict=True)) if m == "split" and gap else m
              for m in modes]
    if module_modes != ("agent",) or modes != ("agent",):
        metafunc.parametrize("mode", params, indirect=True, scope="module")


@pytest.fixture(scope="module")
def mode(request: pytest.FixtureRequest) -> Mode:
    return getattr(request, "param", "agent")  # type: ignore[no-any-return]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(mode: Mode) -> AsyncIterator[World]:
    async with World(mode=mode, flag_route=flag_route() if mode == "split" else None) as w:
        yield w
