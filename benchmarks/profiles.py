"""The sizes of each scenario in the full run and in the smoke mode (CI: seconds, structure only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Profile:
    name: str
    runs: int
    """Repetitions of every measured figure (the median of these is reported)."""

    # 1. hot path
    wrk_seconds: float
    wrk_warmup: float
    wrk_threads: int
    wrk_connections: int

    # 2. STS economy
    roles: int
    pods_per_role: int
    time_scale: int
    """Durations are divided by this: 1h/30m sessions become 3600/k s and 1800/k s."""
    sim_minutes: float
    """How much of the simulated hour is run (60 in the full run)."""
    round_every_sim_minutes: float
    """Every pod runs the SDK flow this often (simulated minutes)."""
    burst: int
    """Concurrent first requests for one identity (single-flight)."""

    # 3. start-up burst
    startup_pods: int

    # 4. application impact
    app_seconds: float
    """Length of each application run (one static and one per configuration, per SDK and round)."""
    app_sdks: tuple[str, ...]
    """The SDKs whose application is run (keys of scenarios/app_impact.APPS)."""

    # 5. memory and start
    pod_counts: tuple[int, ...]
    soak_seconds: float
    soak_rate: float
    """SDK flows per second (3 requests each) during the soak."""
    soak_pods: int
    soak_sample_seconds: float

    # 6. connection churn
    churn_rounds: int
    churn_seconds: float

    # 8. split-mode server at scale
    scale_sizes: tuple[tuple[int, int], ...]
    """(pods, nodes) of each cluster the server is measured with."""
    scale_runs: int
    """Fresh clusters per size (each one creates every pod and prefetches every identity)."""
    scale_ip_rate: float
    """Pod IPs written into the API per second, steadily, in the round that measures the delay."""
    scale_idle_seconds: float
    """How long the server's CPU is read with every agent connected and nothing changing."""


FULL = Profile(
    name="full", runs=3,
    wrk_seconds=10, wrk_warmup=2, wrk_threads=2, wrk_connections=32,
    roles=4, pods_per_role=5, time_scale=20, sim_minutes=60, round_every_sim_minutes=5, burst=1000,
    startup_pods=100,
    app_seconds=5, app_sdks=("boto3", "js", "go-v1", "go-v2", "ruby"),
    pod_counts=(0, 110, 500), soak_seconds=600, soak_rate=50, soak_pods=10, soak_sample_seconds=5,
    churn_rounds=10, churn_seconds=10,
    scale_sizes=((5000, 100), (10000, 200)), scale_runs=3, scale_ip_rate=100, scale_idle_seconds=10,
)

SMOKE = Profile(
    name="smoke", runs=1,
    wrk_seconds=1, wrk_warmup=0, wrk_threads=2, wrk_connections=32,
    roles=2, pods_per_role=1, time_scale=20, sim_minutes=2, round_every_sim_minutes=1, burst=100,
    startup_pods=5,
    app_seconds=1, app_sdks=("boto3", "go-v2"),
    pod_counts=(0, 10), soak_seconds=3, soak_rate=10, soak_pods=2, soak_sample_seconds=1,
    churn_rounds=2, churn_seconds=1,
    scale_sizes=((40, 4),), scale_runs=1, scale_ip_rate=40, scale_idle_seconds=1,
)

PROFILES = {p.name: p for p in (FULL, SMOKE)}


@dataclass(frozen=True)
class Context:
    profile: Profile
    workdir: Path
    """A private temporary directory for this scenario (configs, logs, scripts)."""
