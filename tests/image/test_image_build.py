"""
The image as built from this checkout (conftest.py): what it runs, as whom, with what, and
that it works with nothing writable, as the chart runs it (readOnlyRootFilesystem).
"""

from __future__ import annotations

import json
import subprocess
import tomllib

import pytest
from image_podman import REPO, podman, run
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("image")]

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PREFIX = "/opt/podiam"


def inspect(image: str) -> dict[str, object]:
    (config,) = json.loads(podman("image", "inspect", image).stdout)
    return config["Config"]  # type: ignore[no-any-return]


def test_podiam_is_the_entrypoint_and_its_version_the_checkouts(image: str) -> None:
    assert inspect(image)["Entrypoint"] == [f"{PREFIX}/bin/podiam"]
    assert run("--version").stdout == f"podiam, version {PROJECT['version']}\n"


def test_the_labels_name_the_version_and_the_commit(image: str) -> None:
    labels = inspect(image)["Labels"]
    assert isinstance(labels, dict)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True,
                            timeout=10).stdout.strip()
    assert labels["org.opencontainers.image.version"] == PROJECT["version"]
    assert labels["org.opencontainers.image.revision"] == commit
    assert labels["org.opencontainers.image.licenses"] == PROJECT["license"]


def test_it_runs_as_a_non_root_user_by_default(image: str) -> None:
    assert inspect(image)["User"] == "65532:65532"
    assert run("-c", "id -u; id -g", entrypoint="/bin/sh").stdout.split() == ["65532", "65532"]


def test_both_iptables_backends_are_there() -> None:
    # The agent must use the backend that holds the node's rules; either may be the node's.
    assert "(nf_tables)" in run("--version", entrypoint="/usr/sbin/iptables-nft").stdout
    assert "(legacy)" in run("--version", entrypoint="/usr/sbin/iptables-legacy").stdout


def test_the_agents_help_runs_on_a_read_only_root() -> None:
    assert "--server-address" in run("agent", "--help").stdout


def test_certs_init_writes_into_a_tmpfs_on_a_read_only_root() -> None:
    listing = run("-c", "podiam certs init --out /certs/pki >/dev/null && cd /certs/pki && "
                  "find . -type f -exec stat -c '%n %a' {} + | sort",
                  entrypoint="/bin/sh", options=("--tmpfs=/certs:mode=1777",)).stdout
    modes = dict(line.split() for line in listing.splitlines())
    assert {name for name in modes if name.endswith("tls.key")} == {"./ca/tls.key", "./server/tls.key",
                                                                     "./agent/tls.key"}
    assert {mode for name, mode in modes.items() if name.endswith(".key")} == {"600"}


def test_every_module_is_compiled_unchecked_so_nothing_is_written_or_stat_checked() -> None:
    # An unchecked-hash pyc (PEP 552, flags == 1) is used without looking at its source: on a
    # read-only root Python would otherwise compile every module at each start.
    script = f"""
import importlib.util, pathlib
for source in pathlib.Path("{PREFIX}/lib").rglob("*.py"):
    cached = pathlib.Path(importlib.util.cache_from_source(str(source)))
    flags = cached.read_bytes()[4:8] if cached.exists() else b""
    if flags != (1).to_bytes(4, "little"):
        print(source, "no pyc" if not flags else "flags " + flags.hex())
"""
    assert run("-c", script, entrypoint=f"{PREFIX}/bin/python").stdout == ""


def test_every_native_extension_finds_its_libraries() -> None:
    # A wheel's extension may link a library the slim base lacks (grpcio's libstdc++): it
    # would fail only when that module is imported, in split mode, not at --version.
    listing = run("-c", f"find {PREFIX} -name '*.so*' -type f -exec ldd {{}} + | grep -F 'not found' || true",
                  entrypoint="/bin/sh").stdout
    assert listing == ""


def test_the_venv_holds_podiams_runtime_dependencies_and_nothing_else() -> None:
    # No pip, no build backend, nothing of the test world (moto, kmock, pytest): exactly the
    # distributions podiam's requirements reach, read from the image's own metadata.
    script = """
import importlib.metadata, json
print(json.dumps({d.metadata["Name"]: d.requires or [] for d in importlib.metadata.distributions()}))
"""
    installed = {canonicalize_name(name): requires
                 for name, requires in json.loads(run("-c", script, entrypoint=f"{PREFIX}/bin/python").stdout).items()}
    reached: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("podiam", frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        reached.add(name)
        for line in installed.get(name, []):
            requirement = Requirement(line)
            if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra})
                                                 for extra in extras | {""}):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    assert set(installed) == reached
    assert {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]
            if Requirement(r).marker is None or Marker(str(Requirement(r).marker)).evaluate()} <= set(installed)
