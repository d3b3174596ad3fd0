"""Task metrics from per-row predictions.

`compute_metrics` takes the whole split at once (rows gathered by their
unique id, so DDP duplicates do not count twice) and returns each of the
task's metrics plus `score`, their mean, which is the task score of GLUE and
SuperGLUE. Grouped metrics reduce the rows of each question themselves:

- choice_acc (COPA): a question is right when its top-scoring row is the right choice.
- token_f1 / token_em (ReCoRD): the top-scoring candidate's token F1 / exact
  match against the gold answers (max over golds, SQuAD normalisation;
  precomputed per row in `answer_f1` and the row label), averaged over queries.
- f1a / question_em (MultiRC): binary F1 over all answer options; the
  fraction of questions whose options are all judged right.
- gender_parity (AX-g): the fraction of pronoun-swapped pairs predicted the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import stats
from torchmetrics.functional import accuracy, f1_score

from aotpt.tasks.spec import TaskSpec


@dataclass(frozen=True)
class Rows:
    """One split's rows, one per unique row id: the inputs of every metric."""

    preds: torch.Tensor  # (N,) class id (argmax) or regression score
    labels: torch.Tensor  # (N,) class id or gold score
    num_labels: int
    group: torch.Tensor | None = None  # (N,) question id of each row
    score: torch.Tensor | None = None  # (N,) how strongly the row is predicted right (choice tasks)
    answer_f1: torch.Tensor | None = None  # (N,) ReCoRD: candidate's token F1 against the gold answers

    def need(self, *fields: str) -> None:
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"metric needs per-row {', '.join(missing)}")


def _acc(r: Rows) -> float:
    return accuracy(r.preds, r.labels, task="multiclass", num_classes=r.num_labels).item()


def _f1(r: Rows) -> float:
    """Binary F1 of label id 1, the positive class of MRPC (equivalent) and QQP (duplicate)."""
    return f1_score(r.preds, r.labels, task="binary").item()


def _macro_f1(r: Rows) -> float:
    """Unweighted mean of per-class F1 (CB). A gold class that is never predicted counts as F1 0;
    a class absent from both predictions and gold is left out, as in scikit-learn."""
    return f1_score(r.preds, r.labels, task="multiclass", num_classes=r.num_labels, average="macro").item()


def _mcc(r: Rows) -> float:
    """Matthews correlation (multiclass R_K for AX) as scikit-learn computes it, which is what the GLUE reference
    uses: exactly 0 whenever the denominator is 0 (a constant predictor, or constant gold). torchmetrics adds an eps
    there instead, which gives e.g. +-0.0256 for a constant predictor on CoLA-dev."""
    from sklearn.metrics import matthews_corrcoef  # imported on use: sklearn takes a second to import

    return float(matthews_corrcoef(r.labels.numpy(), r.preds.numpy()))


def _correlation(fn: Callable) -> Callable[[Rows], float]:
    """Pearson/Spearman via scipy in float64; 0 instead of NaN when either side is constant,
    so that a collapsed regressor scores 0 and a best-score tracker keeps working."""

    def metric(r: Rows) -> float:
        p, g = r.preds.double().numpy(), r.labels.double().numpy()
        if p.min() == p.max() or g.min() == g.max():
            return 0.0
        return float(fn(p, g)[0])

    return metric


def group_argmax(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Position of the top-scoring row of each group, groups in sorted id order (ties: the earlier row)."""
    _, inverse = group.unique(sorted=True, return_inverse=True)
    order = torch.argsort(score, descending=True, stable=True)  # best rows first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    best = torch.full((int(inverse.max()) + 1,), len(order), dtype=torch.long)
    best = best.scatter_reduce(0, inverse, rank, "amin", include_self=False)  # (groups,) best rank
    return order[best]


def _chosen(r: Rows) -> torch.Tensor:
    r.need("group", "score")
    return group_argmax(r.group, r.score)


def _choice_acc(r: Rows) -> float:
    return r.labels[_chosen(r)].float().mean().item()


def _token_em(r: Rows) -> float:
    return r.labels[_chosen(r)].float().mean().item()


def _token_f1(r: Rows) -> float:
    r.need("answer_f1")
    return r.answer_f1[_chosen(r)].double().mean().item()


def _question_em(r: Rows) -> float:
    r.need("group")
    _, inverse = r.group.unique(sorted=True, return_inverse=True)
    wrong = torch.zeros(int(inverse.max()) + 1, dtype=torch.long).index_add(0, inverse, (r.preds != r.labels).long())
    return (wrong == 0).float().mean().item()


def _gender_parity(r: Rows) -> float:
    r.need("group")
    _, inverse, counts = r.group.unique(sorted=True, return_inverse=True, return_counts=True)
    if (counts != 2).any():
        raise ValueError(f"gender parity needs pairs; group sizes {sorted(set(counts.tolist()))}")
    pairs = torch.zeros(len(counts), dtype=torch.long)
    first = pairs.scatter_reduce(0, inverse, r.preds, "amin", include_self=False)
    last = pairs.scatter_reduce(0, inverse, r.preds, "amax", include_self=False)
    return (first == last).float().mean().item()


METRICS: dict[str, Callable[[Rows], float]] = {
    "acc": _acc,
    "f1": _f1,
    "macro_f1": _macro_f1,
    "mcc": _mcc,
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
    "choice_acc": _choice_acc,
    "token_f1": _token_f1,
    "token_em": _token_em,
    "f1a": _f1,  # MultiRC's F1a is binary F1 over all answer options
    "question_em": _question_em,
    "gender_parity": _gender_parity,
}


def _tensor(values, dtype: torch.dtype) -> torch.Tensor | None:
    return None if values is None else torch.as_tensor(values, dtype=dtype).detach().cpu().reshape(-1)


def compute_metrics(spec: TaskSpec, preds, labels, group=None, score=None, answer_f1=None) -> dict[str, float]:
    """Each of `spec.metrics` plus `score` (their mean) for one split.

    One entry per row: `preds` are class ids (argmax of the logits) or, for
    regression, scores; `labels` the gold values; grouped tasks add each row's
    `group`, and choice tasks its `score` (ReCoRD also `answer_f1`). Tensors,
    arrays or lists.
    """
    dtype = torch.float64 if spec.is_regression else torch.long
    rows = Rows(
        preds=_tensor(preds, dtype),
        labels=_tensor(labels, dtype),
        num_labels=spec.num_labels,
        group=_tensor(group, torch.long),
        score=_tensor(score, torch.float64),
        answer_f1=_tensor(answer_f1, torch.float64),
    )
    sizes = {len(t) for t in (rows.preds, rows.labels, rows.group, rows.score, rows.answer_f1) if t is not None}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            f"task {spec.name!r}: need as many predictions as labels (and group/score values), and at least one "
            f"(got {len(rows.preds)} and {len(rows.labels)})"
        )
    out = {name: METRICS[name](rows) for name in spec.metrics}
    out["score"] = sum(out.values()) / len(out)
    return out
