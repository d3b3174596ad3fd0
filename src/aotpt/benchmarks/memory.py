"""Peak memory of a block: the CUDA allocator's peak on GPU, the process's peak RSS on CPU (Linux /proc)."""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak bytes above the block's start, in the yielded dict's "peak_bytes" once the block ends.

    CPU: the process's peak RSS (VmHWM), reset through /proc/self/clear_refs
    so earlier peaks do not count; freed heap is returned to the OS first
    (malloc_trim), or its reuse would hide from the RSS delta.
    """
    stats: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield stats
        stats["peak_bytes"] = torch.cuda.max_memory_allocated() - start
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    start = _kib("VmRSS")
    yield stats
    stats["peak_bytes"] = (_kib("VmHWM") - start) * 1024
