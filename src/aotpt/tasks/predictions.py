"""From a batch's logits to what the metrics and submission files need of each row (plain PyTorch).

Shared by the LightningModule (dev metrics every epoch) and by
`aotpt.submit` (test-set predictions), so both read logits the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch

from aotpt.tasks.spec import TaskSpec

# what reaches the model of a batch; the rest (idx, labels, group, answer_f1) is bookkeeping for metrics
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def predictions(spec: TaskSpec, logits: torch.Tensor) -> torch.Tensor:
    """The predicted class id of each row (B,), or the regression score."""
    return logits.squeeze(-1).float() if spec.is_regression else logits.argmax(-1)


def eval_rows(spec: TaskSpec, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the metrics need of each row: id, prediction, and for grouped tasks group and score.

    The score of a row is the log-probability of "right" (label 1): comparing
    it within a group is the argmax of the softmax over the group's choices.
    """
    rows = {"idx": batch["idx"], "preds": predictions(spec, logits)}
    for key in ("labels", "group", "answer_f1"):
        if key in batch:
            rows[key] = batch[key]
    if spec.grouping == "choice":
        rows["score"] = logits.float().log_softmax(-1)[:, 1]
    return rows


@torch.inference_mode()
def predict_rows(model: torch.nn.Module, spec: TaskSpec, batches: Iterable[dict], device) -> dict[str, torch.Tensor]:
    """Every row's `eval_rows` over `batches` with `model` (a TaskModel in eval mode), sorted by row id."""
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        for key, value in eval_rows(spec, batch, model(**model_inputs(batch))).items():
            out[key].append(value.cpu())
    rows = {k: torch.cat(v) for k, v in out.items()}
    order = torch.argsort(rows["idx"])
    return {k: v[order] for k, v in rows.items()}
