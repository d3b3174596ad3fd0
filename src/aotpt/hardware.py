"""What a process runs on, said once: results.json's `machine` record and the benchmarks' device names."""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch


@cache
def cpu_model() -> str:
    """The CPU's model name as Linux reports it (/proc/cpuinfo), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The CPU, its cores, torch's CPU threads and version, and the GPUs: enough to read a wall time against
    another's. The GPU's name only once this process has initialised CUDA (asking would create a CUDA
    context, e.g. in the launcher of ddp_spawn); `gpus` counts the visible devices either way."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpus": torch.cuda.device_count(), "gpu": gpu, "torch": torch.__version__}  # fmt: skip
