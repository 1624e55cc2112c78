"""
The image tests: deploy/image/build-offline.sh builds the image once per session from this
checkout (no registry: a Debian base from mmdebstrap, pip from a wheelhouse, no network in the
build), and the tests run it with podman. They need root and the tools scripts/setup installs;
elsewhere they skip, except in CI, where a missing tool is a failure.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from image_podman import BUILD, IMAGE, LABEL, REPO, missing_tools, podman

BUILD_TIMEOUT = 900.0
"""Seconds: a cold build (mmdebstrap's base included) takes about two minutes here."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = [item for item in items if item.path.parent == REPO / "tests" / "image"]
    for item in here:
        # The session's build happens inside whichever test comes first; every podman call in
        # the tests has its own deadline (image_podman.podman's timeout).
        item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT + 120))
    missing = missing_tools()
    if not missing or os.environ.get("CI"):
        return  # in CI the image fixture fails instead, naming what scripts/setup did not install
    skip = pytest.mark.skip(reason=f"the image tests need {', '.join(missing)} (scripts/setup installs them)")
    for item in here:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    missing = missing_tools()
    if missing:
        pytest.fail(f"the image tests need {', '.join(missing)}: scripts/setup installs them")
    started = time.monotonic()
    build = subprocess.run([str(BUILD), IMAGE], cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                           check=False)
    if build.returncode != 0:
        pytest.fail(f"{BUILD.name} failed ({build.returncode}):\n{build.stderr[-5000:]}")
    print(f"{build.stdout}image built in {time.monotonic() - started:.0f} s")  # pytest -s shows it
    yield IMAGE
    # A container whose podman was killed (a timed-out test) would keep running: none may outlive the tests.
    leftover = podman("ps", "--all", "--quiet", f"--filter=label={LABEL}").stdout.split()
    if leftover:
        podman("rm", "--force", *leftover)
