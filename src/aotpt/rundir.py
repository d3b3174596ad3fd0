"""Who may train in a run folder, and what a finished one answers.

- `stored_result`: a folder whose results.json says `completed` answers a new
  launch of the same run with its stored metrics, touching nothing; it does so
  only if the stored identity equals the one resolved now, and otherwise
  names the settings that differ (a changed default must not return another
  configuration's result).
- `RunLock`: one process trains in a folder at a time. A POSIX record lock
  (`fcntl.lockf`) on `<run>/.lock`: the kernel (or the NFS lock manager)
  drops it when the holder dies, even by SIGKILL, so there is no stale lock
  to clean up, and it works across the nodes of a shared file system, where
  `flock` may not. Only global rank 0 locks: plain `ddp` re-launches this
  script once per rank (and SLURM starts one task per rank), and those other
  ranks work in the same folder under rank 0's lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from aotpt.errors import AotptError, ConfigError, DataError

# Environment variables that carry a process's rank: torchrun/Lightning's ddp re-launch, and SLURM.
RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def is_global_zero() -> bool:
    """True unless the environment says this process is another rank of a distributed run."""
    return all(os.environ.get(var, "0") in ("0", "") for var in RANK_VARS)


def read_results(path: Path) -> dict:
    """results.json, or a one-line error naming it when it cannot be parsed."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable results file ({err}); delete it to train this run again") from None


def stored_result(output_dir: Path, ident: dict) -> dict | None:
    """The stored outcome of a completed run with this identity; None if the folder holds no completed run."""
    path = output_dir / "results.json"
    if not path.is_file():
        return None
    stored = read_results(path)
    if stored.get("status") != "completed":
        return None
    if stored.get("identity") != ident:
        from aotpt.identity import differences

        keys = differences(stored.get("identity") or {}, ident) if stored.get("identity") else ["identity (not stored)"]
        raise ConfigError(
            f"{output_dir} holds a finished run with other settings ({', '.join(keys[:8])}"
            f"{', ...' if len(keys) > 8 else ''}); use another run folder, or delete {path} to train again"
        )
    return {
        "metrics": stored.get("metrics", {}),
        "best": stored.get("best", {}),
        "output_dir": str(output_dir),
        "status": "completed",
        "stored": True,
    }


class RunLock:
    """An exclusive lock on a run folder for as long as the block runs (global rank 0 only)."""

    def __init__(self, output_dir: Path) -> None:
        self.path = Path(output_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if not is_global_zero():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise AotptError(
                f"{self.path.parent} is in use by {holder}: another process is training this run "
                "(a requeued job beside a live one?); wait for it or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%F %T')}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the lock
            self.fd = None
