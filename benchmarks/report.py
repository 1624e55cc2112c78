"""The results document (the JSON the runner writes) as markdown."""

from __future__ import annotations

from typing import Any


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _stat_rows(stats: dict[str, Any]) -> list[str]:
    rows = ["| figure | median | min | max | unit | n | note |", "|---|---:|---:|---:|---|---:|---|"]
    for name, s in stats.items():
        rows.append(f"| {name} | {_num(s['median'], s['unit'])} | {_num(s['min'], s['unit'])} | "
                    f"{_num(s['max'], s['unit'])} | {s['unit']} | {s['n']} | {s['note']} |")
    return rows


def render(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    v = meta["versions"]
    out = [
        f"# podiam benchmarks ({meta['mode']} run, {meta['started']})",
        "",
        f"Command: `{meta['command']}` (from the repository root, as root); took {meta['seconds']} s.",
        "",
        f"Machine: {meta['cores']} cores ({meta['cpu']}), {meta['memory_gb']} GB, {meta['os']}, "
        f"kernel {meta['kernel']}; load average {meta['load_average_at_start']} at start, "
        f"{meta['load_average_at_end']} at end.",
        "",
        f"Code: podiam {v['podiam']} at git {meta['git']['commit']}"
        + (" (tracked files modified)" if meta["git"]["dirty"] else "")
        + (f", PYTHONPATH={meta['podiam_pythonpath']}" if meta["podiam_pythonpath"] else "") + ".",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Every figure is the median of the runs (n) with min and max; ratios pair the runs taken side by "
        "side. Targets are reported, not asserted.",
        "",
        "## Targets",
        "",
        "| scenario | target | goal | measured | met |",
        "|---|---|---|---|---|",
    ]
    for key, sc in doc["scenarios"].items():
        for t in sc["targets"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            out.append(f"| {key} | {t['name']} | {t['goal']} | {t['measured']} | {met} |")
        if sc["error"]:
            out.append(f"| {key} | scenario ran | - | **failed: {sc['error']}** | **no** |")
    for key, sc in doc["scenarios"].items():
        out += ["", f"## {sc['title']}", "", f"`{key}`, {sc['seconds']} s."]
        if sc["error"]:
            out += ["", f"**The scenario failed:** `{sc['error']}`"]
        if sc["figures"]:
            out += ["", *_stat_rows(sc["figures"])]
        if sc["ratios"]:
            out += ["", "Ratios:", "", *_stat_rows(sc["ratios"])]
        if sc["simplifications"]:
            out += ["", "Method and simplifications:", ""] + [f"- {s}" for s in sc["simplifications"]]
        if sc["commands"]:
            out += ["", "Commands:", "", "```"] + sc["commands"] + ["```"]
    return "\n".join(out) + "\n"
