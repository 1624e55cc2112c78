"""
A counter and a histogram for the metadata endpoint's hot path, updated without a lock.

Why: prometheus_client's metric values each take a ``threading.Lock`` on every update (its
metrics may be shared between threads), and a histogram observation takes two. On a cached
credential request that was a third of the CPU the agent spends in Python. podiam updates
these two metrics only from its event loop's thread, and scrapes read them from the same
thread (the metrics port's handler), so plain integers are exact. The library still does
everything else: these are collectors on the process's registry, exposed through its
metric families and text format, under the same names and types as before.

Only metrics updated once per request belong here; everything else stays prometheus_client's.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class LoopCounter(Collector):
    """A counter without labels, for one thread: ``inc()`` adds to an int."""

    labelnames: tuple[str, ...] = ()

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name, self._doc = name.removesuffix("_total"), documentation
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def describe(self) -> Iterator[Metric]:
        """What the registry checks names against, with or without auto_describe."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._doc, value=self.value)


class LoopHistogramChild:
    """One label set's buckets: ``observe`` is one C bisect and two additions."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        """Per bucket, not cumulative: the last one is +Inf."""
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        # bisect_left: the first bound >= amount, as Prometheus' "le" (less than or equal).
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1


class LoopHistogram(Collector):
    """A labelled histogram for one thread, with prometheus_client's ``labels()`` interface."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(set(bounds)) or not bounds or math.isinf(bounds[-1]):
            raise ValueError("buckets must be finite and strictly increasing (+Inf is added)")
        self._name, self._doc, self._bounds = name, documentation, bounds
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogramChild:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self._name} takes labels {self.labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = LoopHistogramChild(self._bounds)
        return child

    def describe(self) -> Iterator[Metric]:
        """What the registry checks names against, with or without auto_describe."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self.labelnames)
        les = [*(floatToGoString(b) for b in self._bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for le, count in zip(les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, child.sum)
        yield family

