"""
The results document as a picture: requests/s and p99 latency (median bars, min-max error
bars) of nginx and each podiam configuration a run measured, one group per pattern.

    python -m benchmarks.chart RESULTS.json OUT.png

``benchmarks.run`` draws it next to the results; docs are regenerated from a saved run with
the command above. matplotlib is an optional dependency (``pip install -e '.[bench]'``;
scripts/setup installs it): imported only here, only when a chart is drawn. Agg, no
network, a fixed size in pixels.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 8.0, 100
"""The PNG is always 1200 x 800 pixels (no tight bounding box: its size would follow the labels)."""
NGINX_COLOUR = "#8c8c8c"
PODIAM_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#17becf")


class ChartError(Exception):
    """The chart cannot be drawn from this document."""


class MatplotlibMissing(ChartError):
    """matplotlib is not installed: the suite runs on, without a chart."""


class NothingToChart(ChartError):
    """The document has none of the scenarios the chart shows (e.g. ``--only memory``)."""


@dataclass(frozen=True)
class Bar:
    label: str
    figure: str
    """The figures' prefix in the scenario: ``{figure}.requests_per_s`` and ``{figure}.p99_ms``."""
    required: bool = True
    """A required bar missing from its scenario's results is an error; the others are drawn when measured."""


@dataclass(frozen=True)
class Group:
    scenario: str
    title: str
    bars: tuple[Bar, ...]


GROUPS = (
    Group("hot_path", "keep-alive credential GET\n(hot_path)", (
        Bar("nginx", "nginx_dnat"),
        Bar("agent", "agent_dnat"),
        Bar("agent\nrate limit on", "agent_ratelimited_dnat", required=False),
        Bar("agent\naiohttp", "agent_aiohttp_dnat", required=False),
        Bar("agent\nbaseline", "agent_baseline_dnat", required=False),
    )),
    Group("split_mode", "keep-alive credential GET\n(split_mode)", (
        Bar("agent", "agent_dnat"),
        Bar("split\nagent", "split_dnat"),
    )),
    Group("sdk_pattern", "Connection: close GET\n(sdk_pattern)", (
        Bar("nginx", "nginx_close"),
        Bar("agent", "agent_close"),
    )),
    Group("sdk_pattern", "SDK sequence, close\n(sdk_pattern)", (
        Bar("nginx", "nginx_sequence"),
        Bar("agent", "agent_sequence"),
    )),
)
PANELS = (("requests_per_s", "requests/s"), ("p99_ms", "p99 latency (ms)"))


@dataclass(frozen=True)
class Measured:
    group: int
    bar: Bar
    stats: dict[str, dict[str, float]]
    """Panel figure -> {median, min, max}."""


def measured(doc: dict[str, Any]) -> list[Measured]:
    """The bars of ``doc`` in drawing order; ChartError names a figure a drawn bar needs and lacks."""
    found: list[Measured] = []
    scenarios = doc.get("scenarios", {})
    for g, group in enumerate(GROUPS):
        scenario = scenarios.get(group.scenario)
        if scenario is None or scenario.get("error"):  # not run, or failed: its own report says so
            continue
        figures = scenario.get("figures", {})
        for bar in group.bars:
            names = {q: f"{bar.figure}.{q}" for q, _ in PANELS}
            if not bar.required and not any(n in figures for n in names.values()):
                continue
            stats: dict[str, dict[str, float]] = {}
            for q, name in names.items():
                stat = figures.get(name)
                if stat is None or any(stat.get(k) is None for k in ("median", "min", "max")):
                    raise ChartError(f"{group.scenario}: figure {name} is missing (or has no median, min, max)")
                stats[q] = {k: float(stat[k]) for k in ("median", "min", "max")}
            found.append(Measured(g, bar, stats))
    if not found:
        raise NothingToChart("none of " + ", ".join(sorted({g.scenario for g in GROUPS})) + " is in these results")
    return found


def chart(results_json_path: Path | str, png_path: Path | str) -> None:
    """Draw the chart of the results document at ``results_json_path`` into ``png_path``."""
    doc = json.loads(Path(results_json_path).read_text())
    bars = measured(doc)
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 - optional dependency, only for the chart
    except ImportError as e:
        raise MatplotlibMissing("matplotlib is not installed (pip install -e '.[bench]', or scripts/setup)") from e

    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    xs: list[float] = []
    x, previous = 0.0, None
    for b in bars:
        if previous is not None:
            x += 1.6 if b.group != previous else 1.0
        xs.append(x)
        previous = b.group
    podiam_labels = list(dict.fromkeys(b.bar.label for b in bars if b.bar.label != "nginx"))
    colours = [NGINX_COLOUR if b.bar.label == "nginx"  # one colour per configuration, across groups
               else PODIAM_COLOURS[podiam_labels.index(b.bar.label) % len(PODIAM_COLOURS)] for b in bars]
    for ax, (q, label) in zip(axes, PANELS, strict=True):
        medians = [b.stats[q]["median"] for b in bars]
        spread = [[b.stats[q]["median"] - b.stats[q]["min"] for b in bars],
                  [b.stats[q]["max"] - b.stats[q]["median"] for b in bars]]
        ax.bar(xs, medians, width=0.8, color=colours, yerr=spread, capsize=4, ecolor="black")
        for xi, value, top in zip(xs, medians, spread[1], strict=True):
            ax.annotate(_short(value), (xi, value + top), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
        for left, right in itertools.pairwise(xs):
            if right - left > 1.0:
                ax.axvline((left + right) / 2, color="black", alpha=0.2, linestyle="--")
    bottom = axes[-1]
    bottom.set_xticks(xs, [b.bar.label for b in bars], fontsize=8)
    top = axes[0]
    for g in sorted({b.group for b in bars}):
        centre = sum(xi for xi, b in zip(xs, bars, strict=True) if b.group == g) / sum(b.group == g for b in bars)
        top.text(centre, 1.02, GROUPS[g].title, transform=top.get_xaxis_transform(), ha="center", va="bottom",
                 fontsize=9)
    meta = doc.get("meta", {})
    runs, commit = meta.get("profile", {}).get("runs", "?"), meta.get("git", {}).get("commit", "?")
    figure.suptitle(f"podiam vs nginx: median of {runs} run(s), min-max bars ({meta.get('mode', '?')} run "
                    f"{meta.get('started', '?')}, git {commit})", fontsize=10)
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, format="png", dpi=DPI, metadata={"Software": None})


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2g}" if abs(value) < 1 else f"{value:.1f}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.chart RESULTS.json OUT.png", file=sys.stderr)
        return 2
    try:
        chart(argv[0], argv[1])
    except ChartError as e:
        print(f"chart: {e}", file=sys.stderr)
        return 1
    print(f"chart: {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
