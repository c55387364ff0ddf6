"""Benchmark harness: a static upstream, a load generator, and the proxies measured between them.

Run ``python -m benchmarks.run`` (or ``make bench``); results are printed as a markdown table
and saved as JSON under ``benchmarks/results/``. See docs/benchmarks.md.
"""
