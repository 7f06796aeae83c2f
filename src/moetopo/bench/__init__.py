"""Benchmarks: ``python -m moetopo.bench NAME``; each prints ratios against a baseline run
in the same invocation, never absolute timings alone (the machine is shared and noisy)."""
