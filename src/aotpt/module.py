"""The LightningModule: wraps a `TaskModel` and adds loss, optimiser and dev metrics.

Dev metrics are computed once per epoch from every row's prediction,
gathered across processes and de-duplicated by the row's unique id, so they
are exact under DDP (DistributedSampler pads ranks with repeated rows).
Grouped tasks (COPA, MultiRC, ReCoRD, AX-g) also keep each row's group id
and score, and their metrics group the gathered rows by question.
"""

from __future__ import annotations

from collections import defaultdict

import lightning as L
import torch
from torch.nn import functional as F
from transformers import get_linear_schedule_with_warmup

from aotpt.errors import AotptError, ConfigError
from aotpt.methods import method_config
from aotpt.model import TaskModel, build_model, describe
from aotpt.tasks import TaskSpec, get_task
from aotpt.tasks.metrics import compute_metrics
from aotpt.tasks.predictions import eval_rows, model_inputs


class TaskModule(L.LightningModule):
    """Backbone + method + head for one task. Hyperparameters are plain config values."""

    def __init__(self, model: dict, method: dict, task: str, optim: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec: TaskSpec = get_task(task)
        self.net: TaskModel = build_model(
            model["pretrained"],
            method_config(method),
            self.spec.num_labels,
            random_init=model.get("random_init"),
            head_dropout=optim.get("head_dropout", 0.1),
            init_seed=model.get("init_seed"),
        )
        self.net.train()  # hub weights load in eval mode; Lightning keeps modes as found (dropout on, as in the papers)
        self.strict_loading = False  # checkpoints hold only the trained tensors
        self.best_score = float("-inf")
        self.best_epoch = -1
        # loader -> field -> per-batch tensors; a module-level factory, not a lambda, so that
        # ddp_spawn can pickle the module
        self._eval_outputs: dict[int, dict[str, list[torch.Tensor]]] = defaultdict(_field_lists)

    # ---- forward and loss -------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(**model_inputs(batch))

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.spec.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        return F.cross_entropy(logits, labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch), batch["labels"])
        if not torch.isfinite(loss):  # one host sync per step: cheap next to a forward/backward
            self._stop_on_bad_loss(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _stop_on_bad_loss(self, loss: torch.Tensor) -> None:
        """Stop before the bad gradient reaches the weights; the last checkpoint stays the last good one."""
        ckpt = self.trainer.checkpoint_callback
        last = (ckpt.last_model_path if ckpt else "") or "none saved yet"
        raise AotptError(
            f"loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); training stopped "
            f"before the update; last good checkpoint: {last}; try a lower optim.lr or trainer.precision=32-true"
        )

    # ---- evaluation -------------------------------------------------------
    def eval_rows(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return eval_rows(self.spec, batch, logits)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = self(batch)
        split = self.spec.eval_splits[dataloader_idx]
        key = "val/loss" if len(self.spec.eval_splits) == 1 else f"val/{split}/loss"
        self.log(key, self._loss(logits, batch["labels"]), batch_size=len(batch["idx"]), add_dataloader_idx=False)
        out = self._eval_outputs[dataloader_idx]
        for key, value in self.eval_rows(batch, logits).items():
            out[key].append(value)

    def _gathered(self, out: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """All processes' rows, one per row id, in id order (the sampler's padding repeats rows)."""
        cat = {k: torch.cat(v) for k, v in out.items()}
        if self.trainer.world_size > 1:
            cat = {k: self.all_gather(v).flatten(0, 1) for k, v in cat.items()}
        _, first = _first_occurrence(cat["idx"])
        return {k: v[first] for k, v in cat.items()}

    def on_validation_epoch_end(self) -> None:
        metrics: dict[str, float] = {}
        split_scores = []
        for loader, split in enumerate(self.spec.eval_splits):
            if loader not in self._eval_outputs:
                continue  # a limited run may skip a loader
            got = self._gathered(self._eval_outputs[loader])
            values = compute_metrics(self.spec, **{k: v.cpu() for k, v in got.items() if k != "idx"})
            prefix = "val" if len(self.spec.eval_splits) == 1 else f"val/{split}"
            metrics.update({f"{prefix}/{k}": v for k, v in values.items() if k != "score"})
            split_scores.append(values["score"])
        self._eval_outputs.clear()
        if not split_scores:
            return
        metrics["val/score"] = sum(split_scores) / len(split_scores)
        if not self.trainer.sanity_checking and metrics["val/score"] > self.best_score:
            self.best_score, self.best_epoch = metrics["val/score"], self.current_epoch
        metrics["val/score_best"] = self.best_score if self.best_epoch >= 0 else metrics["val/score"]
        score = metrics.pop("val/score")
        self.log_dict(metrics, sync_dist=False)  # already identical on every rank
        self.log("val/score", score, prog_bar=True, sync_dist=False)

    # ---- optimiser --------------------------------------------------------
    def configure_optimizers(self):
        optim = self.hparams.optim
        params = [p for p in self.net.parameters() if p.requires_grad]
        groups = [  # no weight decay on biases and LayerNorm weights (rank < 2)
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=optim["lr"])
        total = self.trainer.estimated_stepping_batches
        schedule = get_linear_schedule_with_warmup(optimizer, int(optim["warmup_ratio"] * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- checkpoints hold only what trains --------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"net.{name}" for name in self.net.trainable}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["aotpt_best"] = {"score": self.best_score, "epoch": self.best_epoch}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"net.{name}" for name in self.net.trainable}
        if set(checkpoint["state_dict"]) != keep:
            raise ConfigError(
                "checkpoint does not match this model's trained tensors "
                f"(missing {sorted(keep - set(checkpoint['state_dict']))[:3]}, "
                f"unexpected {sorted(set(checkpoint['state_dict']) - keep)[:3]}); was it made with another method?"
            )
        best = checkpoint.get("aotpt_best", {})
        self.best_score, self.best_epoch = best.get("score", float("-inf")), best.get("epoch", -1)

    def summary(self) -> dict:
        return describe(self.net)


def _field_lists() -> defaultdict[str, list[torch.Tensor]]:
    return defaultdict(list)


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique ids and the position of each one's first occurrence in `ids`."""
    unique, inverse = ids.unique(sorted=True, return_inverse=True)
    positions = torch.arange(len(ids), device=ids.device)
    first = torch.full((len(unique),), len(ids), device=ids.device).scatter_reduce(0, inverse, positions, "amin")
    return unique, first
