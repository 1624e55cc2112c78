"""
``python podman_podiam.py IMAGE agent|server ARGS...``: runs podiam's command in the image as
the chart runs it, for World(podiam_command=...): the agent as root with NET_ADMIN and NET_RAW
only and the node's /run/xtables.lock, the server as the image's non-root user with no
capability; both on a read-only root with nothing writable, in the host's network (the
agent's DaemonSet is hostNetwork; the server here must reach the world's loopback API).

The environment World gives the process goes into the container (PATH aside: the image has
its own). The files named on the command line (kubeconfig, certificates) are mounted
read-only at the same paths; for the server, as copies readable by its group, as a Secret
volume with fsGroup gives them (the originals are root's, 0600). SIGTERM and SIGINT are
passed on to podman, which passes them to podiam.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from image_podman import LABEL, podman_env

SERVER_UID = 65532
XTABLES_LOCK = Path("/run/xtables.lock")


def main() -> int:
    image, command, *args = sys.argv[1:]
    options = [f"--label={LABEL}", "--network=host", "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
               "--security-opt=no-new-privileges"]
    staging = Path(tempfile.mkdtemp(prefix="podiam-image-files-"))
    try:
        if command == "agent":
            XTABLES_LOCK.touch(exist_ok=True)  # the chart's hostPath is FileOrCreate, as kube-proxy's
            options += ["--user=0", "--cap-add=NET_ADMIN,NET_RAW", f"--volume={XTABLES_LOCK}:{XTABLES_LOCK}"]
        for arg in args:
            path = Path(arg)
            if not (path.is_absolute() and path.is_file()):
                continue
            source = path
            if command == "server":
                source = staging / str(len(options))
                shutil.copyfile(path, source)
                os.chown(source, 0, SERVER_UID)
                source.chmod(0o440)
            options.append(f"--volume={source}:{path}:ro")
        options += [f"--env={name}" for name in os.environ if name != "PATH"]
        process = subprocess.Popen(["podman", "run", "--rm", *options, image, command, *args], env=podman_env())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: process.send_signal(number))
        return process.wait()
    finally:
        shutil.rmtree(staging)


if __name__ == "__main__":
    sys.exit(main())
