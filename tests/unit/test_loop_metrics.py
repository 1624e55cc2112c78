"""The lock-free counter and histogram expose exactly what prometheus_client's own would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from podiam.observability.loop_metrics import LoopCounter, LoopHistogram
from podiam.observability.metrics import LATENCY_BUCKETS


def _without_created(registry: CollectorRegistry) -> list[str]:
    # prometheus_client adds a _created sample per series (a timestamp); the loop metrics do not.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@given(st.lists(st.tuples(st.sampled_from(["credentials", "token"]), st.sampled_from(["200", "403"]),
                          st.sampled_from([0.0, *LATENCY_BUCKETS, 1e-7, 0.003, 7.0])
                          | st.floats(min_value=0, max_value=10)),
                max_size=30))
def test_the_histogram_exposes_what_prometheus_clients_would(observations: list[tuple[str, str, float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("x_seconds", "Doc.", ["route", "status"], LATENCY_BUCKETS, ours)
    reference = Histogram("x_seconds", "Doc.", ["route", "status"], buckets=LATENCY_BUCKETS, registry=theirs)
    for route, status, seconds in observations:
        mine.labels(route, status).observe(seconds)
        reference.labels(route, status).observe(seconds)
    assert _without_created(ours) == _without_created(theirs)


def test_the_counter_exposes_what_prometheus_clients_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("hits_total", "Doc.", ours)
    reference = Counter("hits_total", "Doc.", registry=theirs)
    for _ in range(3):
        mine.inc()
        reference.inc()
    assert _without_created(ours) == _without_created(theirs)
    assert ours.get_sample_value("hits_total") == 3


def test_a_name_registered_twice_is_refused_as_the_library_refuses_it() -> None:
    registry = CollectorRegistry()
    LoopCounter("hits_total", "Doc.", registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("hits_total", "Doc.", registry=registry)


def test_bad_buckets_and_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        LoopHistogram("y", "Doc.", ["a"], [1.0, 0.5], CollectorRegistry())
    histogram = LoopHistogram("z", "Doc.", ["a"], [1.0], CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("1", "2")
