"""DDP: dev metrics equal single-process ones, and training is the training of one process with the global batch.

Dev metrics: the sampler's padded duplicates are dropped by row id.

Two CPU processes (gloo, ddp_spawn) evaluate the same weights as one process.
The dev split has an odd number of rows, so DistributedSampler repeats one
to even out the ranks, and a size that is not a multiple of 2 × the batch
size, so the last batches are short. The head's bias makes every answer
option predicted true: then a repeated row would be one more true positive
or false positive and change F1a, which is what the de-duplication by row id
must prevent.
"""

from __future__ import annotations

import itertools
import json
import types
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from aotpt import train
from aotpt.backbones import load_tokenizer
from aotpt.data.datamodule import TaskDataModule
from aotpt.data.readers import read_local
from aotpt.methods import METHODS
from aotpt.module import TaskModule
from aotpt.results import ResultsWriter
from aotpt.resume import ResumableSampler, derive_seed
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


# ---- training under DDP: the same training as one process ------------------------------------------------------


def test_sampler_shards_are_disjoint_cover_the_epoch_and_interleave_the_one_process_order():
    size, world = 15, 2  # odd: the sampler pads with the epoch's first row
    for epoch in (0, 1):
        samplers = [ResumableSampler(size, seed=3, num_replicas=world, rank=r) for r in range(world)]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        order = samplers[0].order()  # what one process would train on, padded to 16
        assert shards == [order[r::world] for r in range(world)]  # rank r's batch t + the others' = batch t of one
        assert len(shards[0]) == len(shards[1]) == 8
        assert sorted(set(shards[0]) | set(shards[1])) == list(range(size))
        assert shards[0] + shards[1] != sorted(shards[0] + shards[1])  # shuffled
        padding = sorted(shards[0] + shards[1])
        assert len(padding) - len(set(padding)) == 1  # one row twice: the padding, nothing else
    one = ResumableSampler(size, seed=3)
    assert list(one) != (one.set_epoch(1) or list(one))  # every epoch its own order
    one.start = 5
    assert list(one) == one.order()[5:size] and list(one) == one.order()[:size]  # `start` skips once


def _padded_tokens(order: list[int], lengths: list[int], batch: int) -> int:
    return sum(
        max(lengths[i] for i in order[k : k + batch]) * len(order[k : k + batch]) for k in range(0, len(order), batch)
    )


def test_length_grouped_order_is_a_seeded_permutation_that_pads_less_and_shards_like_one_process():
    size, batch = 203, 8
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, 129, (size,), generator=generator).tolist()
    plain = ResumableSampler(size, seed=3)
    assert (
        plain.order()
        == torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(3, "order", 0))).tolist()
    )
    orders = []
    for epoch in (0, 1):
        grouped = ResumableSampler(size, seed=3, lengths=lengths, batch_size=batch)
        again = ResumableSampler(size, seed=3, lengths=lengths, batch_size=batch)
        plain.set_epoch(epoch), grouped.set_epoch(epoch), again.set_epoch(epoch)
        order = grouped.order()
        assert sorted(order) == list(range(size)) and order == again.order() == list(grouped)  # (seed, epoch) alone
        # far less padding than the shuffled order of the same epoch: batches of rows of similar length
        assert _padded_tokens(order, lengths, batch) < 0.75 * _padded_tokens(plain.order(), lengths, batch)
        assert lengths[order[0]] == max(lengths)  # the longest row first, as transformers does (OOM early)
        orders.append(order)
        # two processes of batch 4 train on the rows of the one-process batches of 8
        shards = [ResumableSampler(size, 3, num_replicas=2, rank=r, lengths=lengths, batch_size=4) for r in (0, 1)]
        for shard in shards:
            shard.set_epoch(epoch)
        assert [list(s) for s in shards] == [shards[0].order()[r::2] for r in (0, 1)]
        assert shards[0].order()[:size] == order
    assert orders[0] != orders[1]
    with pytest.raises(ValueError, match="lengths has 3 entries for 4 rows"):
        ResumableSampler(4, seed=3, lengths=[1, 2, 3])


def test_length_grouped_order_is_pinned_so_a_library_upgrade_cannot_silently_change_a_resumed_epoch():
    """The grouping comes from transformers (get_length_grouped_indices): if a release changed it, a run resumed
    after an upgrade would train the rest of its epoch on other batches. Derived by hand from the shuffled order
    [14 9 13 4 | 2 8 0 11 | 7 15 12 10 | 6 3 5 1] (16 rows, batch 2: 4 mega-batches of 4), each mega-batch sorted
    longest first, then the longest row (15, length 16) swapped to the front with the first mega-batch's head."""
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 12, 11, 15, 13, 14, 16]
    plain, grouped = ResumableSampler(16, seed=7), ResumableSampler(16, seed=7, lengths=lengths, batch_size=2)
    plain.set_epoch(1), grouped.set_epoch(1)
    assert plain.order() == [14, 9, 13, 4, 2, 8, 0, 11, 7, 15, 12, 10, 6, 3, 5, 1]
    assert grouped.order() == [15, 13, 9, 4, 11, 2, 8, 0, 14, 12, 10, 7, 6, 3, 5, 1]


def test_lightning_wrapper_forwards_set_epoch_but_reshuffles_hence_our_sampler_shards_itself():
    """Lightning 2.6's DistributedSamplerWrapper calls set_epoch on the sampler it wraps (older versions did not),
    but shuffles the wrapped order again with its own seed: a 2-process run would not train on the batches of a
    1-process one. `ResumableSampler` is a DistributedSampler, so Lightning leaves it alone (tested below)."""
    inner = ResumableSampler(16, seed=3)
    wrapped = [DistributedSamplerWrapper(inner, num_replicas=2, rank=r, shuffle=True) for r in (0, 1)]
    wrapped[0].set_epoch(4)
    assert inner.epoch == 4
    inner.set_epoch(4)
    assert list(wrapped[0]) != inner.order()[0::2]


class BatchRecorder(L.Callback):
    """Writes, per rank, the row ids of every training batch and what Lightning made of the sampler."""

    def __init__(self, out: str) -> None:
        self.out, self.rows = Path(out), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sampler = trainer.train_dataloader.sampler
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "idx": batch["idx"].tolist(),
                "sampler": type(sampler).__name__,
                "sampler_epoch": sampler.epoch,
                "shard": [sampler.rank, sampler.num_replicas],
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))


SPAWN = ["trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


def _check_shards(recorded: Path, rows: int, seed: int, epochs: int) -> None:
    """Each rank trained on its shard of each epoch's order (our sampler, not Lightning's wrapper, told the epoch
    by Lightning), the shards cover the epoch apart from padding rows, and every epoch has its own order."""
    ranks = [json.loads((recorded / f"rank{r}.json").read_text()) for r in (0, 1)]
    orders = []
    for epoch in range(epochs):
        batches = [[b for b in rank if b["epoch"] == epoch] for rank in ranks]
        for r, rank_batches in enumerate(batches):
            assert {(b["sampler"], b["sampler_epoch"], tuple(b["shard"])) for b in rank_batches} == {
                ("ResumableSampler", epoch, (r, 2))
            }
        shards = [[i for b in rank_batches for i in b["idx"]] for rank_batches in batches]
        expected = ResumableSampler(rows, seed=seed, num_replicas=2)
        expected.set_epoch(epoch)
        assert shards == [expected.order()[r::2] for r in (0, 1)]
        assert sorted(set(shards[0]) | set(shards[1])) == list(range(rows))
        assert len(shards[0] + shards[1]) - len(set(shards[0] + shards[1])) == rows % 2  # the padding row
        orders.append(shards)
    assert all(a != b for a, b in itertools.combinations(orders, 2))


def _recorder(folder: Path) -> str:
    return f"+callbacks.recorder={{_target_:test_ddp.BatchRecorder,out:{folder}}}"


@pytest.mark.slow
def test_two_processes_see_disjoint_shards_with_a_new_order_each_epoch(train_cfg, tmp_path):
    cfg = train_cfg("task=mrpc", *SPAWN, "data.batch_size=2", "data.limit_examples=15", _recorder(tmp_path))
    train.run(cfg)  # 15 rows: the sampler pads one
    _check_shards(tmp_path, 15, cfg.seed, epochs=1)


TOL = 1e-5
NO_DROPOUT = [
    "+model.random_init.hidden_dropout_prob=0",
    "+model.random_init.attention_probs_dropout_prob=0",
    "optim.head_dropout=0",
    "method.reparam.dropout=0",
]


def _last_tensors(out: dict) -> dict[str, torch.Tensor]:
    ckpt = torch.load(Path(out["output_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"]


@pytest.mark.slow
def test_two_processes_train_the_same_tensors_as_one_with_the_global_batch(train_cfg, tmp_path):
    """16 rows, global batch 4 (2 a process): no partial or padded batch; every dropout 0 (the backbone's too).

    The 2-process run also records its batches (disjoint shards, a new order each epoch, Lightning telling our
    sampler the epoch) and must leave one complete results.json, written by rank 0 and completed here.
    """
    run = ("task=mrpc", "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0", "optim.lr=1e-2", *NO_DROPOUT)
    one_cfg = train_cfg(*run, "data.batch_size=4", run="one")
    L.seed_everything(one_cfg.seed)
    initial = {f"net.{k}": v.clone() for k, v in train._module(one_cfg).net.trained_state().items()}
    one = _last_tensors(train.run(one_cfg))
    two_out = train.run(train_cfg(*run, *SPAWN, "data.batch_size=2", _recorder(tmp_path), run="two"))
    two = _last_tensors(two_out)
    assert one.keys() == two.keys() == initial.keys()
    for name in one:
        moved = (one[name] - initial[name]).abs().max().item()
        gap = (two[name] - one[name]).abs().max().item()
        assert gap <= TOL, f"{name}: 2 processes differ from 1 by {gap:.2e}"
        assert moved >= 100 * TOL, f"{name} moved only {moved:.2e}: the comparison would prove nothing"
    _check_shards(tmp_path, 16, one_cfg.seed, epochs=2)
    _check_one_complete_results(Path(two_out["output_dir"]), [(0, 4), (1, 8)])


def _check_one_complete_results(folder: Path, epochs: list[tuple[int, int]]) -> None:
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("results.json")] == ["results.json"]
    assert not list(folder.rglob("*.tmp")) and len(list(folder.rglob("trained.safetensors"))) == 1
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "completed" and results["error"] is None
    assert [(e["epoch"], e["step"]) for e in results["epochs"]] == epochs  # written by rank 0, read back here
    best = max(results["epochs"], key=lambda e: e["val/score"])
    assert results["best"]["epoch"] == best["epoch"] and results["best"]["val/score"] == best["val/score"]
    assert "val/score_best" in results["metrics"] and results["trainable_params"] > 0
    assert results["identity"]["trainer"]["devices"] == 2
    record = json.loads((folder / "model" / "trained.json").read_text())
    assert record["best_epoch"] == best["epoch"] and record["best_score"] == best["val/score"]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_under_ddp_spawn_and_writes_one_complete_results_json(train_cfg, method):
    out = train.run(train_cfg("task=mrpc", f"method={method}", *SPAWN, "data.batch_size=2", "+trainer.max_steps=2"))
    _check_one_complete_results(Path(out["output_dir"]), [(0, 2)])


def test_only_global_rank_zero_writes_results(tmp_path):
    writer = ResultsWriter(tmp_path / "results.json", {}, {"seed": 1})
    writer.setup(types.SimpleNamespace(is_global_zero=False), None, "fit")
    writer.write()
    assert not (tmp_path / "results.json").exists()
