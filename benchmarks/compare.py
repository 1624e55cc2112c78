"""
Two results files side by side: every figure's and ratio's median, and new / old.

    python -m benchmarks.compare benchmarks/results/OLD.json benchmarks/results/NEW.json

For a before/after of a change (the metadata fast path, say): run ``make bench`` on each
version, or bench another checkout from this one with ``PYTHONPATH=/path/to/checkout/src``,
then compare the two files. Absolute figures drift between runs on a shared machine; the
ratios to nginx measured in the same run drift least.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def compare(old: dict[str, Any], new: dict[str, Any]) -> str:
    out = [
        f"old: {old['meta']['started']} git {old['meta']['git']['commit']} ({old['meta']['mode']}); "
        f"new: {new['meta']['started']} git {new['meta']['git']['commit']} ({new['meta']['mode']})",
        "",
        "| scenario | figure | unit | old median | new median | new / old |",
        "|---|---|---|---:|---:|---:|",
    ]
    for key, scenario in new["scenarios"].items():
        before = old["scenarios"].get(key, {})
        for kind in ("ratios", "figures"):
            for name, stat in scenario[kind].items():
                prior = before.get(kind, {}).get(name)
                a = prior["median"] if prior else None
                b = stat["median"]
                change = f"{b / a:.2f}" if a not in (None, 0) and b is not None else "-"
                out.append(f"| {key} | {name} | {stat['unit']} | {_fmt(a)} | {_fmt(b)} | {change} |")
    out += ["", "| scenario | target | old | new |", "|---|---|---|---|"]
    for key, scenario in new["scenarios"].items():
        prior = {t["name"]: t for t in old["scenarios"].get(key, {}).get("targets", [])}
        for t in scenario["targets"]:
            was = prior.get(t["name"])
            out.append(f"| {key} | {t['name']} | {was['measured'] if was else '-'} | {t['measured']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    old, new = (json.loads(Path(a).read_text()) for a in argv)
    sys.stdout.write(compare(old, new))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
