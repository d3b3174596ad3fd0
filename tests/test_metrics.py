"""Metrics against hand-computed values, on the cases that break naive implementations."""

from __future__ import annotations

import math

import pytest
import torch

from aotpt.tasks import get_task
from aotpt.tasks.metrics import compute_metrics, group_argmax
from aotpt.tasks.record import best_f1, exact_match, normalize_answer, token_f1
from aotpt.tasks.superglue import record_rows

# ---- one row per example ---------------------------------------------------------------------


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


@pytest.mark.parametrize("constant", [0, 1])
@pytest.mark.parametrize("task", ["cola", "ax"])
def test_mcc_of_a_constant_predictor_is_exactly_zero(task, constant):
    """sklearn and the GLUE reference give 0 for any zero denominator; an eps would bias best-epoch choice and the
    seed means of collapsed runs (torchmetrics gave +-0.0256 on CoLA-dev's class balance: 721 of 1043 acceptable)."""
    labels = [1] * 721 + [0] * 322 if task == "cola" else [0] * 400 + [1] * 300 + [2] * 404
    assert compute_metrics(get_task(task), [constant] * len(labels), labels)["mcc"] == 0.0
    assert compute_metrics(get_task(task), labels, [constant] * len(labels))["mcc"] == 0.0  # constant gold


def test_ax_three_class_mcc():
    # R_K: (c·s − Σ p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²)); c 4, s 6, t (2,2,2), p (2,3,1)
    out = compute_metrics(get_task("ax"), [0, 1, 1, 1, 2, 0], [0, 0, 1, 1, 2, 2])
    assert out["mcc"] == pytest.approx((4 * 6 - 12) / math.sqrt((36 - 14) * (36 - 12)), abs=1e-6)


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
    with pytest.raises(ValueError, match="group"):
        compute_metrics(get_task("multirc"), [0, 1], [0, 1], group=[3])


# ---- MultiRC ---------------------------------------------------------------------------------------


def test_multirc_all_right_vs_one_wrong():
    # question 10: three options all right; question 11: one of two wrong; question 12: one of three wrong.
    # Rows interleaved, so the metric must group by id, not by position.
    group = [10, 11, 12, 10, 11, 12, 10, 12]
    labels = [1, 1, 0, 0, 1, 0, 1, 1]
    preds = [1, 1, 1, 0, 0, 0, 1, 1]
    out = compute_metrics(get_task("multirc"), preds, labels, group=group)
    # tp 4 (rows 0, 1, 6, 7), fp 1 (row 2), fn 1 (row 4) → F1a = 8 / (8 + 1 + 1)
    assert out["f1a"] == pytest.approx(0.8, abs=1e-6)
    assert out["question_em"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["score"] == pytest.approx((0.8 + 1 / 3) / 2, abs=1e-6)
    all_right = compute_metrics(get_task("multirc"), labels, labels, group=group)
    assert all_right["question_em"] == 1.0 and all_right["f1a"] == 1.0


# ---- ReCoRD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, normal",
    [("The Rovers!", "rovers"), ("  An   apple, a day. ", "apple day"), ("Theatre", "theatre"), ("O'Neil", "oneil")],
)
def test_squad_normalisation(text, normal):
    assert normalize_answer(text) == normal


def test_record_answers_differing_in_case_punctuation_and_articles():
    assert exact_match("the Northern Woods", ["Northern Woods"])
    assert exact_match("NORTHERN WOODS.", ["the northern woods"])
    assert not exact_match("Northern-Woods", ["Northern Woods"])  # the hyphen goes, the words merge
    assert token_f1("Riverside Rovers", "the Rovers") == pytest.approx(2 / 3)  # p 1/2, r 1
    assert token_f1("a", "the") == 0.0  # nothing left after normalisation


def test_record_takes_the_max_over_several_gold_answers():
    assert best_f1("Riverside Rovers", ["Hill City Hawks", "Rovers"]) == pytest.approx(2 / 3)
    assert best_f1("Rovers", ["Riverside Rovers", "rovers"]) == 1.0
    row = {
        "passage": "p",
        "query": "@placeholder won.",
        "entities": ["Hill City Hawks", "Riverside Rovers", "Rovers"],
        "answers": ["Riverside Rovers", "the rovers"],
        "idx": {"passage": 4, "query": 9},
    }
    rows = record_rows(row)
    assert [r["text_b"] for r in rows] == ["Hill City Hawks won.", "Riverside Rovers won.", "Rovers won."]
    assert [r["label"] for r in rows] == [0, 1, 1]
    assert [r["answer_f1"] for r in rows] == [0.0, 1.0, 1.0]
    assert {r["group"] for r in rows} == {9}


def test_record_scores_the_top_candidate_of_each_query():
    # query 5: the top row (score −0.1) is wrong with F1 0.5; query 9: the top row is right
    group = [5, 9, 5, 9]
    score = [-0.1, -0.5, -2.0, -0.7]
    labels = [0, 1, 1, 0]
    answer_f1 = [0.5, 1.0, 1.0, 0.0]
    out = compute_metrics(get_task("record"), [1, 1, 0, 0], labels, group=group, score=score, answer_f1=answer_f1)
    assert out["token_em"] == pytest.approx(0.5)
    assert out["token_f1"] == pytest.approx(0.75)


# ---- COPA and AX-g ---------------------------------------------------------------------------------


def test_group_argmax_takes_the_first_row_on_ties():
    chosen = group_argmax(torch.tensor([7, 3, 7, 3]), torch.tensor([0.5, 0.1, 0.5, 0.9]))
    assert chosen.tolist() == [3, 0]  # group 3 → row 3; group 7 → tie, row 0


def test_copa_accuracy_over_questions():
    group = [0, 0, 1, 1, 2, 2]
    score = [0.2, 0.8, 0.5, 0.5, -1.0, -3.0]
    labels = [0, 1, 1, 0, 0, 1]  # question 0 right, 1 right (tie → first choice), 2 wrong
    out = compute_metrics(get_task("copa"), [0] * 6, labels, group=group, score=score)
    assert out["choice_acc"] == pytest.approx(2 / 3)


def test_axg_gender_parity():
    group = [0, 0, 1, 1, 2, 2]
    preds = [0, 0, 1, 0, 1, 1]  # pairs 0 and 2 agree
    labels = [0, 0, 1, 1, 0, 0]
    out = compute_metrics(get_task("axg"), preds, labels, group=group)
    assert out["gender_parity"] == pytest.approx(2 / 3)
    assert out["acc"] == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="pairs"):
        compute_metrics(get_task("axg"), [0, 0, 1], [0, 0, 1], group=[0, 0, 1])
