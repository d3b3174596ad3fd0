"""Dev metrics under DDP equal single-process ones: the sampler's padded duplicates are dropped by row id.

Two CPU processes (gloo, ddp_spawn) evaluate the same weights as one process.
The dev split has an odd number of rows, so DistributedSampler repeats one
to even out the ranks, and a size that is not a multiple of 2 × the batch
size, so the last batches are short. The head's bias makes every answer
option predicted true: then a repeated row would be one more true positive
or false positive and change F1a, which is what the de-duplication by row id
must prevent.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from aotpt.backbones import load_tokenizer
from aotpt.data.datamodule import TaskDataModule
from aotpt.data.readers import read_local
from aotpt.module import TaskModule
from aotpt.tasks import get_task
from conftest import FIXTURES, model_conf

EVAL_BATCH = 4


def _validate(module: TaskModule, task: str, devices: int, root) -> dict[str, float]:
    tiny = model_conf("tiny_bert")
    datamodule = TaskDataModule(task, load_tokenizer(tiny["pretrained"]), str(FIXTURES), eval_batch_size=EVAL_BATCH)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    (metrics,) = trainer.validate(module, datamodule=datamodule)
    return {k: v for k, v in metrics.items() if k.startswith("val/") and "loss" not in k}


@pytest.mark.parametrize("task", ["multirc", pytest.param("record", marks=pytest.mark.slow)])
def test_two_processes_give_the_same_dev_metrics(tmp_path, task):
    rows = len(read_local(get_task(task), FIXTURES, "validation"))
    assert rows % 2 == 1 and rows % (2 * EVAL_BATCH) != 0  # the sampler must pad
    tiny = model_conf("tiny_bert")
    torch.manual_seed(0)
    module = TaskModule(
        model={"pretrained": tiny["pretrained"], "random_init": tiny["random_init"]},
        method={"_target_": "aotpt.methods.finetune.FinetuneConfig"},
        task=task,
        optim={"head_dropout": 0.1},
    )
    with torch.no_grad():
        module.net.head.out.bias.copy_(torch.tensor([0.0, 100.0]))  # every row predicted label 1
    one = _validate(module, task, 1, tmp_path / "one")
    two = _validate(module, task, 2, tmp_path / "two")
    assert set(one) == set(two) and {f"val/{m}" for m in get_task(task).metrics} <= set(one)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-7)
