"""Meterway benchmark suite: `python -m bench.run [--quick]` (see bench/RESULTS.md).

Run on demand only, never from pytest: it starts real proxy, worker and
simulator processes on loopback ports and measures them.
"""
