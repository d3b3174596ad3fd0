"""What a task is: where its data lives, how a row becomes model rows, how it is scored.

Every data source (hub parquet, local TSV, local JSONL) is first normalised
to the hub's schema: the hub's field names, `idx`, and `label` as a label id
(or a float for regression, None on test splits). Nested local formats
(MultiRC passages, ReCoRD passages with their queries) are flattened to hub
rows by the task's `flatten`. The task's `build` then turns one hub row into
one `Example` or, for structured tasks, several model rows.

Structured tasks keep the batch uniform: every model row is a plain (text_a,
text_b) input scored by the same head, and `group` says which question a row
answers (`grouping` below says how a group is scored). So the collator, the
model and DDP gathering need no special cases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

BENCHMARKS = ("glue", "superglue")
# How the rows of one group are scored:
#   choice:   rows compete, the prediction is the row with the highest score (COPA, ReCoRD)
#   question: each row is judged alone; groups count for per-question exact match (MultiRC)
#   pair:     each row is judged alone; groups are pronoun-swapped pairs for gender parity (AX-g)
GROUPINGS = (None, "choice", "question", "pair")


class Example(TypedDict):
    """One model row.

    idx: unique within the split (the official index for one-row-per-example
    tasks; the row number for grouped tasks). label: a class id, a float
    (regression) or None (test splits). group: the question/pair the row
    belongs to (grouped tasks only). answer_f1: ReCoRD's token F1 of the
    candidate against the gold answers (labelled splits only). meta: official
    ids and answer text for submission files; never tokenised.
    """

    idx: int
    text_a: str
    text_b: str | None
    label: int | float | None
    group: NotRequired[int]
    answer_f1: NotRequired[float]
    meta: NotRequired[dict[str, Any]]


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
    empty for regression. For grouped tasks they are the labels of one row
    (a choice is wrong/right). `local_labels` are the raw label values of the
    local files in that same order (e.g. WNLI's "0"/"1"); empty means they are
    the label names themselves.
    """

    name: str
    benchmark: str
    hub: tuple[str, str]  # (hub repo id, config name)
    folder: str  # official folder under data_dir/<benchmark>/
    build: Callable[[Mapping[str, Any]], Example | list[Example]]
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
    grouping: str | None = None
    # One local JSON object -> hub rows (MultiRC, ReCoRD); None: the object is one hub row.
    flatten: Callable[[Mapping[str, Any]], Iterable[dict[str, Any]]] | None = None
    # False when the label is derived by `build` (ReCoRD: from the gold answers).
    has_label_field: bool = True
    # Diagnostics have no training split: they are predicted by a model trained on this task.
    model_task: str | None = None
    # Split -> local file name, where it differs from the benchmark's usual names (diagnostics).
    files: tuple[tuple[str, str], ...] = ()
    # Split -> hub split name, where it differs (SuperGLUE diagnostics: the labelled "test").
    hub_splits: tuple[tuple[str, str], ...] = ()
    # Leaderboard file per test split (GLUE .tsv, SuperGLUE .jsonl); empty: not submitted.
    submit_files: tuple[str, ...] = ()
    # What the leaderboard expects per label id; empty means `raw_labels`.
    submit_labels: tuple[Any, ...] = ()
    # False for diagnostics, which leaderboards report beside the benchmark score.
    in_score: bool = True

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"task {self.name!r}: benchmark={self.benchmark!r}; accepted: {', '.join(BENCHMARKS)}")
        if self.local_labels and len(self.local_labels) != len(self.label_names):
            raise ValueError(f"task {self.name!r}: local_labels and label_names differ in length")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"task {self.name!r}: grouping={self.grouping!r}; accepted: {GROUPINGS}")
        if self.submit_files and len(self.submit_files) != len(self.test_splits):
            raise ValueError(f"task {self.name!r}: one submit file per test split")

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        """Output width of the head: 1 for regression."""
        return len(self.label_names) or 1

    @property
    def trainable(self) -> bool:
        return self.model_task is None

    @property
    def splits(self) -> tuple[str, ...]:
        return (*(("train",) if self.trainable else ()), *self.eval_splits, *self.test_splits)

    @property
    def raw_labels(self) -> tuple[Any, ...]:
        """The label values as written in the local files, indexed by label id."""
        return self.local_labels or self.label_names

    @property
    def leaderboard_labels(self) -> tuple[Any, ...]:
        """The label values the leaderboard expects, indexed by label id."""
        return self.submit_labels or self.raw_labels

    def rows(self, row: Mapping[str, Any]) -> list[Example]:
        """The model rows of one hub row: `build`'s result as a list."""
        built = self.build(row)
        return built if isinstance(built, list) else [built]
