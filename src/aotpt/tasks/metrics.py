"""Task metrics from per-example predictions.

`compute_metrics` takes the whole split at once (predictions gathered by
example id, so DDP duplicates do not count twice) and returns each of the
task's metrics plus `score`, their mean, which is the task score of GLUE and
SuperGLUE. Metrics that need several rows per question (MultiRC's EM,
ReCoRD's max over answers) will group by an id and get their own entries in
`METRICS`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from scipy import stats
from torchmetrics.functional import accuracy, f1_score, matthews_corrcoef

from aotpt.tasks.spec import TaskSpec


def _acc(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    return accuracy(preds, labels, task="multiclass", num_classes=num_labels).item()


def _f1(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    """Binary F1 of label id 1, the positive class of MRPC (equivalent) and QQP (duplicate)."""
    return f1_score(preds, labels, task="binary").item()


def _macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    """Unweighted mean of per-class F1 (CB). A gold class that is never predicted counts as F1 0;
    a class absent from both predictions and gold is left out, as in scikit-learn."""
    return f1_score(preds, labels, task="multiclass", num_classes=num_labels, average="macro").item()


def _mcc(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    """Matthews correlation; 0 for a constant predictor (the formula's 0/0)."""
    return matthews_corrcoef(preds, labels, task="multiclass", num_classes=num_labels).item()


def _correlation(fn: Callable) -> Callable[[torch.Tensor, torch.Tensor, int], float]:
    """Pearson/Spearman via scipy in float64; 0 instead of NaN when either side is constant,
    so that a collapsed regressor scores 0 and a best-score tracker keeps working."""

    def metric(preds: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
        p, g = preds.double().numpy(), labels.double().numpy()
        if p.min() == p.max() or g.min() == g.max():
            return 0.0
        return float(fn(p, g)[0])

    return metric


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], float]] = {
    "acc": _acc,
    "f1": _f1,
    "macro_f1": _macro_f1,
    "mcc": _mcc,
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
}


def compute_metrics(spec: TaskSpec, preds, labels) -> dict[str, float]:
    """Each of `spec.metrics` plus `score` (their mean) for one split.

    `preds` are class ids (argmax of the logits) or, for regression, scores;
    `labels` the gold values. Both may be tensors, arrays or lists.
    """
    dtype = torch.float64 if spec.is_regression else torch.long
    preds = torch.as_tensor(preds, dtype=dtype).detach().cpu().reshape(-1)
    labels = torch.as_tensor(labels, dtype=dtype).detach().cpu().reshape(-1)
    if preds.numel() != labels.numel() or preds.numel() == 0:
        raise ValueError(
            f"task {spec.name!r}: need as many predictions as labels, and at least one "
            f"(got {preds.numel()} and {labels.numel()})"
        )
    out = {name: METRICS[name](preds, labels, spec.num_labels) for name in spec.metrics}
    out["score"] = sum(out.values()) / len(out)
    return out
