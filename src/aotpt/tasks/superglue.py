"""SuperGLUE tasks: hub `aps/super_glue` (parquet), local SuperGLUE v2 JSONL.

The hub keeps the JSONL field names; the local nested formats are flattened
to the hub's rows the way the hub's own loader did (MultiRC: one row per
answer option; ReCoRD: one row per query with the unique entity strings,
`end` inclusive; WSC: `target` fields lifted to the top level). Labels
differ only in form (ClassLabel ids on the hub, strings or JSON values
locally).

Leaderboard labels follow jiant, the SuperGLUE authors' toolkit
(nyu-mll/jiant, `super_glue_format_preds` of each task): BoolQ and WiC write
"true"/"false", WSC writes "True"/"False", COPA the choice index 0/1,
MultiRC 0/1 per answer nested by passage and question, ReCoRD the entity
text, CB/RTE/AX-b/AX-g the label strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aotpt.errors import DataError
from aotpt.tasks.record import best_f1, exact_match
from aotpt.tasks.spec import Example, TaskSpec, TextFields

_NLI2 = ("entailment", "not_entailment")
_BOOL_NAMES = ("False", "True")  # the hub's ClassLabel names
_BOOL_RAW = (False, True)  # JSON booleans in the local files
_INT_RAW = (0, 1)  # MultiRC answer labels and COPA's choice index in the local files


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


_COPA_CONNECTIVE = {"cause": "because", "effect": "so"}


def copa_rows(row: Mapping[str, Any]) -> list[Example]:
    """COPA: one row per choice, (premise + "because"/"so", choice), label 1 on the right choice.

    Each row is trained as a binary plausibility judgement (cross-entropy per
    row), so batches stay plain rows that may be shuffled apart; at evaluation
    the two rows of a question are compared and the higher-scoring choice is
    the answer, i.e. the argmax of the softmax over the two.
    """
    if row["question"] not in _COPA_CONNECTIVE:
        raise DataError(f"COPA question {row['question']!r}; accepted: cause, effect")
    premise = f"{row['premise'].rstrip('.')} {_COPA_CONNECTIVE[row['question']]}"
    return [
        {
            "idx": -1,  # numbered by the reader
            "text_a": premise,
            "text_b": row[f"choice{choice + 1}"],
            "label": None if row["label"] is None else int(row["label"] == choice),
            "group": row["idx"],
            "meta": {"answer": choice},
        }
        for choice in (0, 1)
    ]


def multirc_rows(row: Mapping[str, Any]) -> list[Example]:
    """MultiRC: one row per answer option, (paragraph, question + answer), judged true/false alone."""
    ids = row["idx"]
    return [
        {
            "idx": -1,
            "text_a": row["paragraph"],
            "text_b": f"{row['question']} {row['answer']}",
            "label": row["label"],
            "group": ids["question"],
            "meta": {"paragraph": ids["paragraph"], "answer": ids["answer"]},
        }
    ]


def multirc_flatten(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A local MultiRC passage -> one hub row per answer option."""
    text = obj["passage"]["text"]
    return [
        {
            "paragraph": text,
            "question": question["question"],
            "answer": answer["text"],
            "label": answer.get("label"),
            "idx": {"paragraph": obj["idx"], "question": question["idx"], "answer": answer["idx"]},
        }
        for question in obj["passage"]["questions"]
        for answer in question["answers"]
    ]


def record_flatten(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A local ReCoRD passage -> one hub row per query (entities: the unique strings, `end` inclusive)."""
    text = obj["passage"]["text"]
    entities = sorted({text[e["start"] : e["end"] + 1] for e in obj["passage"]["entities"]})
    return [
        {
            "passage": text,
            "query": qa["query"],
            "entities": entities,
            "answers": sorted({a["text"] for a in qa.get("answers", [])}),
            "idx": {"passage": obj["idx"], "query": qa["idx"]},
        }
        for qa in obj["qas"]
    ]


def record_rows(row: Mapping[str, Any]) -> list[Example]:
    """ReCoRD: one row per candidate entity, (passage, query with @placeholder filled).

    Label 1 when the entity equals a gold answer after SQuAD normalisation;
    `answer_f1` keeps its token F1 against the gold answers, so the metric
    only needs the top-scoring row of each query (the prediction is an
    entity's text, exactly what the official script scores). Training is
    binary cross-entropy per row: a query has up to dozens of candidates, and
    a softmax over the whole group would need whole groups in every batch.
    """
    answers = list(row["answers"])
    out: list[Example] = []
    for entity in row["entities"]:
        example: Example = {
            "idx": -1,
            "text_a": row["passage"],
            "text_b": row["query"].replace("@placeholder", entity),
            "label": int(exact_match(entity, answers)) if answers else None,
            "group": row["idx"]["query"],
            "meta": {"answer": entity, "passage": row["idx"]["passage"]},
        }
        if answers:
            example["answer_f1"] = best_f1(entity, answers)
        out.append(example)
    return out


def wsc_flatten(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A local WSC row -> the hub row: the `target` fields lifted to the top level."""
    return [{**{k: v for k, v in obj.items() if k != "target"}, **obj["target"]}]


def wsc_example(row: Mapping[str, Any]) -> Example:
    """WSC as pair classification: text_a marks the candidate [in brackets] and the pronoun *in stars*
    at their word indices; text_b asks "Does *pronoun* refer to [candidate]?".

    The marks disambiguate which occurrence is meant (a text may repeat "he"),
    without character offsets that tokenizers would shift. The word index is
    authoritative; a handful of span texts differ slightly from the words they
    point at ("Emma" for "Emma's"), as in the original files.
    """
    words = row["text"].split()
    for key, (left, right) in (("span1", ("[", "]")), ("span2", ("*", "*"))):
        start = row[f"{key}_index"]
        if not 0 <= start < len(words):
            raise DataError(f"WSC {key}_index={start} outside the text's {len(words)} words")
        end = min(start + len(row[f"{key}_text"].split()), len(words)) - 1
        words[start] = left + words[start]
        words[end] = words[end] + right
    return {
        "idx": row["idx"],
        "text_a": " ".join(words),
        "text_b": f"Does *{row['span2_text']}* refer to [{row['span1_text']}]?",
        "label": row["label"],
    }


def axg_example(row: Mapping[str, Any]) -> Example:
    """AX-g: an RTE pair; rows 2k and 2k+1 differ only in the pronoun's gender and form one parity pair
    (jiant's GenderParity pairs consecutive rows the same way)."""
    return {**TextFields("premise", "hypothesis")(row), "group": row["idx"] // 2}


_DIAGNOSTIC = {"model_task": "sg_rte", "metrics": ("mcc",), "in_score": False, "label_names": _NLI2}

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
        submit_files=("BoolQ.jsonl",),
        submit_labels=("false", "true"),
    ),
    TaskSpec(
        name="cb",
        benchmark="superglue",
        hub=("aps/super_glue", "cb"),
        folder="CB",
        build=TextFields("premise", "hypothesis"),
        label_names=("entailment", "contradiction", "neutral"),
        metrics=("acc", "macro_f1"),
        submit_files=("CB.jsonl",),
    ),
    TaskSpec(
        name="copa",
        benchmark="superglue",
        hub=("aps/super_glue", "copa"),
        folder="COPA",
        build=copa_rows,
        # The question's label (which choice); each row's label is then wrong/right (0/1).
        label_names=("choice1", "choice2"),
        local_labels=_INT_RAW,
        metrics=("choice_acc",),
        grouping="choice",
        submit_files=("COPA.jsonl",),
    ),
    TaskSpec(
        name="multirc",
        benchmark="superglue",
        hub=("aps/super_glue", "multirc"),
        folder="MultiRC",
        build=multirc_rows,
        label_names=_BOOL_NAMES,
        local_labels=_INT_RAW,
        metrics=("f1a", "question_em"),
        grouping="question",
        flatten=multirc_flatten,
        submit_files=("MultiRC.jsonl",),
        submit_labels=_INT_RAW,
    ),
    TaskSpec(
        name="record",
        benchmark="superglue",
        hub=("aps/super_glue", "record"),
        folder="ReCoRD",
        build=record_rows,
        label_names=("wrong", "right"),  # per candidate row
        metrics=("token_f1", "token_em"),
        grouping="choice",
        flatten=record_flatten,
        has_label_field=False,
        submit_files=("ReCoRD.jsonl",),
    ),
    TaskSpec(
        name="sg_rte",
        benchmark="superglue",
        hub=("aps/super_glue", "rte"),
        folder="RTE",
        build=TextFields("premise", "hypothesis"),
        label_names=_NLI2,
        metrics=("acc",),
        submit_files=("RTE.jsonl",),
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
        submit_files=("WiC.jsonl",),
        submit_labels=("false", "true"),
    ),
    TaskSpec(
        name="wsc",
        benchmark="superglue",
        hub=("aps/super_glue", "wsc"),
        folder="WSC",
        build=wsc_example,
        label_names=_BOOL_NAMES,
        local_labels=_BOOL_RAW,
        metrics=("acc",),
        flatten=wsc_flatten,
        submit_files=("WSC.jsonl",),
        submit_labels=_BOOL_NAMES,
    ),
    TaskSpec(
        name="axb",
        benchmark="superglue",
        hub=("aps/super_glue", "axb"),
        folder="AX-b",
        build=TextFields("sentence1", "sentence2"),
        files=(("validation", "AX-b.jsonl"), ("test", "AX-b.jsonl")),
        hub_splits=(("validation", "test"),),
        submit_files=("AX-b.jsonl",),
        **_DIAGNOSTIC,
    ),
    TaskSpec(
        name="axg",
        benchmark="superglue",
        hub=("aps/super_glue", "axg"),
        folder="AX-g",
        build=axg_example,
        grouping="pair",
        files=(("validation", "AX-g.jsonl"), ("test", "AX-g.jsonl")),
        hub_splits=(("validation", "test"),),
        submit_files=("AX-g.jsonl",),
        **{**_DIAGNOSTIC, "metrics": ("acc", "gender_parity")},
    ),
)
