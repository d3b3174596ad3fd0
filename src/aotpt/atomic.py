"""Atomic writes: a kill mid-write leaves the previous file whole.

Every file a run or a CLI produces (checkpoints, results.json, trained
tensors, artifacts, predictions) is written to a hidden temporary file in the
same folder, synced, then renamed over the target: rename within one file
system is atomic, so readers see the old file or the new one, never half.

The temporary name is unique per process and call, so two writers of one
target (DDP ranks, a requeued job beside a live one) never write through the
same temporary file: the last rename wins, whole. The file gets the
permissions a plain `open()` would give it (0666 minus the umask): some
writers (safetensors) create their output 0600, which would hide a shared
group's artifacts from each other.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: setting it is not thread-safe


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO]:
    """`open(path, mode)` whose content appears at `path` only once the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def write_json_atomic(path: Path | str, data: dict) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2, default=str)
