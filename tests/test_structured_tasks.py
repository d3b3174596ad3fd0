"""COPA, MultiRC, ReCoRD, WSC and the diagnostics: builders, readers, and short training runs.

Real-data runs use MiniLM on ../shared/data (skipped when absent); ReCoRD,
which has no real copy here, runs on the invented fixture in its original
JSONL format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from aotpt import train
from aotpt.data.datamodule import limit_rows
from aotpt.data.readers import read_hub, read_local
from aotpt.errors import ConfigError, DataError
from aotpt.tasks import get_task
from aotpt.tasks.superglue import copa_rows, record_flatten, wsc_example
from conftest import FIXTURES, SHARED_DATA

# ---- builders ---------------------------------------------------------------------------------------


def test_copa_one_row_per_choice():
    row = {"premise": "The kettle whistled.", "choice1": "Water boiled.", "choice2": "Ice formed.", "idx": 4}
    rows = copa_rows({**row, "question": "cause", "label": 0})
    assert [(r["text_a"], r["text_b"], r["label"], r["group"]) for r in rows] == [
        ("The kettle whistled because", "Water boiled.", 1, 4),
        ("The kettle whistled because", "Ice formed.", 0, 4),
    ]
    effect = copa_rows({**row, "question": "effect", "label": None})
    assert effect[0]["text_a"].endswith(" so") and [r["label"] for r in effect] == [None, None]
    assert [r["meta"]["answer"] for r in effect] == [0, 1]
    with pytest.raises(DataError, match="accepted: cause, effect"):
        copa_rows({**row, "question": "reason", "label": 0})


def test_wsc_marks_the_spans_at_their_word_index():
    row = {
        "text": "He said he was tired .",
        "span1_index": 0,
        "span1_text": "He",
        "span2_index": 2,
        "span2_text": "he",
        "idx": 0,
        "label": 1,
    }
    example = wsc_example(row)
    assert example["text_a"] == "[He] said *he* was tired ."  # the second "he", not the first
    assert example["text_b"] == "Does *he* refer to [He]?"
    with pytest.raises(DataError, match="span2_index=9"):
        wsc_example({**row, "span2_index": 9})


def test_record_flatten_uses_inclusive_ends_and_unique_entities():
    obj = {
        "idx": 3,
        "passage": {
            "text": "Ada met Bo. Ada left.",
            "entities": [{"start": 0, "end": 2}, {"start": 8, "end": 9}, {"start": 12, "end": 14}],
        },
        "qas": [{"query": "@placeholder left.", "answers": [{"start": 12, "end": 14, "text": "Ada"}], "idx": 7}],
    }
    (row,) = record_flatten(obj)
    assert row["entities"] == ["Ada", "Bo"] and row["answers"] == ["Ada"]
    assert row["idx"] == {"passage": 3, "query": 7}


# ---- readers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["copa", "multirc", "record"])
def test_grouped_rows_are_numbered_and_contiguous(task):
    rows = read_local(get_task(task), FIXTURES, "validation")
    assert [r["idx"] for r in rows] == list(range(len(rows)))
    groups = [r["group"] for r in rows]
    starts = [g for i, g in enumerate(groups) if i == 0 or g != groups[i - 1]]
    assert len(starts) == len(set(starts))  # each group in one run of rows


def test_limit_completes_the_last_group():
    rows = read_local(get_task("record"), FIXTURES, "validation")
    limited = limit_rows(rows, 1)
    assert len(limited) > 1 and {r["group"] for r in limited} == {rows[0]["group"]}
    assert limit_rows(rows, 10**6) == rows


def _hub_rows(task: str, split: str) -> list[dict]:
    """What the hub serves for `split`: the local file flattened, labels as ClassLabel ids."""
    spec = get_task(task)
    path = FIXTURES / "superglue" / spec.folder / {"validation": "val.jsonl", "test": "test.jsonl"}[split]
    rows = []
    for line in path.read_text().splitlines():
        for row in spec.flatten(json.loads(line)) if spec.flatten else [json.loads(line)]:
            if spec.has_label_field:
                row["label"] = -1 if row.get("label") is None else spec.raw_labels.index(row["label"])
            rows.append(row)
    return rows


@pytest.mark.parametrize("task, split", [("multirc", "validation"), ("record", "validation"), ("record", "test")])
def test_hub_and_local_files_give_the_same_rows(monkeypatch, task, split):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    rows = _hub_rows(task, split)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    assert read_hub(get_task(task), split) == read_local(get_task(task), FIXTURES, split)


def test_diagnostics_read_their_labelled_copies():
    ax = read_local(get_task("ax"), FIXTURES, "validation")  # diagnostic-full.tsv: CRLF, capitalised headers
    assert ax[0]["label"] == get_task("ax").label_names.index("contradiction")
    assert [e["text_a"] for e in ax] == [e["text_a"] for e in read_local(get_task("ax"), FIXTURES, "test")]
    axg = read_local(get_task("axg"), FIXTURES, "validation")
    assert [e["group"] for e in axg[:4]] == [0, 0, 1, 1]


def test_training_a_diagnostic_is_refused(train_cfg):
    with pytest.raises(ConfigError, match="task=axb has no training split.*task=sg_rte"):
        train.run(train_cfg("task=axb"))


# ---- short runs --------------------------------------------------------------------------------------


def _check_run(out: dict, task: str) -> None:
    best = out["best"]
    for metric in get_task(task).metrics:
        assert 0.0 <= best[f"val/{metric}"] <= 1.0
    metrics = get_task(task).metrics
    assert math.isclose(best["val/score"], sum(best[f"val/{m}"] for m in metrics) / len(metrics), rel_tol=1e-6)
    results = json.loads((Path(out["output_dir"]) / "results.json").read_text())
    assert out["status"] == results["status"] == "completed"
    assert (Path(out["output_dir"]) / "model" / "trained.safetensors").is_file()


def test_record_trains_on_the_fixture(train_cfg):
    out = train.run(train_cfg("task=record", "+trainer.limit_train_batches=2"))
    _check_run(out, "record")


@pytest.mark.skipif(not (SHARED_DATA / "superglue" / "COPA").is_dir(), reason="real data absent")
@pytest.mark.parametrize("task", ["copa", "multirc", "wsc", "cb"])
def test_real_data_short_run(train_cfg, task):
    out = train.run(
        train_cfg(
            "model=minilm",
            f"task={task}",
            f"data_dir={SHARED_DATA}",
            "data.limit_examples=16",
            "data.max_length=64",
            "trainer.detect_anomaly=false",
            "data.batch_size=8",
            "data.eval_batch_size=16",
        )
    )
    _check_run(out, task)
