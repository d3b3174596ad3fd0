"""Benchmark suites behind `python -m aotpt.bench suite=...` (library code; `aotpt.bench` is the CLI).

Every suite times with `timing.interleaved` (warm-up, then rounds in which
each contender runs once, in rotating order; CUDA synchronised around each
call) and reports medians and paired ratios with their spread, measured in
one process in one run.
"""
