"""
The benchmark chart (benchmarks/chart.py) drawn from a small results document written here:
a real PNG of the fixed size, which matplotlib's reader opens; a clear error naming a figure
a bar needs and the document lacks. Unit level: no benchmark runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from benchmarks import chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _stat(median: float) -> dict[str, Any]:
    return {"unit": "", "median": median, "min": median * 0.9, "max": median * 1.1, "n": 3,
            "runs": [median * 0.9, median, median * 1.1], "note": ""}


def _scenario(**bars: tuple[float, float]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, (rps, p99) in bars.items():
        figures[f"{name}.requests_per_s"] = _stat(rps)
        figures[f"{name}.p99_ms"] = _stat(p99)
    return {"title": "t", "seconds": 1.0, "error": None, "figures": figures, "ratios": {}, "targets": [],
            "simplifications": [], "commands": []}


def _doc() -> dict[str, Any]:
    return {
        "meta": {"mode": "full", "started": "2026-01-01T00:00:00Z", "git": {"commit": "abc1234"},
                 "profile": {"runs": 3}},
        "scenarios": {
            "hot_path": _scenario(nginx_dnat=(20000, 2.0), agent_dnat=(19000, 2.5),
                                  agent_ratelimited_dnat=(18500, 2.6), agent_aiohttp_dnat=(6000, 9.0)),
            "sdk_pattern": _scenario(nginx_close=(7800, 9.0), agent_close=(4700, 15.0),
                                     nginx_sequence=(6500, 16.0), agent_sequence=(5200, 14.8)),
        },
    }


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(doc))
    return path


def test_chart_writes_a_png_of_the_fixed_size(tmp_path: Path) -> None:
    png = tmp_path / "out" / "chart.png"
    chart.chart(_write(tmp_path, _doc()), png)
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    height, width, _ = matplotlib.image.imread(png).shape
    assert (width, height) == (chart.WIDTH_IN * chart.DPI, chart.HEIGHT_IN * chart.DPI)


def test_the_bars_are_each_measured_configuration_in_order(tmp_path: Path) -> None:
    doc = _doc()
    doc["scenarios"]["split_mode"] = {**_scenario(agent_dnat=(1, 1)), "error": "RuntimeError: boom"}  # failed: skipped
    drawn = [(chart.GROUPS[m.group].scenario, m.bar.figure) for m in chart.measured(doc)]
    assert drawn == [("hot_path", "nginx_dnat"), ("hot_path", "agent_dnat"), ("hot_path", "agent_ratelimited_dnat"),
                     ("hot_path", "agent_aiohttp_dnat"), ("sdk_pattern", "nginx_close"),
                     ("sdk_pattern", "agent_close"), ("sdk_pattern", "nginx_sequence"),
                     ("sdk_pattern", "agent_sequence")]
    assert chart.measured(doc)[1].stats["p99_ms"] == {"median": 2.5, "min": 2.25, "max": 2.75}


def test_a_missing_figure_is_named(tmp_path: Path) -> None:
    doc = _doc()
    del doc["scenarios"]["sdk_pattern"]["figures"]["agent_close.p99_ms"]
    png = tmp_path / "chart.png"
    with pytest.raises(chart.ChartError, match=r"^sdk_pattern: figure agent_close\.p99_ms is missing"):
        chart.chart(_write(tmp_path, doc), png)
    assert not png.exists()


def test_results_without_a_charted_scenario_say_so(tmp_path: Path) -> None:
    doc = {**_doc(), "scenarios": {"memory": _scenario()}}
    with pytest.raises(chart.NothingToChart, match="is in these results"):
        chart.chart(_write(tmp_path, doc), tmp_path / "chart.png")


def test_the_command_line_draws_from_a_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "chart.png"
    assert chart.main([str(_write(tmp_path, _doc())), str(png)]) == 0
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert chart.main([str(tmp_path / "results.json")]) == 2
    assert "usage: python -m benchmarks.chart" in capsys.readouterr().err
