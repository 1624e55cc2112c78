"""The Kubernetes API client: the one place that turns a kubeconfig into a lightkube client."""

from __future__ import annotations

import httpx2 as httpx
import lightkube
from lightkube.core.exceptions import ConfigError as LightkubeConfigError

from podiam.errors import ConfigError
from podiam.settings import KubeSettings

KubeClient = lightkube.AsyncClient
"""The client type, named here so that layers above kube/ never import lightkube."""


def make_client(settings: KubeSettings) -> lightkube.AsyncClient:
    """A client for ``settings.kubeconfig``, else in-cluster config, else KUBECONFIG / ~/.kube/config.

    Every non-watch call has ``request_timeout``; watches have no read timeout (lightkube
    lifts it) and are bounded by the watcher's inactivity deadline instead.
    """
    try:
        if settings.kubeconfig:
            config = lightkube.KubeConfig.from_file(settings.kubeconfig)
        else:
            config = lightkube.KubeConfig.from_env()
    except (LightkubeConfigError, OSError, ValueError) as e:
        where = settings.kubeconfig or "in-cluster config, KUBECONFIG or ~/.kube/config"
        raise ConfigError(f"cannot load Kubernetes API access from {where}: {e}") from e
    return lightkube.AsyncClient(
        config,
        timeout=httpx.Timeout(settings.request_timeout),
        field_manager="podiam",
    )
