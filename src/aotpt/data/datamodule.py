"""The LightningDataModule of one task: `TaskData` (read, tokenise, pad) plus the training loaders.

The train loader is shuffled and resumable mid-epoch (`aotpt.resume`), and
under DDP each process reads its own shard; the eval and test loaders read
the splits in file order.
"""

from __future__ import annotations

import lightning as L
import pyarrow.compute as pc
from datasets import Dataset
from torch.utils.data import DataLoader

from aotpt.data.task_data import TaskData, limit_rows
from aotpt.resume import ResumableLoader, ResumableSampler

__all__ = ["TaskDataModule", "limit_rows"]


def token_counts(dataset: Dataset) -> list[int]:
    """Each row's number of tokens, read from the Arrow column (no Python list of every row's ids)."""
    return pc.list_value_length(dataset.data.column("input_ids")).to_pylist()


class TaskDataModule(TaskData, L.LightningDataModule):
    """Loaders for one task's train split, its eval splits (`spec.eval_splits`) and test splits (see `TaskData`).

    group_by_length: train batches of rows of similar length (`ResumableSampler`), so
    they pad less; off by default (the batches, hence the numbers, differ).
    """

    def __init__(self, *args, group_by_length: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled train batches, resumable mid-epoch; under DDP this process's shard (see aotpt.resume)."""
        dataset = self.dataset("train")
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=ResumableSampler(
                len(dataset),
                self.seed,
                num_replicas=world,
                rank=rank,
                lengths=token_counts(dataset) if self.group_by_length else None,
                batch_size=self.batch_size,
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collator,
        )

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per `spec.eval_splits`, in that order (MNLI: matched, mismatched)."""
        return [self.loader(split) for split in self.spec.eval_splits]

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per `spec.test_splits`, in that order; batches have no labels."""
        return [self.loader(split) for split in self.spec.test_splits]
