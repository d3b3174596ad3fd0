"""The one timing helper of every benchmark: interleaved rounds, paired ratios, spread.

Contenders take turns call by call (a round runs each once, in an order
rotated every round), so load from other processes on a shared machine and
slow drifts (thermal, frequency) hit all of them alike; a ratio is taken
within each round (paired) and summarised by its median and interquartile
range over the rounds. On CUDA each call is timed with events between
synchronisations (the host clock would time only the kernel launches).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from aotpt.cli import log


def _seconds(call: Callable[[], object], device: torch.device) -> float:
    """Wall time of `call()`; on CUDA the time between two events around it, synchronised."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def interleaved(
    runners: Mapping[str, Callable[[int], object]],
    device: torch.device,
    warmup: int,
    rounds: int,
    label: str = "",
    progress: bool | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each runner `fn(i)` (i: the round, so runners can feed a fresh batch each round):
    `warmup` untimed rounds, then `rounds` timed ones. `progress` (default: 10 rounds or more) logs after the
    warm-up and every fifth of the rounds, with the time left at the pace so far."""
    progress = rounds >= 10 if progress is None else progress
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    total, began, timed_from = warmup + rounds, time.perf_counter(), None
    for i in range(total):
        if i == warmup:
            timed_from = time.perf_counter()
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order: no contender always runs first
            seconds = _seconds(functools.partial(runners[name], i), device)
            if i >= warmup:
                times[name].append(seconds)
        if progress and (i + 1 == warmup or (i + 1) % max(1, total // 5) == 0):
            now = time.perf_counter()
            per_round = (now - timed_from) / (i + 1 - warmup) if i >= warmup else now - began
            log.info(
                "%sround %d/%d (%.0f s so far, about %.0f s to go)",
                f"{label}: " if label else "", i + 1, total, now - began, per_round * (total - i - 1),
            )  # fmt: skip
    return times


@contextmanager
def fixed_threads(device: torch.device, threads: int) -> Iterator[int]:
    """On CPU, run intra-op work on exactly `threads` threads inside the block (timings are only comparable at a
    fixed count), then restore the count before; yields the count in force (recorded with every result)."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles (the interquartile range is the spread reported) and extremes of `values`."""
    if len(values) < 2:
        value = values[0]
        return {"median": value, "q1": value, "q3": value, "min": value, "max": value, "n": len(values)}
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def paired_ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Each contender's per-round ratio to `baseline` (timed in the same round), summarised by `spread`.

    The baseline's own entry is its time over itself: 1 by construction, so a
    second, separately timed copy of the baseline is what measures the noise.
    """
    base = times[baseline]
    return {name: spread([t / b for t, b in zip(values, base, strict=True)]) for name, values in times.items()}
