"""The split agent's refusal reporter on the request path: memory only, aggregated per
(pod uid, reason), bounded while no server takes the reports."""

from __future__ import annotations

from podiam.observability.metrics import Metrics
from podiam.pods import PodInfo
from podiam.remote.reports import MAX_MESSAGE, RefusalReporter
from podiam.settings import ReportSettings


def pod(name: str) -> PodInfo:
    return PodInfo("team", name, f"uid-{name}", "10.0.0.5")


def reporter(metrics: Metrics, max_pending: int = 3) -> RefusalReporter:
    return RefusalReporter("node-1", lambda: None, ReportSettings(max_pending=max_pending), metrics)


def test_repeats_are_aggregated_per_pod_and_reason() -> None:
    r = reporter(Metrics())
    for _ in range(5):
        r.warn(pod("a"), "IAMRoleForbidden", "no")
    r.warn(pod("a"), "IAMCredentialsFailed", "sts")
    assert len(r) == 2


def test_the_buffer_is_bounded_and_drops_are_counted() -> None:
    metrics = Metrics()
    r = reporter(metrics, max_pending=3)
    for i in range(5):
        r.warn(pod(f"p{i}"), "IAMRoleForbidden", "no")
    r.warn(pod("p0"), "IAMRoleForbidden", "x" * (MAX_MESSAGE * 2))  # a known pair still counts
    assert len(r) == 3
    assert metrics.registry.get_sample_value("podiam_remote_refusals_dropped_total", {"reason": "buffer_full"}) == 2


def test_a_pod_that_goes_is_forgotten() -> None:
    r = reporter(Metrics())
    r.warn(pod("a"), "IAMRoleForbidden", "no")
    r.warn(pod("a"), "IAMCredentialsFailed", "sts")
    r.warn(pod("b"), "IAMRoleForbidden", "no")
    r.forget(pod("a"))
    assert len(r) == 1
