"""A killed run restarts with the same command and ends as if it had never stopped.

Three pieces make that true:
- `resume_path`: the run folder is fixed per (run_name, seed), so the same
  command finds its own `checkpoints/last.ckpt` and continues from it;
- `AtomicCheckpointIO`: a checkpoint is written beside its target and renamed
  over it, so a kill during a save leaves the previous checkpoint intact;
- `EpochShuffleSampler` and `EpochSeed`: the data order and the RNG state of
  every epoch depend only on (seed, epoch), so after a restart they are those
  of the uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler

from aotpt.atomic import atomic_open
from aotpt.cli import log
from aotpt.errors import ConfigError


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`ckpt_path=last`, or when unset this run folder's last.ckpt if a killed run left one."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path in (None, "last"):
        if last.exists():
            log.info("resuming from %s", last)
            return str(last)
        if ckpt_path == "last":
            raise ConfigError(f"ckpt_path=last but {last} does not exist")
        return None
    if not Path(ckpt_path).exists():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist")
    return ckpt_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through `atomic.atomic_open`: a kill mid-save leaves the previous checkpoint.

    Lightning's own save goes through fsspec, whose local transaction writes to
    the system temp folder and *copies* the file when that is another file
    system, which is not atomic.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000 + epoch) % 2**32


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch drawn from its own generator seeded by (seed, epoch).

    torch's RandomSampler draws from the global RNG when iterated, and
    Lightning creates the first iterator of a resumed run at a different
    point than in an uninterrupted one. Lightning calls `set_epoch` before the
    first batch; the permutation is computed lazily, at that first batch.
    Under DDP Lightning swaps it for a DistributedSampler, which is seeded the same way.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        yield from torch.randperm(self.size, generator=generator).tolist()


class EpochSeed(L.Callback):
    """Reseed every RNG from (seed, epoch) just before the first step of each epoch.

    Not in `on_train_epoch_start`: a resumed run builds its first data iterator
    (which draws from the global RNG) before that hook, an uninterrupted run
    after it. At the first batch both have done so, so every dropout mask of
    epoch e matches whether the run got there in one go or from a checkpoint.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx == 0:
            seed_everything(epoch_seed(self.seed, trainer.current_epoch), workers=True, verbose=False)
