"""
podman for the image tests: the image that deploy/image/build-offline.sh builds from the
checkout, and ``podman`` runs with the configuration that script uses (this machine's root
may not raise rlimits, and its cgroups need runc: see the script).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "image" / "build-offline.sh"
IMAGE = "localhost/podiam:tests"
LABEL = "podiam-image-test"
"""Every container the tests start carries it, so that none outlives the session."""
TOOLS = ("podman", "runc", "mmdebstrap", "eatmydata")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def containers_conf() -> Path:
    """The script's podman configuration, in a file (rewritten: it follows this machine's limits)."""
    conf = subprocess.run([str(BUILD), "--containers-conf"], check=True, capture_output=True, text=True,
                          timeout=30).stdout
    path = Path(tempfile.gettempdir()) / "podiam-image-tests-containers.conf"
    partial = path.with_suffix(f".{os.getpid()}")
    partial.write_text(conf)
    partial.replace(path)
    return path


@functools.cache
def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout,
                          check=check)


def run(*args: str, entrypoint: str | None = None, options: tuple[str, ...] = (), timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman run`` of the image on a read-only root file system with nothing writable (no
    /tmp tmpfs either: Kubernetes' readOnlyRootFilesystem adds none), no network and no
    capabilities, unless ``options`` say otherwise."""
    return podman("run", "--rm", f"--label={LABEL}", "--network=none", "--read-only", "--read-only-tmpfs=false",
                  "--cap-drop=ALL", "--security-opt=no-new-privileges", *options,
                  *([f"--entrypoint={entrypoint}"] if entrypoint else []), IMAGE, *args,
                  timeout=timeout, check=check)
