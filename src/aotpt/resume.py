"""A killed run restarts with the same command and ends as if it had never stopped.

Bit for bit, with data-loader worker processes and under DDP, from a
checkpoint taken at an epoch's end or in the middle of one:

- `resume_path`: the run folder is a function of the run's identity
  (`aotpt.identity`), so the same command finds its own
  `checkpoints/last.ckpt`; a truncated or corrupt one is a one-line error.
- `ResumeCheckpoint` writes last.ckpt after every epoch and, inside long
  epochs, every `every_minutes` of training (and/or `every_n_steps`), so a
  pre-empted job loses at most that much. `AtomicCheckpointIO` writes it
  beside its target and renames it over, so a kill mid-save leaves the
  previous one.
- `ResumableSampler` orders epoch e by a permutation drawn from (seed, e) and
  shards it itself across DDP ranks (rank r takes every world-th row: the
  ranks' batches of step t together are the rows of the one-process batch t).
  It is a DistributedSampler, so Lightning uses it as it is: Lightning's own
  wrapper would shuffle the order once more with its own seed, and a 2-process
  run would then train on other batches than a 1-process one.
- `ResumableLoader` remembers how many batches of the epoch it has handed out
  (Lightning stores that in the checkpoint through `state_dict`) and, resumed,
  starts the epoch after them. It starts its iterator lazily, at the first
  batch: Lightning creates the iterator of a resumed run *before* it calls
  `set_epoch`, and worker processes fetch indices as soon as the iterator
  exists, so the resumed epoch used to run in epoch 0's order whenever
  `num_workers > 0` (the divergence of issue #10 point 2).
- `ExactResume` reseeds every RNG from (seed, epoch, batch, rank) before
  each training step, so dropout masks do not depend on what ran before in
  this process (a restart, a validation, a worker start), and hands the
  loader its saved position where Lightning drops it (Lightning #20550).

torchdata's StatefulDataLoader would replace `ResumableLoader`, but it is a
second copy of torch's loader internals (it warns on torch 2.13), it still
needs a stateful sampler for the epoch, and it cannot fix Lightning creating
the iterator before `set_epoch`; the two small classes here can.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, DistributedSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from aotpt.atomic import atomic_open
from aotpt.cli import log
from aotpt.errors import ConfigError, DataError, unreadable


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`ckpt_path=last`, or when unset this run folder's last.ckpt if a killed run left one; checked readable."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt_path in (None, "last"):
        if last.exists():
            log.info("resuming from %s", last)
            check_checkpoint(last)
            return str(last)
        if ckpt_path == "last":
            raise ConfigError(f"ckpt_path=last but {last} does not exist")
        return None
    if not Path(ckpt_path).exists():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist")
    check_checkpoint(Path(ckpt_path))
    return ckpt_path


def unreadable_checkpoint(path, err: BaseException) -> DataError:
    return unreadable(path, "checkpoint", err, "delete it to start this run over, or pass ckpt_path=<another .ckpt>")


def check_checkpoint(path: Path) -> None:
    """Open the checkpoint (memory-mapped: its tensors are not read) before any model is built."""
    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # zip, pickle and storage errors all mean the same here
        raise unreadable_checkpoint(path, err) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save through `atomic.atomic_open`: a kill mid-save leaves the previous checkpoint.

    Lightning's own save goes through fsspec, whose local transaction writes to
    the system temp folder and *copies* the file when that is another file
    system, which is not atomic.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (FileNotFoundError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise unreadable_checkpoint(path, err) from None


def derive_seed(*parts) -> int:
    """A 32-bit seed from any key (numpy's limit), well mixed: (1, 1000) and (2, 0) do not collide."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


class ResumableSampler(DistributedSampler):
    """Epoch e's order: a permutation drawn from (seed, e), sharded across ranks; can start mid-epoch.

    Like DistributedSampler, the order is padded with its own first rows to a
    multiple of the world size, so every rank gets `num_samples` rows. `start`
    skips that many of this rank's rows once (set by `ResumableLoader`).

    With `lengths` (the rows' token counts; `data.group_by_length=true`) the
    permutation is grouped by length as the Hugging Face Trainer's
    `group_by_length` does (`transformers.trainer_pt_utils.get_length_grouped_indices`):
    mega-batches of up to 50 global batches (`batch_size` x world rows) sorted
    longest first, so a batch pads to little more than its own rows' lengths.
    The order is still a function of (seed, e) alone, so resume stays exact.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if lengths is not None and len(lengths) != size:
            raise ValueError(f"lengths has {len(lengths)} entries for {size} rows")
        self.size = size
        self.lengths = None if lengths is None else list(lengths)
        self.batch_size = batch_size
        self.start = 0

    def order(self) -> list[int]:
        """Every rank's rows of this epoch, before sharding (padded to total_size)."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
        if self.lengths is None or self.size == 0:
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            global_batch = self.batch_size * self.num_replicas
            order = get_length_grouped_indices(self.lengths, global_batch, generator=generator)
        pad = self.total_size - self.size
        return order + (order * math.ceil(pad / max(self.size, 1)))[:pad]

    def __iter__(self) -> Iterator[int]:
        shard = self.order()[self.rank : self.total_size : self.num_replicas]
        start, self.start = self.start, 0
        return iter(shard[start:])


class ResumableLoader(DataLoader):
    """A DataLoader (over a `ResumableSampler`) whose position in the epoch is saved and restored.

    `state_dict()` = {"epoch", "batches"}: the epoch being iterated and how many
    of its batches were handed out (Lightning calls it when it saves a
    checkpoint, and `load_state_dict` before resuming). The iterator starts at
    the first batch asked for, after Lightning's `set_epoch`; if the sampler is
    then at the saved epoch it skips the saved number of batches (by index, no
    data is loaded), else (the checkpoint ended its epoch) it starts afresh.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._position = {"epoch": 0, "batches": 0}
        self._resume: dict | None = None

    def __iter__(self) -> Iterator:
        return self._batches()

    def _batches(self) -> Iterator:
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):  # Lightning swapped it (overfit_batches: a fixed order)
            yield from super().__iter__()
            return
        skip = 0
        if self._resume is not None and self._resume["epoch"] == sampler.epoch:
            skip = self._resume["batches"]
        self._resume = None
        sampler.start = skip * self.batch_size
        self._position = {"epoch": sampler.epoch, "batches": skip}
        for batch in super().__iter__():
            self._position["batches"] += 1
            yield batch

    def state_dict(self) -> dict:
        return dict(self._position)

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


class ExactResume(L.Callback):
    """Reseeds every RNG before each training step, and puts a resumed train loader where the checkpoint left it.

    Seeds come from (seed, epoch, batch, rank): dropout masks are then a
    function of where the step is in the run, not of how this process got
    there (restarted from a mid-epoch checkpoint, validated, started workers).
    The rank enters so that DDP processes draw different masks, as
    independent batches should.

    The loader position: Lightning restores a stateful loader only if it
    builds the loader after reading the checkpoint, but `configure_optimizers`
    asks for `estimated_stepping_batches` (the LR schedule), which builds it
    before, and the saved position is then dropped (Lightning issue #20550).
    It is applied here instead, at `on_train_start`, before the first batch
    (the loader starts its iterator lazily); a second application is harmless.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._loader_states: list[dict] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loader_states = fit_loop.get("state_dict", {}).get("combined_loader", [])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.train_dataloader
        loaders = loaders if isinstance(loaders, list | tuple) else [loaders]
        resumable = [loader for loader in loaders if isinstance(loader, ResumableLoader)]
        for loader, state in zip(resumable, self._loader_states, strict=False):
            loader.load_state_dict(state)
        self._loader_states = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        seed_all(derive_seed(self.seed, "step", trainer.current_epoch, batch_idx, trainer.global_rank))


class ResumeCheckpoint(Checkpoint):
    """checkpoints/last.ckpt after every epoch and every `every_minutes` (and/or `every_n_steps`) inside one.

    A `Checkpoint`, so Lightning runs it after the best-epoch ModelCheckpoint
    at an epoch's end, and the saved state includes that callback's new best.
    A mid-epoch save is skipped on the epoch's last batch: validation and the
    epoch-end save follow at once. Under DDP every rank must take part in a
    save, so rank 0's clock decides for all.
    """

    def __init__(self, dirpath: str, every_minutes: float | None = 30, every_n_steps: int | None = None) -> None:
        if every_minutes is not None and not every_minutes > 0:
            raise ConfigError(f"callbacks.resume_checkpoint.every_minutes={every_minutes} must be > 0 or null")
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps > 0):
            raise ConfigError(f"callbacks.resume_checkpoint.every_n_steps={every_n_steps} must be >= 1 or null")
        self.path = Path(dirpath) / "last.ckpt"
        self.every_minutes, self.every_n_steps = every_minutes, every_n_steps
        self.last_saved: str | None = None
        self._saved_at, self._saved_step = time.monotonic(), -1

    def _skip(self, trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking or trainer.state.fn != "fit"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_at = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._skip(trainer) or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if trainer.global_step == self._saved_step:
            return  # gradient accumulation: no new optimiser step since the last save
        due = bool(self.every_n_steps) and trainer.global_step % self.every_n_steps == 0
        if self.every_minutes is not None:
            late = time.monotonic() - self._saved_at >= 60 * self.every_minutes
            due = bool(trainer.strategy.broadcast(due or late))
        if due:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._skip(trainer):
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # optimiser and loop state too: a full resume
        self.last_saved, self._saved_at, self._saved_step = str(self.path), time.monotonic(), trainer.global_step
