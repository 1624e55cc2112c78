# Benchmarks (issue 4). Run as root from the repository root; see benchmarks/README.md.
# `make bench` takes about 26 minutes and should run alone on the machine (it also draws a chart:
# benchmarks/results/latest.png);
# `make bench-smoke` takes under a minute and only checks that every scenario still runs.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-smoke

bench:
	PODIAM_BENCH=1 scripts/setup
	$(PYTHON) -m benchmarks.run --mode full

bench-smoke:
	PODIAM_BENCH=1 scripts/setup
	$(PYTHON) -m benchmarks.run --mode smoke
