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
from collections.abc import Callable, Mapping

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
) -> dict[str, list[float]]:
    """Seconds per call of each runner `fn(i)` (i: the round, so runners can feed a fresh batch each round):
    `warmup` untimed rounds, then `rounds` timed ones."""
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(warmup + rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order: no contender always runs first
            seconds = _seconds(functools.partial(runners[name], i), device)
            if i >= warmup:
                times[name].append(seconds)
        if rounds >= 10 and (i + 1) % max(1, (warmup + rounds) // 5) == 0:
            log.info("%sround %d/%d", f"{label}: " if label else "", i + 1, warmup + rounds)
    return times


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
