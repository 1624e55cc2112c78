"""
podiam's wheel holds the agent and nothing of its test world: the sandbox (a fake node
IMDS with node credentials among it) is its own distribution, podiam-sandbox, in sandbox/.

The wheel is built offline from a copy of the sources, as a release would build it, with
the build backend scripts/setup installs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from podiam_sandbox.node_imds import NODE_ACCESS_KEY_ID, NODE_SECRET_ACCESS_KEY

REPO = Path(__file__).resolve().parents[2]
SANDBOX_DEPENDENCIES = ("kmock", "moto", "boto3", "awscli", "attrs", "podiam-sandbox")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    # A copy: a build in the checkout leaves build/ and egg-info behind, and a stale build/lib
    # could put files into the wheel that the sources no longer have.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    (path,) = out.glob("podiam-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_the_wheel_holds_the_agent(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert {"podiam/cli.py", "podiam/imds/core.py", "podiam/py.typed"} <= names


def test_the_wheel_holds_no_sandbox(wheel: zipfile.ZipFile) -> None:
    assert [name for name in wheel.namelist() if "sandbox" in name] == []


def test_the_wheel_holds_no_fake_imds_and_no_node_credentials(wheel: zipfile.ZipFile) -> None:
    for name in wheel.namelist():
        content = wheel.read(name)
        assert b"FakeNodeImds" not in content, name
        assert NODE_ACCESS_KEY_ID.encode() not in content, name
        assert NODE_SECRET_ACCESS_KEY.encode() not in content, name


def test_the_wheel_requires_nothing_of_the_test_world(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(metadata_name).decode())
    assert "sandbox" not in (metadata.get_all("Provides-Extra") or [])
    requirements = [r.split(";")[0].strip().lower() for r in metadata.get_all("Requires-Dist") or []]
    for dependency in SANDBOX_DEPENDENCIES:
        assert not [r for r in requirements if r.startswith(dependency)], requirements
