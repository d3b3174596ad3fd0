"""What a task is: where its data lives, how a row becomes an example, how it is scored.

Every data source (hub parquet, local TSV, local JSONL) is first normalised
to the hub's schema: the hub's field names, `idx`, and `label` as a label id
(or a float for regression, None on test splits). The task's `build` then
turns one such row into an `Example`. So a task's text construction is written
once, and later tasks with richer inputs (COPA, MultiRC, ReCoRD, WSC) only
bring their own `build`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

BENCHMARKS = ("glue", "superglue")


class Example(TypedDict):
    """One model input. `label` is a class id, a float (regression) or None (test splits)."""

    idx: int
    text_a: str
    text_b: str | None
    label: int | float | None


@dataclass(frozen=True)
class TextFields:
    """The default builder: text_a (and text_b for pair tasks) are two fields of the row, copied as they are."""

    a: str
    b: str | None = None

    def __call__(self, row: Mapping[str, Any]) -> Example:
        return {
            "idx": row["idx"],
            "text_a": row[self.a],
            "text_b": None if self.b is None else row[self.b],
            "label": row["label"],
        }


@dataclass(frozen=True)
class TaskSpec:
    """One task of the registry.

    `label_names` follow the hub's ClassLabel order, so a label id means the
    same thing whether the data came from the hub or from local files; it is
    empty for regression. `local_labels` are the raw label values of the local
    files in that same order (e.g. WNLI's "0"/"1"); empty means they are the
    label names themselves.
    """

    name: str
    benchmark: str
    hub: tuple[str, str]  # (hub repo id, config name)
    folder: str  # official folder under data_dir/<benchmark>/
    build: Callable[[Mapping[str, Any]], Example]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    local_labels: tuple[Any, ...] = ()
    # Local column name -> hub field name, applied before `build`. A file without
    # an idx column gets the row number, which is what the GLUE hub uses.
    local_rename: tuple[tuple[str, str], ...] = (("index", "idx"),)
    # Column names for train/dev TSVs that have no header row (CoLA); test files always have one.
    headerless: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"task {self.name!r}: benchmark={self.benchmark!r}; accepted: {', '.join(BENCHMARKS)}")
        if self.local_labels and len(self.local_labels) != len(self.label_names):
            raise ValueError(f"task {self.name!r}: local_labels and label_names differ in length")

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Output width of the head: 1 for regression."""
        return len(self.label_names) or 1

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.eval_splits, *self.test_splits)

    @property
    def raw_labels(self) -> tuple[Any, ...]:
        """The label values as written in the local files, indexed by label id."""
        return self.local_labels or self.label_names
