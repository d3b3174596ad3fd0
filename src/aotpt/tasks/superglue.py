"""SuperGLUE tasks: hub `aps/super_glue` (parquet), local SuperGLUE v2 JSONL.

The hub keeps the JSONL field names, so no renaming is needed; only the
labels differ (ClassLabel ids on the hub, strings or JSON booleans locally).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aotpt.tasks.spec import Example, TaskSpec, TextFields

_NLI2 = ("entailment", "not_entailment")
_BOOL_NAMES = ("False", "True")  # the hub's ClassLabel names
_BOOL_RAW = (False, True)  # JSON booleans in the local files


def wic_example(row: Mapping[str, Any]) -> Example:
    """WiC: text_a = "word: sentence1", text_b = sentence2.

    The target word is put in front of the first sentence so that a plain
    sequence classifier knows which word's sense it must compare, without
    marking character spans (start1/end1) that tokenizers would shift.
    """
    return {
        "idx": row["idx"],
        "text_a": f"{row['word']}: {row['sentence1']}",
        "text_b": row["sentence2"],
        "label": row["label"],
    }


SUPERGLUE_TASKS = (
    TaskSpec(
        name="boolq",
        benchmark="superglue",
        hub=("aps/super_glue", "boolq"),
        folder="BoolQ",
        build=TextFields("question", "passage"),
        label_names=_BOOL_NAMES,
        local_labels=_BOOL_RAW,
        metrics=("acc",),
    ),
    TaskSpec(
        name="cb",
        benchmark="superglue",
        hub=("aps/super_glue", "cb"),
        folder="CB",
        build=TextFields("premise", "hypothesis"),
        label_names=("entailment", "contradiction", "neutral"),
        metrics=("acc", "macro_f1"),
    ),
    TaskSpec(
        name="sg_rte",
        benchmark="superglue",
        hub=("aps/super_glue", "rte"),
        folder="RTE",
        build=TextFields("premise", "hypothesis"),
        label_names=_NLI2,
        metrics=("acc",),
    ),
    TaskSpec(
        name="wic",
        benchmark="superglue",
        hub=("aps/super_glue", "wic"),
        folder="WiC",
        build=wic_example,
        label_names=_BOOL_NAMES,
        local_labels=_BOOL_RAW,
        metrics=("acc",),
    ),
)
