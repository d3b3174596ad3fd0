"""Task registry and metrics, checked against hand-computed values."""

from __future__ import annotations

import pytest

from aotpt.errors import ConfigError
from aotpt.tasks import TASKS, TaskSpec, TextFields, _registry, get_task

SCOPE = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "boolq", "cb", "sg_rte", "wic"}
SCOPE |= {"copa", "multirc", "record", "wsc", "ax", "axb", "axg"}


def test_registry_holds_the_tasks_in_scope():
    assert SCOPE <= set(TASKS)
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.hub[0] in ("nyu-mll/glue", "aps/super_glue")


def test_unknown_task_lists_accepted_names():
    with pytest.raises(ConfigError, match=r"unknown task='nope'; accepted: .*sg_rte") as err:
        get_task("nope")
    assert "\n" not in str(err.value)


def test_registry_rejects_duplicates_and_unknown_metrics():
    spec = get_task("rte")
    with pytest.raises(ValueError, match="duplicate task name 'rte'"):
        _registry(spec, spec)
    bad = TaskSpec("x", "glue", ("r", "c"), "X", TextFields("s"), ("a", "b"), metrics=("bleu",))
    with pytest.raises(ValueError, match="unknown metrics"):
        _registry(bad)


@pytest.mark.parametrize(
    "name, labels",
    [
        ("mnli", ("entailment", "neutral", "contradiction")),
        ("wnli", ("not_entailment", "entailment")),
        ("rte", ("entailment", "not_entailment")),
        ("cb", ("entailment", "contradiction", "neutral")),
        ("boolq", ("False", "True")),
        ("cola", ("unacceptable", "acceptable")),
    ],
)
def test_label_order_follows_the_hub(name, labels):
    assert get_task(name).label_names == labels


def test_spec_properties():
    stsb, cb, mnli = get_task("stsb"), get_task("cb"), get_task("mnli")
    assert stsb.is_regression and stsb.num_labels == 1
    assert not cb.is_regression and cb.num_labels == 3
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    assert mnli.test_splits == ("test_matched", "test_mismatched")
    assert get_task("sg_rte").hub == ("aps/super_glue", "rte")


def test_wic_puts_the_word_before_sentence1():
    row = {"idx": 3, "word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.", "label": 1}
    example = get_task("wic").build(row)
    assert example == {"idx": 3, "text_a": "bank: A river bank.", "text_b": "A bank loan.", "label": 1}


def test_diagnostics_use_the_label_space_of_their_model_task():
    for name, model_task in (("ax", "mnli"), ("axb", "sg_rte"), ("axg", "sg_rte")):
        spec = get_task(name)
        assert spec.model_task == model_task and not spec.trainable and not spec.in_score
        assert spec.label_names == get_task(model_task).label_names
        assert "train" not in spec.splits


def test_every_test_split_has_a_leaderboard_file():
    names = [name for spec in TASKS.values() for name in spec.submit_files]
    assert len(names) == len(set(names)) == sum(len(spec.test_splits) for spec in TASKS.values())
    assert {n for n in names if n.endswith(".tsv")} >= {"CoLA.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"}
    assert {n for n in names if n.endswith(".jsonl")} >= {"ReCoRD.jsonl", "AX-b.jsonl", "AX-g.jsonl"}
