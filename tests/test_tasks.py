"""Task registry and metrics, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

from aotpt.errors import ConfigError
from aotpt.tasks import TASKS, TaskSpec, TextFields, _registry, get_task
from aotpt.tasks.metrics import compute_metrics

SCOPE = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "boolq", "cb", "sg_rte", "wic"}


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


def test_cb_macro_f1_counts_a_never_predicted_class_as_zero():
    # class 0: tp 1 fp 1 → F1 2/3; class 1: tp 2 → 1; class 2 (neutral) never predicted → 0
    out = compute_metrics(get_task("cb"), [0, 0, 1, 1], [0, 2, 1, 1])
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3, abs=1e-6)
    assert out["acc"] == pytest.approx(0.75)
    assert out["score"] == pytest.approx((out["acc"] + out["macro_f1"]) / 2)


def test_cola_mcc():
    assert compute_metrics(get_task("cola"), [1, 1, 1, 1], [0, 1, 1, 0])["mcc"] == 0.0  # constant predictor
    # tp 2, tn 1, fp 1, fn 0 → (2·1 − 1·0) / sqrt(3·2·2·1)
    out = compute_metrics(get_task("cola"), [1, 1, 1, 0], [1, 1, 0, 0])
    assert out["mcc"] == pytest.approx(2 / math.sqrt(12), abs=1e-6)
    assert out["score"] == out["mcc"]


def test_mrpc_f1_is_binary_f1_of_the_positive_class():
    # positives: tp 2, fp 1, fn 1 → F1 = 2·2 / (2·2 + 1 + 1) = 2/3; acc 2/4
    out = compute_metrics(get_task("mrpc"), [1, 0, 1, 1], [1, 1, 0, 1])
    assert out["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert out["acc"] == pytest.approx(0.5)
    assert out["score"] == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-6)


def test_stsb_pearson_spearman():
    preds, gold = [1.0, 2.0, 3.0, 4.5], [1.0, 3.0, 2.0, 5.0]
    out = compute_metrics(get_task("stsb"), preds, gold)
    mp, mg = sum(preds) / 4, sum(gold) / 4
    cov = sum((p - mp) * (g - mg) for p, g in zip(preds, gold, strict=True))
    var_p = sum((p - mp) ** 2 for p in preds)
    var_g = sum((g - mg) ** 2 for g in gold)
    assert out["pearson"] == pytest.approx(cov / math.sqrt(var_p * var_g))
    # ranks 1 2 3 4 vs 1 3 2 4: d² = 0+1+1+0 → 1 − 6·2 / (4·15) = 0.8
    assert out["spearman"] == pytest.approx(0.8)
    assert compute_metrics(get_task("stsb"), [2.0] * 4, gold)["pearson"] == 0.0  # constant, not NaN


def test_metrics_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="as many predictions as labels"):
        compute_metrics(get_task("rte"), [0, 1], [0])
