"""The majority-class row: what a constant prediction scores on each dev set.

The constant is the most frequent label of the dev set itself (for choice
tasks such as COPA, the most frequent position of the right choice), so the
row is the best any constant predictor can score there: a method at this
level has learned nothing. Metrics come from the same `compute_metrics` as
every run. Regression (STS-B) has no such row: a constant has no correlation.
Dev labels are read from local files (`data_dir`); a task whose file is
missing gets no row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from aotpt.data.readers import read_local
from aotpt.errors import AotptError
from aotpt.tasks import TASKS
from aotpt.tasks.metrics import compute_metrics


def _split_scores(task: str, examples: list[dict]) -> dict[str, float]:
    spec = TASKS[task]
    labels = [e["label"] for e in examples]
    if spec.grouping == "choice":
        position: dict[int, int] = Counter()
        seen: Counter = Counter()
        places = []
        for e in examples:
            places.append(seen[e["group"]])
            seen[e["group"]] += 1
            if e["label"] == 1:
                position[places[-1]] += 1
        wanted = min(position, key=lambda p: (-position[p], p))
        score = [1.0 if p == wanted else 0.0 for p in places]
        preds = [int(s) for s in score]
        answer_f1 = [e.get("answer_f1", 0.0) for e in examples] if "answer_f1" in examples[0] else None
        return compute_metrics(spec, preds, labels, [e["group"] for e in examples], score, answer_f1)
    counts = Counter(labels)
    constant = min(counts, key=lambda label: (-counts[label], label))
    group = [e["group"] for e in examples] if spec.grouping else None
    return compute_metrics(spec, [constant] * len(labels), labels, group)


def majority_scores(tasks: list[str], data_dir: str | Path) -> dict[str, dict[str, float]]:
    """task -> its metrics and `score` under the majority-class prediction (mean over its dev sets, as runs do)."""
    out = {}
    for task in tasks:
        spec = TASKS[task]
        if spec.is_regression:
            continue
        try:
            per_split = [_split_scores(task, read_local(spec, data_dir, split)) for split in spec.eval_splits]
        except (AotptError, OSError):
            continue
        if len(per_split) == 1:
            out[task] = per_split[0]
        else:
            out[task] = {"score": sum(s["score"] for s in per_split) / len(per_split)}
    return out
